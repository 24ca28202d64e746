"""A value one thread sets once and others wait for: a chunk or shard index being fetched.

``concurrent.futures.Future`` does more than the engine needs (callbacks, cancellation, a
``Condition`` per future) and allocates half a dozen objects that Python's cyclic garbage
collector tracks. A cold read of a 1024² plane made some 1,300 of them, and the collections they
triggered took 14% of its CPU time (more in napari, whose heap is bigger). A :class:`Promise`
is one tracked object and a lock, which the collector does not track.
"""

from __future__ import annotations

import threading
from typing import Any

_settling = threading.Lock()  # makes "settle unless settled" atomic; held for two assignments


class Promise:
    """Settled once, by :meth:`set_result` or :meth:`set_exception`; :meth:`result` waits."""

    __slots__ = ("_done", "_error", "_gate", "_value")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()  # released when settled: waiters pass through it
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> bool:
        """Settle with ``value``; False (and no change) when already settled."""
        return self._settle(value, None)

    def set_exception(self, error: BaseException) -> bool:
        """Settle with ``error``, raised by :meth:`result`; False when already settled."""
        return self._settle(None, error)

    def _settle(self, value: Any, error: BaseException | None) -> bool:
        with _settling:
            if self._done:
                return False
            self._value, self._error = value, error
            self._done = True
        self._gate.release()
        return True

    def result(self, timeout: float | None = None) -> Any:
        """The value (or the error raised), waiting up to ``timeout`` seconds (None: forever)."""
        if not self._done:
            if not self._gate.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError("the value was not set in time")
            self._gate.release()  # let the next waiter through
        if self._error is not None:
            raise self._error
        return self._value

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("failed" if self._error else "done")
        return f"<Promise {state}>"
