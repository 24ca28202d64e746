"""The chunks of a chunk row fetched together, decoded into one array, so that a plane is copied
out of them in one strided copy (split over two threads) instead of one copy per chunk.

A 1024² plane of 64³ chunks is 256 chunks. Copied chunk by chunk, each copy is a few
microseconds of Python around 8 KiB of data, on one thread. When the fetched chunks of one row
(same leading chunk coordinates, a full rectangle of (y, x) chunks) are decoded into one *slab*
of shape ``(ny, nx, *chunk_shape)``, the part of a plane they cover is one numpy copy from a
transposed view of the slab, which releases the GIL: split in two halves, one on a decode-pool
thread. A slab is one buffer of :mod:`napari_zshard.store.buffers`, re-used once the cache has
evicted it (no page faults then).

Measured on a 512x1024x1024 uint16 volume of 64³ chunks (2 cores), reading a cached plane into
a new array: 0.84-1.33 ms chunk by chunk, 0.58 ms now, tensorstore 1.0 ms; into an array the
allocator re-uses: 0.45-0.60 ms, 0.29 ms now. The pages of a new array are faulted in by the
same helper thread while this one plans the copy (:func:`prefault_tail`).

Each chunk is still its own cache entry (a view of its slot), so tiles and partial reads are
served as before. A slab's memory is freed only when every chunk in it is gone, so the cache
evicts a slab's chunks together (:class:`~.cache.ClaimingLRU`'s groups): what it counts is what
it holds. Rows with holes (chunks never written, or cached already) are not slabbed, nor rows
bigger than half the cache.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import sys
import threading
from collections.abc import Iterable, Sequence

import numpy as np

from ..store import buffers
from ..store.pool import NOW, decode_pool

Coords = tuple[int, ...]

#: Fewer chunks than this in a row: each gets its own array (nothing to gain).
MIN_SLAB_CHUNKS = 4
#: Copies of at least this many bytes are split in two halves on two threads.
SPLIT_BYTES = 1 << 20


class Slab:
    """One array of the chunks of one chunk row: the chunk at ``(*lead, y, x)`` is
    ``array[y - origin[0], x - origin[1]]``. Hashable by identity: the cache's group token."""

    __slots__ = ("__weakref__", "array", "origin")

    def __init__(self, array: np.ndarray, origin: tuple[int, int]):
        self.array, self.origin = array, origin

    def slot(self, coords: Coords) -> np.ndarray:
        return self.array[coords[-2] - self.origin[0], coords[-1] - self.origin[1]]


def plan_slabs(chunks: Iterable[Coords], chunk_shape: Sequence[int], dtype: np.dtype,
               max_bytes: int) -> dict[Coords, Slab]:
    """The slab each of ``chunks`` is decoded into, for every chunk row among them whose
    chunks form a full (y, x) rectangle of at least :data:`MIN_SLAB_CHUNKS` and at most
    ``max_bytes``; others are left out (decoded into arrays of their own)."""
    chunk_nbytes = max(1, math.prod(chunk_shape) * np.dtype(dtype).itemsize)
    rows: dict[Coords, list[Coords]] = {}
    for c in chunks:
        if len(c) >= 2:
            rows.setdefault(c[:-2], []).append(c)
    found: dict[Coords, Slab] = {}
    for members in rows.values():
        if not MIN_SLAB_CHUNKS <= len(members) <= max_bytes // chunk_nbytes:
            continue  # a slab bigger than the cache would be evicted as it is filled
        ys = [c[-2] for c in members]
        xs = [c[-1] for c in members]
        y0, x0 = min(ys), min(xs)
        ny, nx = max(ys) - y0 + 1, max(xs) - x0 + 1
        if ny * nx != len(members) or len(set(members)) != len(members):
            continue  # holes (chunks cached already, or never written): no regular grid
        slab = Slab(buffers.empty((ny, nx, *chunk_shape), dtype), (y0, x0))
        for c in members:
            found[c] = slab
    return found


def slab_position(values: Sequence[np.ndarray], chunk_nbytes: int) -> tuple[np.ndarray, int, int
                                                                              ] | None:
    """``(slab array, row, column)`` of the first of ``values`` when all of them are views of
    one slab array (else None). The caller knows they are a C-ordered grid of chunk
    coordinates, and a slab holds its chunks at positions that follow their coordinates, so
    the first one's position places them all."""
    base = values[0].base
    if type(base) is not np.ndarray or base.ndim != values[0].ndim + 2:
        return None
    for v in values:
        if v.base is not base:
            return None
    offset = (values[0].__array_interface__["data"][0]
              - base.__array_interface__["data"][0])
    slot, rest = divmod(offset, chunk_nbytes)
    if rest or not 0 <= slot < base.shape[0] * base.shape[1]:
        return None
    row, col = divmod(slot, base.shape[1])
    return base, row, col


def gather_rows(region: tuple[slice, ...], axes: list[range], values: list, out: np.ndarray,
                chunk_shape: Sequence[int], chunk_nbytes: int) -> set[int]:
    """Copy into ``out`` (the array read of ``region``) each row of chunks (same leading chunk
    coordinates) that lies whole in one slab, in one go. ``values``: the chunks of the chunk
    grid ``axes`` in ``itertools.product`` order (an array, or anything else when not at
    hand: skipped). Only chunks the region covers in full along the last two axes take part;
    the partial ones at its edges are left to the caller. Returns the indexes into ``values``
    copied."""
    cy, cx = chunk_shape[-2:]
    ry, rx = axes[-2], axes[-1]
    ny, nx = len(ry), len(rx)
    sy, sx = region[-2], region[-1]
    full_y = [i for i, g in enumerate(ry) if sy.start <= g * cy and (g + 1) * cy <= sy.stop]
    full_x = [j for j, g in enumerate(rx) if sx.start <= g * cx and (g + 1) * cx <= sx.stop]
    copied: set[int] = set()
    if len(full_y) * len(full_x) < 2:
        return copied
    y0, y1, x0, x1 = full_y[0], full_y[-1] + 1, full_x[0], full_x[-1] + 1
    lead_shape = chunk_shape[:-2]
    per_row = ny * nx
    for r, lead in enumerate(itertools.product(*axes[:-2])):
        first = r * per_row
        block = [values[first + i * nx + j] for i in range(y0, y1) for j in range(x0, x1)]
        if not all(type(v) is np.ndarray for v in block):
            continue
        found = slab_position(block, chunk_nbytes)
        if found is None:
            continue
        slab, row, col = found
        if row + (y1 - y0) > slab.shape[0] or col + (x1 - x0) > slab.shape[1]:
            continue
        inner = tuple(slice(max(s.start - g * c, 0), min(s.stop - g * c, c))
                      for s, g, c in zip(region[:-2], lead, lead_shape, strict=True))
        dst = tuple(slice(max(g * c, s.start) - s.start, min((g + 1) * c, s.stop) - s.start)
                    for s, g, c in zip(region[:-2], lead, lead_shape, strict=True))
        dst += (slice(ry[y0] * cy - sy.start, ry[y1 - 1] * cy + cy - sy.start),
                slice(rx[x0] * cx - sx.start, rx[x1 - 1] * cx + cx - sx.start))
        gather(out[dst], slab, slice(row, row + y1 - y0), slice(col, col + x1 - x0), inner)
        copied.update(first + i * nx + j for i in range(y0, y1) for j in range(x0, x1))
    return copied


def gather(out: np.ndarray, slab: np.ndarray, rows: slice, cols: slice,
           inner: tuple[slice, ...]) -> None:
    """``out`` (shape ``(*lead, ny * cy, nx * cx)``) = the chunks ``slab[rows, cols]`` sliced
    by ``inner`` along their leading axes, laid side by side: one strided copy per half."""
    block = slab[rows, cols]  # (ny, nx, *chunk_shape)
    ny, nx = block.shape[:2]
    *lead_c, cy, cx = block.shape[2:]
    k = len(lead_c)
    src = block[(slice(None), slice(None), *inner, slice(None), slice(None))]
    # (ny, nx, *lead, cy, cx) -> (*lead, ny, cy, nx, cx)
    src = src.transpose(*range(2, 2 + k), 0, 2 + k, 1, 3 + k)
    *s_lead, s_y, s_x = out.strides
    dst = np.lib.stride_tricks.as_strided(
        out, (*out.shape[:k], ny, cy, nx, cx), (*s_lead, cy * s_y, s_y, cx * s_x, s_x))
    if out.nbytes < SPLIT_BYTES or ny < 2:
        dst[...] = src
        return
    half = ny // 2
    lead = (slice(None),) * k
    other = _Copy(dst[(*lead, slice(half, None))], src[(*lead, slice(half, None))])
    decode_pool().post(other.run, priority=NOW)
    dst[(*lead, slice(None, half))] = src[(*lead, slice(None, half))]
    other.run()  # not started yet: done here
    other.wait()


class _Copy:
    """A copy that whichever thread comes first runs: the caller takes it back when the pool
    has not started it (busy decoding), instead of waiting behind the queue."""

    __slots__ = ("_done", "_dst", "_error", "_src", "_taken")

    def __init__(self, dst: np.ndarray, src: np.ndarray):
        self._dst, self._src = dst, src
        self._taken = threading.Lock()
        self._done = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        if not self._taken.acquire(blocking=False):
            return
        try:
            self._dst[...] = self._src
        except BaseException as e:  # re-raised in the caller's thread
            self._error = e
        finally:
            self._dst = self._src = None
            self._done.set()

    def wait(self) -> None:
        self._done.wait()
        if self._error is not None:
            raise self._error


# -- the output's pages -------------------------------------------------------------------------

_MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault pages in writable, their content unchanged
_PAGE = 4096
_madvise = None


def _populate_call():
    """libc's ``madvise`` (None where there is none to call, or it lacks POPULATE_WRITE)."""
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
            except (OSError, AttributeError):
                return None
            fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
            _madvise = fn
    return _madvise or None


def prefault_tail(out: np.ndarray) -> None:
    """Have a decode-pool thread fault in the second half of new array ``out``'s pages while
    this thread plans the copy into it: that half is then copied (by the other thread of
    :func:`gather`) without a page fault per 4 KiB. ``MADV_POPULATE_WRITE`` leaves what is in
    the pages as it is, so it may run at any time, even after the copy (it is then a no-op)."""
    if out.nbytes < SPLIT_BYTES or _populate_call() is None:
        return
    decode_pool().post(_populate, out, priority=NOW)


def _populate(out: np.ndarray) -> None:
    global _madvise
    address = out.__array_interface__["data"][0]
    start = (address + out.nbytes // 2 + _PAGE - 1) & ~(_PAGE - 1)
    end = (address + out.nbytes) & ~(_PAGE - 1)
    failed = (end > start and _madvise
              and _madvise(start, end - start, _MADV_POPULATE_WRITE) != 0)
    if failed and ctypes.get_errno() == 22:  # EINVAL: a kernel before 5.14 — stop asking
        _madvise = False
