"""Applying a diff to a label image: a three-way merge per voxel per level-0 shard, then the
coarser levels recomputed for exactly the parent blocks of what changed.

A diff is, per inner chunk (global level-0 chunk coordinates), the flat indexes of the voxels
an annotator changed with their base and new values. Applying one is idempotent (a voxel
already holding our value is left alone), so an interrupted commit is finished by applying
its diff again, even while the original is still at it.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.metadata import ArrayMeta
from ..engine.shard_update import (
    ChunkEdit,
    decode_chunk,
    merge_edits_into_shard,
    replace_chunks_in_shard,
    split_shard,
)
from ..multiscale.downsample import downsample
from ..store import FullRequest, Store
from .diff import DIFF_FORMAT, Diff  # re-exported: older imports take them from here
from .labelimage import LabelImage

Coords = tuple[int, ...]
Box = tuple[tuple[int, ...], tuple[int, ...]]  # global (lo, hi), hi exclusive


def _union(a: Box | None, b: Box) -> Box:
    if a is None:
        return b
    return (tuple(min(x, y) for x, y in zip(a[0], b[0], strict=True)),
            tuple(max(x, y) for x, y in zip(a[1], b[1], strict=True)))


__all__ = ["DIFF_FORMAT", "ApplyResult", "ChunkSummary", "Diff", "ShardResult", "apply_level0",
           "identity", "read_box", "shard_of", "update_pyramid"]


def identity(data: bytes | memoryview | None) -> str:
    """A shard's identity: a hash of its bytes ("absent" when it does not exist). The same on
    every store, so records made locally and on S3 compare."""
    if data is None:
        return "absent"
    return hashlib.blake2b(data, digest_size=12).hexdigest()


#: a packed mask of all True (a repainted chunk's, the usual case): no bits stored
_ALL = np.zeros(0, dtype=np.uint8)


def _pack(mask: np.ndarray) -> np.ndarray | None:
    if not mask.any():
        return None
    return _ALL if mask.all() else np.packbits(mask, axis=None)


def _unpack(bits: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if bits is None:
        return np.zeros(shape, dtype=bool)
    if bits is _ALL:
        return np.ones(shape, dtype=bool)
    return np.unpackbits(bits, count=math.prod(shape)).view(bool).reshape(shape)


def _box_of(origin: Sequence[int], mask: np.ndarray) -> Box | None:
    """Global (lo, hi) of the True voxels of ``mask`` (a chunk at ``origin``)."""
    if not mask.any():
        return None
    lo, hi = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(int(origin[axis]) + int(hit[0]))
        hi.append(int(origin[axis]) + int(hit[-1]) + 1)
    return tuple(lo), tuple(hi)


@dataclass
class ChunkSummary:
    """What a commit keeps of one merged level-0 inner chunk: bit-packed masks and what its
    ``summarize`` callback made of the values (a full repaint costs 2 bits a voxel, not the
    9 bytes of a stored value, a written mask and a conflict mask)."""

    shape: tuple[int, ...]
    written: int  # voxels this merge wrote
    written_bits: np.ndarray | None
    conflict_bits: np.ndarray | None
    ours_box: Box | None  # global box of the voxels now holding our values
    extra: Any = None

    def written_mask(self) -> np.ndarray:
        return _unpack(self.written_bits, self.shape)

    def conflict_mask(self) -> np.ndarray:
        return _unpack(self.conflict_bits, self.shape)


#: summarize(global chunk, edit, theirs, written, conflict) -> ChunkSummary.extra
Summarize = Callable[[Coords, ChunkEdit, np.ndarray, np.ndarray, np.ndarray], Any]


@dataclass
class ShardResult:
    """One level-0 shard after the merge: what it holds now and what happened per chunk."""

    shard: Coords
    key: str
    base_identity: str | None
    theirs_identity: str  # what the committed attempt merged into
    new: bytes | None
    outcomes: dict[int, ChunkSummary]


@dataclass
class ApplyResult:
    shards: dict[Coords, ShardResult] = field(default_factory=dict)
    identities: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> before/after
    voxels_written: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    #: level-0 chunk -> (lo, hi) global voxel box of the voxels in it now holding our values
    changed_boxes: dict[Coords, Box] = field(default_factory=dict)

    @property
    def changed_chunks(self) -> set[Coords]:
        return set(self.changed_boxes)


def shard_of(meta: ArrayMeta, chunk: Coords) -> tuple[Coords, int]:
    """(shard coords, flat index inside the shard) of a global inner chunk."""
    return meta.layout.locate(chunk)


class _ShardEdits(Mapping):
    """flat index -> :class:`ChunkEdit` of one shard, built from the diff on access, so that
    one chunk's full arrays are alive at a time, not a shard's."""

    def __init__(self, diff: Diff, members: dict[int, Coords], chunk_shape: tuple[int, ...],
                 dtype: np.dtype):
        self._diff, self._members, self._cs, self._dtype = diff, members, chunk_shape, dtype

    def __getitem__(self, flat: int) -> ChunkEdit:
        cs = self._cs
        index, base, ours = self._diff.chunks[self._members[flat]]
        if len(index) == math.prod(cs):  # changed whole: no scatter
            return ChunkEdit(base=base.reshape(cs), ours=ours.reshape(cs),
                             mask=np.ones(cs, dtype=bool))
        mask = np.zeros(cs, dtype=bool)
        b = np.zeros(cs, dtype=self._dtype)
        o = np.zeros(cs, dtype=self._dtype)
        mask.flat[index] = True
        b.flat[index] = base
        o.flat[index] = ours
        return ChunkEdit(base=b, ours=o, mask=mask)

    def __iter__(self):
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)


def apply_level0(li: LabelImage, diff: Diff, *, base_identities: dict[str, str] | None = None,
                 summarize: Summarize | None = None) -> Iterator[ApplyResult | ShardResult]:
    """Merge ``diff`` into level 0, one shard at a time (yielding each :class:`ShardResult`),
    and finally yield the :class:`ApplyResult`. Each merged chunk is kept as a
    :class:`ChunkSummary` (with what ``summarize`` makes of its values), so memory stays a
    chunk's worth of full arrays whatever the size of a shard."""
    meta = li.metas[0]
    store = li.store
    cs = tuple(meta.chunk_shape)
    by_shard: dict[Coords, dict[int, Coords]] = {}
    for chunk in diff.chunks:
        shard, flat = shard_of(meta, chunk)
        by_shard.setdefault(shard, {})[flat] = chunk
    result = ApplyResult()
    for shard, members in sorted(by_shard.items()):
        edits = _ShardEdits(diff, members, cs, meta.dtype)
        key = li.key(0, meta.object_key(shard))
        outcomes: dict[int, ChunkSummary] = {}
        seen: list[str] = []

        def record(flat, edit, theirs, write, conflict, members=members):
            chunk = members[flat]
            # every chunk now holding some of our values, not only those written by this
            # pass: a replay finds the shards already written by the process it finishes,
            # whose coarse levels may still be missing
            origin = [c * n for c, n in zip(chunk, cs, strict=True)]
            return ChunkSummary(
                shape=cs, written=int(np.count_nonzero(write)), written_bits=_pack(write),
                conflict_bits=_pack(conflict), ours_box=_box_of(origin, edit.mask & ~conflict),
                extra=None if summarize is None else summarize(chunk, edit, theirs, write,
                                                               conflict))

        def merge(current, edits=edits, outcomes=outcomes, seen=seen, key=key, record=record):
            seen.append(identity(current))
            return merge_edits_into_shard(current, meta=meta, key=key, where=store.url,
                                          edits=edits, outcomes=outcomes, record=record)

        new = store.update(key, merge, tries=50)
        written = sum(o.written for o in outcomes.values())
        theirs_id, new_id = seen[-1], identity(new)
        res = ShardResult(shard=shard, key=key, base_identity=(base_identities or {}).get(key),
                          theirs_identity=theirs_id, new=new, outcomes=dict(outcomes))
        result.shards[shard] = res
        if new_id != theirs_id:
            result.shards_written += 1
            result.bytes_written += len(new or b"")
            result.voxels_written += written
            result.identities[key] = {"before": theirs_id, "after": new_id}
        for flat, o in outcomes.items():
            if o.ours_box is not None:
                result.changed_boxes[members[flat]] = o.ours_box
        yield res
    yield result


class _LevelReader:
    """Voxels of one level read fresh from the store (no cache: a coarse block must be
    computed from what is stored now), each shard fetched once per reader and its inner
    chunks decoded only as a box needs them."""

    def __init__(self, li: LabelImage, level: int, *, store: Store | None = None):
        self.li, self.level, self.meta = li, level, li.metas[level]
        self.store = li.store if store is None else store
        self._split: dict[Coords, list] = {}

    def prefetch(self, box: tuple[slice, ...]) -> None:
        """Fetch (in one batch) the shards holding ``box`` not fetched yet."""
        meta, store = self.meta, self.store
        chunk_ranges = [range(s.start // c, (s.stop - 1) // c + 1)
                        for s, c in zip(box, meta.chunk_shape, strict=True)]
        shards = sorted({shard_of(meta, c)[0] for c in itertools.product(*chunk_ranges)}
                        - set(self._split))
        keys = [self.li.key(self.level, meta.object_key(s)) for s in shards]
        for s, k, r in zip(shards, keys, store.read_many([FullRequest(k) for k in keys]),
                           strict=True):
            self._split[s] = split_shard(r.whole, meta, key=k, where=store.url)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        meta, store = self.meta, self.store
        cs = meta.chunk_shape
        self.prefetch(box)
        out = np.full(tuple(s.stop - s.start for s in box), meta.fill_value, dtype=meta.dtype)
        chunk_ranges = [range(s.start // c, (s.stop - 1) // c + 1)
                        for s, c in zip(box, cs, strict=True)]
        for c in itertools.product(*chunk_ranges):
            shard, flat = shard_of(meta, c)
            values = decode_chunk(self._split[shard][flat], meta,
                                  key=self.li.key(self.level, ""), where=store.url)
            lo = [max(i * n, s.start) for i, n, s in zip(c, cs, box, strict=True)]
            hi = [min((i + 1) * n, s.stop) for i, n, s in zip(c, cs, box, strict=True)]
            out[tuple(slice(a - s.start, b - s.start)
                      for a, b, s in zip(lo, hi, box, strict=True))] = \
                values[tuple(slice(a - i * n, b - i * n)
                             for a, b, i, n in zip(lo, hi, c, cs, strict=True))]
        return out


def read_box(store: Store, li: LabelImage, level: int, box: tuple[slice, ...]) -> np.ndarray:
    """Voxels ``box`` of a level, read fresh from ``store`` (no cache)."""
    return _LevelReader(li, level, store=store).read(box)


def update_pyramid(li: LabelImage, changed: Mapping[Coords, Box], result: ApplyResult) -> None:
    """Recompute, level by level, the parent voxels of what changed (mode): per changed
    chunk of the level below, the box of its changed voxels, halved; each coarse shard under
    its own compare-and-swap, with the finer data read inside the attempt."""
    store = li.store
    for level in range(1, len(li.metas)):
        coarse = li.metas[level]
        f = li.factors[level - 1]
        ccs = coarse.chunk_shape
        targets: dict[Coords, Box] = {}
        for lo, hi in changed.values():
            plo = [a // k for a, k in zip(lo, f, strict=True)]
            phi = [min(-(-b // k), n) for b, k, n in zip(hi, f, coarse.shape, strict=True)]
            for t in itertools.product(*(range(a // n, (b - 1) // n + 1) for a, b, n in
                                         zip(plo, phi, ccs, strict=True))):
                box = (tuple(max(a, i * n) for a, i, n in zip(plo, t, ccs, strict=True)),
                       tuple(min(b, (i + 1) * n) for b, i, n in zip(phi, t, ccs, strict=True)))
                targets[t] = _union(targets.get(t), box)
        by_shard: dict[Coords, dict[int, Box]] = {}
        for t, box in targets.items():
            shard, flat = shard_of(coarse, t)
            by_shard.setdefault(shard, {})[flat] = box
        for shard, boxes in sorted(by_shard.items()):
            key = li.key(level, coarse.object_key(shard))
            seen: list[str] = []
            flats = sorted(boxes)

            def modify(current, key=key, flats=flats, seen=seen, coarse=coarse, level=level,
                       boxes=boxes):
                seen.append(identity(current))
                # the finer level read inside this attempt (after taking the coarse shard's
                # identity): a concurrent commit's change is either read here, or its own
                # coarse update comes after ours and sees ours
                fine = _LevelReader(li, level - 1)
                fine.prefetch(_parent_box(li, level, list(boxes.values())))
                compute = functools.partial(_recompute, li=li, level=level, boxes=boxes,
                                            fine=fine)
                return replace_chunks_in_shard(current, meta=coarse, key=key, where=store.url,
                                               flats=flats, compute=compute)

            new = store.update(key, modify, tries=50)
            new_id = identity(new)
            if new_id != seen[-1]:
                result.shards_written += 1
                result.bytes_written += len(new or b"")
                result.identities[key] = {"before": seen[-1], "after": new_id}
        changed = targets


def _parent_box(li: LabelImage, level: int, boxes: list[Box]) -> tuple[slice, ...]:
    """The finer-level voxels under the union of coarse ``boxes`` of ``level``."""
    fine, f = li.metas[level - 1], li.factors[level - 1]
    lo = [min(b[0][a] for b in boxes) for a in range(fine.ndim)]
    hi = [max(b[1][a] for b in boxes) for a in range(fine.ndim)]
    return tuple(slice(a * k, min(b * k, n)) for a, b, k, n in zip(lo, hi, f, fine.shape,
                                                                  strict=True))


def _recompute(olds: dict[int, np.ndarray], *, li: LabelImage, level: int,
               boxes: dict[int, Box], fine: _LevelReader) -> dict[int, np.ndarray]:
    """New values of coarse chunks ``olds`` (by flat index in their shard): inside each one's
    box (global coarse voxels), the mode of the parent blocks read by ``fine``; outside it,
    as stored."""
    f = li.factors[level - 1]
    cs = li.metas[level].chunk_shape
    out = {}
    for flat, new in olds.items():
        blo, bhi = boxes[flat]
        values = downsample(fine.read(_parent_box(li, level, [boxes[flat]])), f, "mode")
        new[tuple(slice(a % c, a % c + (b - a)) for a, b, c in zip(blo, bhi, cs,
                                                                   strict=True))] = values
        out[flat] = new
    return out
