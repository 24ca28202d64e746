"""The array napari paints into: a bounded region in memory that records which inner chunks
changed, whatever changed them (paint, fill, undo, the console, a script).

napari's Labels layer needs ``ndim`` (else it guesses a pyramid from the first axis), ``shape``,
``dtype``, ``size``, ``nbytes``, ``__len__`` and ``__array__``; it reads a whole plane through
``data[int]`` on every paint call, so that is a read-only *view*, never a copy (every other
key gives a copy: napari paints into what it read, then writes it back). Every write goes
through :meth:`EditableRegion.__setitem__`, which marks the inner chunks (global chunk
coordinates of level 0) the key can touch; what really changed is decided at commit time by
comparing with the base, so marking a few chunks too many costs time, never correctness.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import LabelValueError

Coords = tuple[int, ...]


class EditableRegion:
    """A region of a label image held in memory, with dirty inner-chunk tracking.

    Parameters
    ----------
    values
        The region's voxels (taken over, not copied).
    origin
        Level-0 voxel coordinates of ``values[0, 0, ...]``.
    chunk_shape
        The label image's inner chunk shape (level 0).
    """

    def __init__(self, values: np.ndarray, *, origin: Sequence[int], chunk_shape: Sequence[int]):
        if values.ndim != len(origin) or values.ndim != len(chunk_shape):
            raise ValueError("values, origin and chunk_shape must have the same rank")
        self._values = values
        self.origin = tuple(int(o) for o in origin)
        self.chunk_shape = tuple(int(c) for c in chunk_shape)
        self._lock = threading.RLock()
        self._dirty: set[Coords] = set()
        self._snapshots: list[Snapshot] = []  # open ones: copy a chunk before writing it
        #: bumped on every write: a commit tells whether the user painted while it ran
        self.generation = 0

    # -- what napari asks of an array -------------------------------------------------------
    @property
    def ndim(self) -> int:
        return self._values.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return self._values.shape

    @property
    def dtype(self) -> np.dtype:
        return self._values.dtype

    @property
    def size(self) -> int:
        return self._values.size

    @property
    def nbytes(self) -> int:
        return self._values.nbytes

    def __len__(self) -> int:
        return self._values.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # np.asarray(region) must not copy a 1 GiB region; the view is read-only, so a write
        # into it cannot bypass the dirty tracking. copy=True gives a writable copy.
        if copy:
            return np.array(self._values, dtype=dtype, copy=True)
        out = self._values.view()
        out.flags.writeable = False
        if dtype is not None and np.dtype(dtype) != out.dtype:
            if copy is False:
                raise ValueError(f"cannot give {out.dtype} values as {dtype} without a copy")
            return out.astype(dtype)
        return out

    def __repr__(self) -> str:
        return (f"EditableRegion(shape={self.shape}, dtype={self.dtype}, origin={self.origin}, "
                f"dirty_chunks={len(self._dirty)})")

    # -- reading ----------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        """``data[int]`` (napari's dtype probe on every paint call): a read-only view. Any
        other key: a writable copy — napari 0.9 paints and fills into what it read
        (``np.asarray(data[slices])``, ``data[(z, :, :)]``) and writes it back through
        :meth:`__setitem__`, so a view there would either fail or bypass the tracking."""
        out = self._values[key]
        if isinstance(key, int | np.integer):
            out = out.view()
            out.flags.writeable = False
            return out
        if isinstance(out, np.ndarray) and np.shares_memory(out, self._values):
            return out.copy()
        return out

    # -- writing ----------------------------------------------------------------------------
    def __setitem__(self, key: Any, value: Any) -> None:
        value = checked_values(value, self.dtype)
        with self._lock:
            boxes = touched_boxes(key, self.shape)
            if self._snapshots:
                touched: set[Coords] = set()
                for box in boxes:
                    touched.update(self._chunks_of(box))
                for snap in self._snapshots:
                    snap._preserve(touched)
            self._values[key] = value
            for box in boxes:
                self._mark(box)
            self.generation += 1

    def _chunks_of(self, box: tuple[tuple[int, int], ...]) -> Iterator[Coords]:
        """Every inner chunk meeting the local half-open ``box``."""
        ranges = []
        for (lo, hi), o, c in zip(box, self.origin, self.chunk_shape, strict=True):
            if hi <= lo:
                return iter(())
            ranges.append(range((lo + o) // c, (hi - 1 + o) // c + 1))
        return itertools.product(*ranges)

    def _mark(self, box: tuple[tuple[int, int], ...]) -> None:
        """Mark every inner chunk meeting the local half-open ``box``."""
        self._dirty.update(self._chunks_of(box))

    # -- what a commit needs ----------------------------------------------------------------
    @property
    def lock(self) -> threading.RLock:
        """Held while writing; hold it to read a consistent state while painting goes on."""
        return self._lock

    def dirty_chunks(self) -> set[Coords]:
        """Global level-0 inner-chunk coordinates written since they were last clean."""
        with self._lock:
            return set(self._dirty)

    def mark_dirty(self, chunks: Sequence[Coords]) -> None:
        with self._lock:
            self._dirty.update(chunks)

    def mark_clean(self, chunks: Sequence[Coords]) -> None:
        with self._lock:
            self._dirty.difference_update(chunks)

    def chunk_box(self, chunk: Coords) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """For a global inner chunk: (slices into this region, slices into the chunk) of
        their overlap."""
        local, inner = [], []
        for i, o, c, n in zip(chunk, self.origin, self.chunk_shape, self.shape, strict=True):
            lo, hi = max(i * c, o), min((i + 1) * c, o + n)
            local.append(slice(lo - o, hi - o))
            inner.append(slice(lo - i * c, hi - i * c))
        return tuple(local), tuple(inner)

    def snapshot(self, chunks: Sequence[Coords] | None = None) -> tuple[int, Snapshot]:
        """The region's part of each chunk (default: the dirty ones) as it is at this
        instant (painting may go on meanwhile), and the write generation of that instant.

        Copy on write: a chunk is copied only when it is written while the snapshot is open,
        so a commit of a fully repainted region does not hold a second copy of it. Close the
        snapshot (:meth:`Snapshot.close`, or ``with``) when done."""
        with self._lock:
            wanted = sorted(self._dirty) if chunks is None else list(chunks)
            snap = Snapshot(self, wanted)
            self._snapshots.append(snap)
            return self.generation, snap

    def values_view(self) -> np.ndarray:
        """The backing array itself (for the commit's pull of colleagues' changes; hold
        :attr:`lock`)."""
        return self._values

    def all_chunks(self) -> list[Coords]:
        ranges = [range(o // c, (o + n - 1) // c + 1)
                  for o, c, n in zip(self.origin, self.chunk_shape, self.shape, strict=True)]
        return list(itertools.product(*ranges))


def checked_values(value: Any, dtype: np.dtype) -> Any:
    """``value`` refused when it does not fit ``dtype`` (a label 2**32 in a uint32 image must
    not wrap to 0 and erase): a clear :class:`LabelValueError` instead of numpy's silent cast."""
    arr = np.asarray(value)
    if arr.dtype == dtype or arr.size == 0:
        return value
    if arr.dtype.kind in "biu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise LabelValueError(f"label values {lo}..{hi} do not fit this label image's "
                                  f"{dtype} ({info.min}..{info.max})")
        return value
    if arr.dtype.kind == "f" and dtype.kind in "iu":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise LabelValueError(f"label values must be whole numbers, got {arr.dtype} "
                                  "values with fractions or NaN")
        return checked_values(arr.astype(np.int64), dtype)
    if arr.dtype.kind not in "biuf":
        raise LabelValueError(f"cannot store {arr.dtype} values in a {dtype} label image")
    return value


def touched_boxes(key: Any, shape: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Local half-open boxes covering every voxel ``region[key] = ...`` can write.

    Basic keys (ints, slices, Ellipsis) give one exact box (the hull of a strided slice);
    a boolean mask gives the box of its True voxels; integer arrays (napari's paint) give one
    box per point when there are few, else their hull.
    """
    nd = len(shape)
    if not isinstance(key, tuple):
        key = (key,)
    if any(isinstance(k, np.ndarray) and k.dtype == bool and k.ndim > 1 for k in key) or (
            len(key) == 1 and isinstance(key[0], list | np.ndarray)
            and np.asarray(key[0]).dtype == bool and np.asarray(key[0]).ndim == nd and nd > 1):
        mask = np.zeros(shape, dtype=bool)
        mask[key] = True
        return _mask_box(mask)
    # expand Ellipsis
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        fill = nd - (len(key) - 1 - sum(k is None for k in key))
        key = key[:i] + (slice(None),) * fill + key[i + 1:]
    key = tuple(k for k in key if k is not None) + (slice(None),) * max(
        0, nd - len([k for k in key if k is not None]))
    per_axis: list[tuple[int, int]] = []
    arrays: list[tuple[int, np.ndarray]] = []
    for ax, (k, n) in enumerate(zip(key, shape, strict=False)):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            idx = range(start, stop, step)
            if len(idx) == 0:
                return []
            per_axis.append((min(idx[0], idx[-1]), max(idx[0], idx[-1]) + 1))
        elif isinstance(k, int | np.integer):
            i = int(k) + (n if k < 0 else 0)
            per_axis.append((i, i + 1))
        else:
            a = np.asarray(k)
            if a.dtype == bool:
                a = np.flatnonzero(a)
            if a.size == 0:
                return []
            a = np.where(a < 0, a + n, a).astype(np.int64)
            arrays.append((ax, a))
            per_axis.append((int(a.min()), int(a.max()) + 1))
    if len(arrays) <= 1 or len({a.shape for _, a in arrays}) != 1 or arrays[0][1].size > 4096:
        return [tuple(per_axis)]
    # napari's paint: one coordinate array per axis; one box per point keeps scattered
    # strokes from marking the chunks between them
    points = np.stack([a.ravel() for _, a in arrays], axis=1)
    points = np.unique(points, axis=0)
    boxes = []
    for p in points:
        box = list(per_axis)
        for (ax, _), v in zip(arrays, p, strict=True):
            box[ax] = (int(v), int(v) + 1)
        boxes.append(tuple(box))
    return boxes


def _mask_box(mask: np.ndarray) -> list[tuple[tuple[int, int], ...]]:
    if not mask.any():
        return []
    box = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return [tuple(box)]


class Snapshot(Mapping):
    """Chunk -> the region's part of it at the instant :meth:`EditableRegion.snapshot` was
    taken (a fresh array per access; chunks written since were copied just before)."""

    def __init__(self, region: EditableRegion, chunks: Sequence[Coords]):
        self._region = region
        self._chunks = set(chunks)
        self._order = list(chunks)
        self._saved: dict[Coords, np.ndarray] = {}
        self.closed = False

    def _preserve(self, chunks: set[Coords]) -> None:  # under the region's lock
        for c in chunks & self._chunks:
            if c not in self._saved:
                self._saved[c] = self._region._values[self._region.chunk_box(c)[0]].copy()

    def __getitem__(self, chunk: Coords) -> np.ndarray:
        if chunk not in self._chunks:
            raise KeyError(chunk)
        with self._region.lock:
            saved = self._saved.get(chunk)
            if saved is not None:
                out = saved.view()
                out.flags.writeable = False
                return out
            if self.closed:
                raise ValueError("snapshot closed")
            return self._region._values[self._region.chunk_box(chunk)[0]].copy()

    def written_since(self, chunk: Coords) -> bool:
        """Whether ``chunk`` was written after the snapshot was taken."""
        return chunk in self._saved

    def release(self, chunk: Coords) -> None:
        """Forget ``chunk`` (no copy of it is kept from now on)."""
        with self._region.lock:
            self._chunks.discard(chunk)
            self._saved.pop(chunk, None)

    def __iter__(self) -> Iterator[Coords]:
        return (c for c in self._order if c in self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def close(self) -> None:
        with self._region.lock:
            if self in self._region._snapshots:
                self._region._snapshots.remove(self)
            self._saved.clear()
            self.closed = True

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
