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
    """Exponential backoff with jitter. ``tries`` counts the first attempt."""

    tries: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0
    timeout: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2**attempt) * (0.5 + random.random() / 2)

    async def sleep(self, attempt: int) -> None:
        await asyncio.sleep(self.delay(attempt))
