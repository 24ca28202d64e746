"""The engine's thread pools, recreated after fork (dask worker processes fork or spawn).

The decode pool takes tasks by priority: the chunks a read waits for are decoded before the
read-ahead behind them, whatever order their bytes arrived in. The read-ahead pool runs the
fetches of chunks nobody waits for yet. (Reading local files has threads of its own, in the
store: napari_zshard/store/local.py.)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

#: Priorities of :meth:`PriorityPool.submit`: lower runs first.
NOW, LATER = 0, 1


class PriorityPool:
    """A fixed set of daemon worker threads that take the lowest-priority task first (FIFO
    among equals). ``submit`` and ``map`` behave like :class:`ThreadPoolExecutor`'s."""

    def __init__(self, workers: int, name: str):
        self._heap: list[tuple[int, int, Future | None, Callable, tuple, dict]] = []
        lock = threading.Lock()
        self._cv = threading.Condition(lock)  # workers wait here for tasks
        self._idle = threading.Condition(lock)  # wait_idle waits here
        self._seq = itertools.count()
        self._unfinished = 0  # queued or running
        self._urgent = 0  # of those, at priority NOW
        self._name = name
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True).start()

    def submit(self, fn: Callable, /, *args: Any, priority: int = NOW, **kwargs: Any) -> Future:
        fut: Future = Future()
        with self._cv:
            heapq.heappush(self._heap, (priority, next(self._seq), fut, fn, args, kwargs))
            self._unfinished += 1
            self._urgent += priority <= NOW
            self._cv.notify()
        return fut

    def post(self, fn: Callable, /, *args: Any, priority: int = NOW, **kwargs: Any) -> None:
        """Run ``fn`` like :meth:`submit`, for a task nobody waits on: no future is made (a
        task handles its own errors; one that escapes is logged)."""
        with self._cv:
            heapq.heappush(self._heap, (priority, next(self._seq), None, fn, args, kwargs))
            self._unfinished += 1
            self._urgent += priority <= NOW
            self._cv.notify()

    def map(self, fn: Callable, iterable: Iterable, *, priority: int = NOW) -> Iterator:
        """Submit every item now; yield the results in order (the first error is raised)."""
        futures = [self.submit(fn, item, priority=priority) for item in iterable]
        return _results(futures)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no task is queued or running (tasks may queue more: those too)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def wait_urgent(self, timeout: float | None = None) -> bool:
        """Wait until no task of priority :data:`NOW` is queued or running: what reads are
        waiting for is done (tasks may queue more: those too). False after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._urgent == 0, timeout)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._heap:
                    self._cv.wait()
                priority, _, fut, fn, args, kwargs = heapq.heappop(self._heap)
            if fut is None:
                try:
                    fn(*args, **kwargs)
                except BaseException:
                    log.exception("a background task of the %s pool failed", self._name)
            elif fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, **kwargs))
                except BaseException as e:  # delivered to whoever waits on the future
                    fut.set_exception(e)
            del fut, fn, args, kwargs  # do not keep the last task's data alive while idle
            with self._cv:
                self._unfinished -= 1
                self._urgent -= priority <= NOW
                if self._unfinished == 0 or (self._urgent == 0 and priority <= NOW):
                    self._idle.notify_all()


def _results(futures: list[Future]) -> Iterator:
    for fut in futures:
        yield fut.result()


_lock = threading.Lock()
_pools: dict[str, PriorityPool] = {}

_SIZES = {
    # numcodecs and zstandard release the GIL while decompressing: one thread per core
    "decode": lambda: os.cpu_count() or 1,
    # read-ahead batches that run after the read that started them has its own data
    "readahead": lambda: 2,
}


def _pool(name: str) -> PriorityPool:
    pool = _pools.get(name)
    if pool is None:
        with _lock:
            pool = _pools.get(name)
            if pool is None:
                size = _SIZES[name]()
                pool = _pools[name] = PriorityPool(size, f"zshard-{name}")
    return pool


def decode_pool() -> PriorityPool:
    return _pool("decode")


def readahead_pool() -> PriorityPool:
    """Where read-ahead fetches run once the read that asked for them has its own bytes (their
    own threads: a batch waits for its requests, which may use the I/O pool)."""
    return _pool("readahead")


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
