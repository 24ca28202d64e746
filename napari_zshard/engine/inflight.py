"""The engine's one in-flight unit: what one reader is fetching and decoding right now.

A read claims the cache keys it misses (:class:`~.cache.ClaimingLRU`) for one :class:`InFlight`;
every other read that wants one of those keys finds that unit in the cache and waits on it
instead of fetching again. The unit holds, for each of its keys, the value as far as it is
ready (a decoded chunk may be usable before it is whole: its first ``done`` bytes, C order,
are decoded — :mod:`.progressive`), or the error that ended it. The next plane of a row still
being decoded is read from the unit as soon as its bytes are there.

One condition variable serves all of a unit's keys. A waiter that wants many keys
(:meth:`InFlight.collect`) takes, on each wake-up, everything published since its last look
from an append-only log: a cold plane of 256 chunks costs as many wake-ups as the decoder
threads deliver batches, not one per chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

#: The key type of a unit (the cache's: engine/cache_keys.py).
K = TypeVar("K", bound=Hashable)

#: ``done`` of a value that is whole.
COMPLETE = float("inf")


class InFlight(Generic[K]):
    """Keys being fetched together: per key the value so far, how many bytes of it are ready,
    or the error. Each key is published at most once whole; progress only grows."""

    __slots__ = ("_cond", "_done", "_errors", "_log", "_values")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._values: dict[K, Any] = {}
        self._done: dict[K, float] = {}
        self._errors: dict[K, BaseException] = {}
        self._log: list[K] = []  # keys in the order they progressed, failed or finished

    # -- the fetching side -----------------------------------------------------------------
    def publish(self, key: K, value: Any, done: float = COMPLETE) -> None:
        """``value`` of ``key`` has its first ``done`` bytes ready (:data:`COMPLETE`: all of
        it)."""
        with self._cond:
            if key in self._errors or self._done.get(key, -1) >= done:
                return
            self._values[key] = value
            self._done[key] = done
            self._log.append(key)
            self._cond.notify_all()

    def fail(self, keys: Iterable[K], error: BaseException) -> None:
        """``keys`` (those not whole yet) end with ``error``."""
        with self._cond:
            for key in keys:
                if self._done.get(key, -1) == COMPLETE or key in self._errors:
                    continue
                self._errors[key] = error
                self._log.append(key)
            self._cond.notify_all()

    # -- the waiting side ------------------------------------------------------------------
    def get(self, key: K, need: float = COMPLETE) -> Any:
        """The value of ``key`` if at least ``need`` bytes of it are ready (even when its
        decoding failed further on), else None; raises its error."""
        if self._done.get(key, -1) >= need:  # decoded far enough before any damage showed
            return self._values[key]
        error = self._errors.get(key)
        if error is not None:
            raise error
        return None

    def wait(self, key: K, need: float = COMPLETE, timeout: float | None = None) -> Any:
        """The value of ``key`` once ``need`` bytes of it are ready (raises its error)."""
        with self._cond:
            if not self._cond.wait_for(
                    lambda: key in self._errors or self._done.get(key, -1) >= need, timeout):
                raise TimeoutError(f"{key!r} was not ready in time")
        return self.get(key, need)

    def collect(self, needs: Mapping[K, float], since: int) -> tuple[list[tuple[K, Any]], int]:
        """Wait until some of ``needs`` (key → bytes needed) became ready after position
        ``since`` of the log; returns them with their values and the position to go on from.
        Raises the error of any of them that failed."""
        with self._cond:
            while True:
                end = len(self._log)
                ready = []
                for key in dict.fromkeys(self._log[since:end]):
                    need = needs.get(key)
                    if need is None:
                        continue
                    if self._done.get(key, -1) >= need:
                        ready.append((key, self._values[key]))
                        continue
                    error = self._errors.get(key)
                    if error is not None:
                        raise error
                if ready:
                    return ready, end
                since = end
                self._cond.wait()

    def __len__(self) -> int:
        """Keys published (in part or whole) or failed so far."""
        return len(self._done.keys() | self._errors.keys())

    def __repr__(self) -> str:
        whole = sum(d == COMPLETE for d in self._done.values())
        return (f"<InFlight {whole} whole, {len(self._done) - whole} partly, "
                f"{len(self._errors)} failed>")
