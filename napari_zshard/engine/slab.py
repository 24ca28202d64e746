"""The chunks of a chunk row fetched together, decoded into one array, so that a plane is copied
out of them in a few strided copies instead of one copy per chunk.

A 1024² plane of 64³ chunks is 256 chunks. Copied chunk by chunk, each copy is a few
microseconds of Python around 8 KiB of data, on one thread. When the fetched chunks of one row
(same leading chunk coordinates, a full rectangle of (y, x) chunks) are decoded into one *slab*
of shape ``(ny, nx, *chunk_shape)``, the part of a plane they cover is one numpy copy from a
transposed view of the slab. A slab is one buffer of :mod:`.buffers`, re-used once the cache
has evicted it (no page faults then).

A read whose chunk rows each lie decoded in one slab finds the slabs through the cache (one
lookup per row: :meth:`~.cache.ClaimingLRU.get_groups`) and copies them with a few strided
copies per row (partial chunks at the edges their own), nothing per chunk. A row still being
decoded (the planes at the top of a row whose chunks were decoded prefix first) is looked up
chunk by chunk, then copied the same way (:func:`gather_rows`, which finds a row's slab from
its chunks' arrays). Tracking each slab's progress to skip those lookups was tried: a 64-plane
scroll took 147-262 ms without it, 182-240 ms with it — the noise of this machine.

Measured on a 512x1024x1024 uint16 volume of 64³ chunks (2 cores), reading a cached plane into
a new array: 0.84-1.33 ms chunk by chunk, 0.17-0.23 ms from the slab (tensorstore 0.9-1.0 ms).
Splitting the copy over two threads and faulting the output's pages in first
(``MADV_POPULATE_WRITE``) were tried and removed: 0.27-0.34 ms with them, the hand-off to a
second thread costing more than it saved. Decoding into pooled buffers
(:mod:`.buffers`) stays: without it eight 64-plane scrolls through one open took 658-925 ms
each instead of 328-403 ms (the allocator unmaps a freed 128 MiB slab and the next one
faults in again).

Each chunk is still its own cache entry (a view of its slot), so tiles and partial reads of
chunks not in one slab are served chunk by chunk as before. A slab's memory is freed only when
every chunk in it is gone, so the cache evicts a slab's chunks together
(:class:`~.cache.ClaimingLRU`'s groups): what it counts is what it holds. Rows with holes
(chunks never written, or cached already) are not slabbed, nor rows bigger than half the cache.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np

from . import buffers

Coords = tuple[int, ...]

#: Fewer chunks than this in a row: each gets its own array (nothing to gain).
MIN_SLAB_CHUNKS = 4


class Slab:
    """One array of the chunks of one chunk row: the chunk at ``(*lead, y, x)`` is
    ``array[y - origin[0], x - origin[1]]``. Hashable by identity: the cache's group token,
    complete when the cache holds ``size`` of its chunks (every slot decoded)."""

    __slots__ = ("array", "origin", "size")

    def __init__(self, array: np.ndarray, origin: tuple[int, int]):
        self.array, self.origin = array, origin
        self.size = array.shape[0] * array.shape[1]

    def slot(self, coords: Coords) -> np.ndarray:
        return self.array[coords[-2] - self.origin[0], coords[-1] - self.origin[1]]

    def holds(self, coords: Coords, value: np.ndarray) -> bool:
        """Whether ``value`` (a decoded chunk) is the chunk's slot itself, not a copy."""
        slot = self.slot(coords)
        return (value.shape == slot.shape and value.strides == slot.strides
                and value.__array_interface__["data"][0] == slot.__array_interface__["data"][0])

    def covers(self, ys: range, xs: range) -> bool:
        """Whether the chunks ``ys`` x ``xs`` (chunk coordinates) of its row all lie in it."""
        (y0, x0), (ny, nx) = self.origin, self.array.shape[:2]
        return y0 <= ys.start and ys.stop <= y0 + ny and x0 <= xs.start and xs.stop <= x0 + nx


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


def copy_from_slabs(region: tuple[slice, ...], axes: list[range], slabs: Sequence[Slab],
                    out: np.ndarray, chunk_shape: Sequence[int]) -> None:
    """``out`` = ``region``, each of whose chunk rows (``itertools.product(*axes[:-2])``
    order) lies whole in the matching one of ``slabs``: a few strided copies per row, nothing
    per chunk."""
    cy, cx = chunk_shape[-2:]
    sy, sx = region[-2], region[-1]
    for lead, slab in zip(itertools.product(*axes[:-2]), slabs, strict=True):
        inner, dst = _lead_slices(region, lead, chunk_shape)
        oy, ox = slab.origin[0] * cy, slab.origin[1] * cx
        gather(out[dst], slab.array, slice(sy.start - oy, sy.stop - oy),
               slice(sx.start - ox, sx.stop - ox), inner)


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
        inner, dst = _lead_slices(region, lead, chunk_shape)
        dst += (slice(ry[y0] * cy - sy.start, ry[y1 - 1] * cy + cy - sy.start),
                slice(rx[x0] * cx - sx.start, rx[x1 - 1] * cx + cx - sx.start))
        gather(out[dst], slab, slice(row * cy, (row + y1 - y0) * cy),
               slice(col * cx, (col + x1 - x0) * cx), inner)
        copied.update(first + i * nx + j for i in range(y0, y1) for j in range(x0, x1))
    return copied


def _lead_slices(region: tuple[slice, ...], lead: Coords, chunk_shape: Sequence[int]
                 ) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """For the chunk row at leading chunk coordinates ``lead``: the part of its chunks
    ``region`` covers along the leading axes (inside a chunk), and where that goes in the
    output."""
    axes = list(zip(region[:len(lead)], lead, chunk_shape[:len(lead)], strict=True))
    inner = tuple(slice(max(s.start - g * c, 0), min(s.stop - g * c, c)) for s, g, c in axes)
    dst = tuple(slice(max(g * c, s.start) - s.start, min((g + 1) * c, s.stop) - s.start)
                for s, g, c in axes)
    return inner, dst


def _runs(pixels: slice, c: int) -> list[tuple[int, int, int, int, int]]:
    """``pixels`` (a range of pixels along one axis of a slab) cut into a partial chunk at
    each end and a run of whole chunks between: ``(first chunk, chunks, first pixel in a
    chunk, end pixel in a chunk, offset in the output)`` each."""
    runs = []
    lo, hi = pixels.start, pixels.stop
    while lo < hi:
        g, p = divmod(lo, c)
        if p or hi - lo < c:
            q = min(c, hi - g * c)
            runs.append((g, 1, p, q, lo - pixels.start))
            lo = g * c + q
        else:
            n = (hi - lo) // c
            runs.append((g, n, 0, c, lo - pixels.start))
            lo += n * c
    return runs


def gather(out: np.ndarray, slab: np.ndarray, ys: slice, xs: slice,
           inner: tuple[slice, ...]) -> None:
    """``out`` (shape ``(*lead, len(ys), len(xs))``) = the pixels ``ys`` x ``xs`` of the
    chunks of ``slab`` (an array ``(ny, nx, *chunk_shape)``) laid side by side, the chunks
    sliced by ``inner`` along their leading axes: one strided copy per run of whole chunks
    and per partial chunk at an edge."""
    *lead_c, cy, cx = slab.shape[2:]
    k = len(lead_c)
    index = (slice(None), slice(None), *inner)  # not inline: mypy (3.10) rejects [*x] there
    src = slab[index]
    # (ny, nx, *lead, cy, cx) -> (*lead, ny, cy, nx, cx)
    src = src.transpose(*range(2, 2 + k), 0, 2 + k, 1, 3 + k)
    *s_lead, s_y, s_x = out.strides
    lead_shape = out.shape[:k]
    at = (slice(None),) * k
    for gy, ny, y0, y1, dy in _runs(ys, cy):
        for gx, nx, x0, x1, dx in _runs(xs, cx):
            h, w = y1 - y0, x1 - x0
            to = (*at, slice(dy, dy + ny * h), slice(dx, dx + nx * w))
            dst = np.lib.stride_tricks.as_strided(
                out[to], (*lead_shape, ny, h, nx, w), (*s_lead, h * s_y, s_y, w * s_x, s_x))
            frm = (*at, slice(gy, gy + ny), slice(y0, y1), slice(gx, gx + nx), slice(x0, x1))
            dst[...] = src[frm]
