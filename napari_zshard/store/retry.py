"""Retry policy for remote reads: which failures are transient and how long to back off."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class TransientError(Exception):
    """A failure worth retrying (5xx, throttling, dropped connection, timeout, short body)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter. ``tries`` counts the first attempt.

    ``timeout`` is a *stall* timeout: an attempt fails when no byte arrived for that many
    seconds (connecting, waiting for the answer, or within its body), however long the whole
    answer takes: a 64 MiB range at 1 MiB/s is fine, a server that stops sending is not. The
    storage option ``stall_timeout`` sets it per store (``-o stall_timeout=120``).
    """

    tries: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    timeout: float = 30.0

    @classmethod
    def from_options(cls, options: dict) -> RetryPolicy:
        """The default policy, with the store's ``stall_timeout`` option if it has one."""
        value = options.get("stall_timeout")
        if value is None:
            return cls()
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"storage option stall_timeout={value!r}: expected seconds, a "
                             "number above 0")
        return cls(timeout=seconds)

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2**attempt) * (0.5 + random.random() / 2)

    async def sleep(self, attempt: int) -> None:
        await asyncio.sleep(self.delay(attempt))
