"""Shard tasks run on threads or a dask.distributed cluster, a bounded batch at a time: what
saving and resharding run their per-shard work on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")


class ShardTaskRunner:
    """Runs shard tasks on threads or a dask cluster, in bounded batches (bounded memory)."""

    def __init__(self, *, workers: int | None = None, client: Any = None,
                 name: str = "zshard-shards"):
        self.client = client
        self.workers = workers or os.cpu_count() or 1
        self.pool = None if client else ThreadPoolExecutor(self.workers, thread_name_prefix=name)

    def run(self, fn: Callable[..., T], args_list: list[tuple]) -> Generator[T, None, None]:
        """Yield each finished task's result (in completion order); at most twice as many
        tasks as workers in flight."""
        pending: set[Future] = set()
        todo = iter(args_list)
        limit = 2 * (self.workers if self.client is None else
                     max(1, sum(self.client.nthreads().values())))
        try:
            while True:
                for args in todo:
                    pending.add(self._submit(fn, args))
                    if len(pending) >= limit:
                        break
                if not pending:
                    return
                done, pending = self._wait(pending)
                for fut in done:
                    yield fut.result()
        finally:
            self._abandon(pending)

    def _abandon(self, pending: set) -> None:
        """Stop the tasks of a failed or cancelled run before the caller cleans up."""
        if self.client is None:
            for fut in pending:
                fut.cancel()  # those already running finish inside close()
            return
        # A task running on a worker cannot be stopped (cancel only forgets its result): wait
        # for the few in flight, or they would write into a folder already removed.
        from distributed import wait as dwait

        with contextlib.suppress(Exception):
            dwait(list(pending), timeout=600)

    def _submit(self, fn, args):
        if self.client is not None:
            return self.client.submit(fn, *args, pure=False)
        assert self.pool is not None  # made in __init__ whenever there is no client
        return self.pool.submit(fn, *args)

    def _wait(self, pending):
        if self.client is not None:
            from distributed import wait as dwait

            result = dwait(list(pending), return_when="FIRST_COMPLETED")
            return set(result.done), set(result.not_done)
        return wait(pending, return_when=FIRST_COMPLETED)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
