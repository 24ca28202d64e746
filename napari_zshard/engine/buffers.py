"""Big buffers re-used instead of asked anew from the kernel: the slabs of decoded chunks
(:mod:`napari_zshard.engine.slab`).

Memory new to a process is zero-filled by the kernel on first touch: for the 128 MiB slab of
a 1024² row of 64³ uint16 chunks, 50 ms of CPU in 4 KiB pages. A viewer scrolling through a
volume evicts one row as it decodes the next, and a re-opened volume decodes into memory its
predecessor just freed: each slab is an anonymous mapping (rounded up to a multiple of 2 MiB,
so that sizes match) that goes back to a pool when the last array over it is freed, and the
next buffer of about its size is made over it. Measured on the benchmark volume, a 64-plane
scroll after the first: 145-166 ms instead of 155-200 ms (CPU 262-290 ms instead of 288-339).

New mappings are left in small pages on purpose. In a huge page (``MADV_HUGEPAGE``) 2 MiB are
zeroed at the first touch, so a cold plane, which writes only the first quarter of each chunk,
paid for zeroing the whole slab: napari's cold step took 106-114 ms, against 76-81 ms in small
pages, which fault in as the rest of each chunk decodes, behind the plane.

The buffers fetched bytes arrive in are not pooled: they are freed as soon as their chunks are
decoded, and keeping them would have added 96 MiB to the peak memory of that scroll (322 MiB)
for a further 2-3%.

The pool keeps at most :func:`spare_limit` bytes (half the process-wide cache budget, which
sets it: 256 MiB by default), the oldest spare unmapped first; :func:`release` unmaps them
all. Arrays made here are ordinary numpy arrays whose ``base`` is the mapping; their content
is undefined, as ``np.empty``'s.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import threading
import weakref

import numpy as np

#: Mappings are made in multiples of this, so that rows of one array find each other's.
SIZE_STEP = 2 << 20
#: Smaller buffers come from ``np.empty`` (the allocator re-uses those well enough).
MIN_POOLED = 1 << 20

_lock = threading.Lock()
_spare: list[mmap.mmap] = []  # oldest first
_spare_bytes = 0
_limit = 256 << 20


def spare_limit() -> int:
    return _limit


def set_spare_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of freed buffers (0: none); spares beyond it are unmapped."""
    global _limit
    _limit = max(0, int(nbytes))
    if _spare_bytes > _limit:
        release()


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new uninitialised C-ordered array, over pooled memory when it is big."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_POOLED or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype)
    region = _take(nbytes)
    if region is None:
        size = -(-nbytes // SIZE_STEP) * SIZE_STEP
        try:
            region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError:  # out of address space or of mappings: the allocator may still cope
            return np.empty(shape, dtype)
    array = np.ndarray(shape, dtype, buffer=region)
    weakref.finalize(array, _give, region).atexit = False  # at exit the arrays may still be in use
    return array


def _take(nbytes: int) -> mmap.mmap | None:
    """The smallest spare that holds ``nbytes`` without wasting more than a quarter."""
    global _spare_bytes
    with _lock:
        best = None
        for region in _spare:
            size = len(region)
            if nbytes <= size <= nbytes + max(SIZE_STEP, nbytes // 4) and (
                    best is None or size < len(best)):
                best = region
        if best is not None:
            _spare.remove(best)
            _spare_bytes -= len(best)
        return best


def _give(region: mmap.mmap) -> None:
    """The last array over ``region`` was freed: keep it for the next buffer."""
    global _spare_bytes
    if os.getpid() != _pid:
        return  # inherited from the parent: let it go
    limit = spare_limit()
    drop = []
    with _lock:
        if len(region) <= limit:
            _spare.append(region)
            _spare_bytes += len(region)
        else:
            drop.append(region)
        while _spare_bytes > limit and _spare:
            old = _spare.pop(0)
            _spare_bytes -= len(old)
            drop.append(old)
    for old in drop:
        _close(old)


def release() -> int:
    """Unmap every spare buffer now; the bytes given back."""
    global _spare_bytes
    with _lock:
        drop, _spare[:] = list(_spare), []
        freed, _spare_bytes = _spare_bytes, 0
    for region in drop:
        _close(region)
    return freed


def spare_bytes() -> int:
    return _spare_bytes


def _close(region: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # still exported (not by our arrays): leave it
        region.close()


_pid = os.getpid()


def _forget_after_fork() -> None:
    global _spare, _spare_bytes, _pid, _lock
    _spare, _spare_bytes, _pid, _lock = [], 0, os.getpid(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
