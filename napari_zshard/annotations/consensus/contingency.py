"""Counts streamed shard by shard: per-object statistics and pairwise contingency tables.

Everything is integer sums, minima and maxima, reduced with numpy: the result is the same
whatever the order the shards finish in, and memory grows with the number of objects and
overlapping pairs, never with the number of voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stats:
    """Per label id: voxel count, bounding box [lo, hi) and coordinate sums (level 0)."""

    ids: np.ndarray  # uint64, sorted, unique
    count: np.ndarray  # int64
    lo: np.ndarray  # (n, ndim) int64
    hi: np.ndarray
    sums: np.ndarray  # (n, ndim) float64

    @classmethod
    def empty(cls, ndim: int) -> Stats:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros((0, ndim), np.int64),
                   np.zeros((0, ndim), np.int64), np.zeros((0, ndim), np.float64))

    def row(self, label: int) -> int | None:
        i = int(np.searchsorted(self.ids, label))
        return i if i < len(self.ids) and self.ids[i] == label else None


def block_stats(labels: np.ndarray, region: tuple[slice, ...]) -> Stats:
    """Stats of the non-zero labels of one block at ``region``.

    Computed from runs of equal labels along the last axis (cut at every row), not from
    voxels: an object is a blob, so a block has far fewer runs than voxels, and only the runs
    are sorted. A run starting at x0 of length n adds n voxels, x0..x0+n-1 to the box and
    n*x0 + n(n-1)/2 to the x sum. At 256³ with 5000 objects per annotator this took a merge's
    statistics from ~4 s to ~1 s of 17 s (the same integers; float sums of integers are exact).
    """
    ndim = labels.ndim
    flat = np.ascontiguousarray(labels).reshape(-1)
    n = flat.size
    if not n:
        return Stats.empty(ndim)
    change = np.empty(n, bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::labels.shape[-1]] = True  # a run never crosses a row
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n))
    vals = flat[starts]
    keep = vals != 0
    if not keep.any():
        return Stats.empty(ndim)
    starts, lengths, vals = starts[keep], lengths[keep].astype(np.int64), vals[keep]
    order = np.argsort(vals, kind="stable")
    starts, lengths, vals = starts[order], lengths[order], vals[order]
    first = np.stack(np.unravel_index(starts, labels.shape), axis=1).astype(np.int64)
    first += np.array([s.start for s in region], dtype=np.int64)
    last = first.copy()
    last[:, -1] += lengths - 1
    sums = first.astype(np.float64) * lengths[:, None]
    sums[:, -1] += lengths * (lengths - 1) / 2
    groups = np.flatnonzero(np.r_[True, vals[1:] != vals[:-1]])
    return Stats(vals[groups].astype(np.uint64), np.add.reduceat(lengths, groups),
                 np.minimum.reduceat(first, groups, axis=0),
                 np.maximum.reduceat(last, groups, axis=0) + 1,
                 np.add.reduceat(sums, groups, axis=0))


def reduce_stats(parts: list[Stats], ndim: int) -> Stats:
    parts = [p for p in parts if len(p.ids)]
    if not parts:
        return Stats.empty(ndim)
    ids = np.concatenate([p.ids for p in parts])
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])

    def cat(name):
        return np.concatenate([getattr(p, name) for p in parts])[order]

    return Stats(ids[starts], np.add.reduceat(cat("count"), starts),
                 np.minimum.reduceat(cat("lo"), starts, axis=0),
                 np.maximum.reduceat(cat("hi"), starts, axis=0),
                 np.add.reduceat(cat("sums"), starts, axis=0))


def pair_counts(a: np.ndarray, b: np.ndarray, both: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(keys a << 32 | b, voxel counts) over voxels both annotators covered where either
    marked something."""
    sel = both & ((a != 0) | (b != 0))
    keys = (a[sel].astype(np.uint64) << np.uint64(32)) | b[sel].astype(np.uint64)
    return np.unique(keys, return_counts=True)


def reduce_pairs(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    keys = np.concatenate([k for k, _ in parts])
    counts = np.concatenate([c for _, c in parts]).astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


class PairTable:
    """The contingency table of two annotators (i, j) over the voxels both covered:
    ``n[a, b]``, its row sums (voxels of ``a`` that ``j`` covered) and column sums."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray):
        self.a = (keys >> np.uint64(32)).astype(np.uint64)
        self.b = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint64)
        self.n = counts
        self.row = _sums(self.a, counts)
        self.col = _sums(self.b, counts)

    def overlaps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, n, size_a, size_b) for every pair of non-zero objects that touch."""
        sel = (self.a != 0) & (self.b != 0)
        a, b, n = self.a[sel], self.b[sel], self.n[sel]
        return a, b, n, _lookup(self.row, a), _lookup(self.col, b)


def _sums(ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(ids, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


def _lookup(table: tuple[np.ndarray, np.ndarray], ids: np.ndarray) -> np.ndarray:
    keys, values = table
    if not len(keys):
        return np.zeros(len(ids), np.int64)
    pos = np.clip(np.searchsorted(keys, ids), 0, len(keys) - 1)
    return np.where(keys[pos] == ids, values[pos], 0)
