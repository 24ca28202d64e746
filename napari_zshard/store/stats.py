"""Request and byte counters per store, for tests, benchmarks and ``zshard info``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class RequestStats:
    """Thread-safe counters of what a store fetched. ``snapshot()`` gives a plain dict."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, n_bytes: int, *, requests: int = 1) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += n_bytes

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def reset(self) -> None:
        with self._lock:
            self.requests = self.bytes = self.retries = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"requests": self.requests, "bytes": self.bytes, "retries": self.retries}
