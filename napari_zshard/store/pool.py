"""Process-wide thread pools, recreated after fork (dask worker processes fork or spawn)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pools: dict[str, ThreadPoolExecutor] = {}

_SIZES = {
    # pread releases the GIL and a cluster file system has latency worth overlapping
    "io": lambda: max(8, 4 * (os.cpu_count() or 1)),
    # numcodecs releases the GIL while decompressing: one thread per core
    "decode": lambda: os.cpu_count() or 1,
}


def _pool(name: str) -> ThreadPoolExecutor:
    pool = _pools.get(name)
    if pool is None:
        with _lock:
            pool = _pools.get(name)
            if pool is None:
                pool = ThreadPoolExecutor(_SIZES[name](), thread_name_prefix=f"zshard-{name}")
                _pools[name] = pool
    return pool


def io_pool() -> ThreadPoolExecutor:
    return _pool("io")


def decode_pool() -> ThreadPoolExecutor:
    return _pool("decode")


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _pools.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
