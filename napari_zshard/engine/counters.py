"""What one opened array did: requests by kind, chunks decoded (for tests and benchmarks)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class ReadCounters:
    """What one opened array did: requests by kind, chunks decoded, cache use."""

    index_requests: int = 0
    data_requests: int = 0
    chunks_decoded: int = 0
    decoded_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: getattr(self, k) for k in
                    ("index_requests", "data_requests", "chunks_decoded", "decoded_bytes")}

    def reset(self) -> None:
        with self._lock:
            self.index_requests = self.data_requests = self.chunks_decoded = 0
            self.decoded_bytes = 0
