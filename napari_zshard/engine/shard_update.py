"""Writing a region into an existing sharded array, safely alongside other writers.

A shard the region covers whole is encoded and replaced whole (last writer wins, which is
right: nothing of the old shard survives anyway). A shard it covers in part is read, merged
and re-encoded through :meth:`Store.update`, which commits only if nobody else committed to
the shard in between (a lock locally, ``If-Match`` on S3) and otherwise merges again into what
the other writer left. So several people can write disjoint voxels of the same shards at once
and every voxel ends up with its writer's value (see ../shared/DESIGN.md, "Write path").

Only the inner chunks the region touches are decoded and re-encoded; the others are copied
into the new shard as the bytes they were. The result keeps the chunks in C order.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptDataError, CorruptShardError
from ..store import Store
from .cache import forget_written
from .metadata import ArrayMeta
from .reader import normalize_region
from .shard_index import decode_index
from .shard_writer import assemble_shard, encode_shard, is_fill

Coords = tuple[int, ...]
#: Stored bytes of one inner chunk, or None for a chunk that is not stored (fill value).
RawChunk = bytes | memoryview | None


def write_region(store: Store, meta: ArrayMeta, region: Sequence[slice], data: np.ndarray,
                 *, tries: int = 10) -> None:
    """Write ``data`` into ``region`` (step-1 slices) of the sharded array ``meta``.

    Each shard is committed atomically and no concurrent writer's voxels are lost; a region
    spanning several shards is not one transaction (a reader may meanwhile see some of its
    shards new and others old). Every array opened in this process reads the new shards:
    their cached indexes and chunks are dropped as each is written.

    Parameters
    ----------
    store, meta
        The array: its store and parsed metadata (e.g. from :func:`create_array`).
    region
        One slice per axis; clipped to the array's shape.
    data
        Values of the region: its shape, or anything broadcasting to it (a scalar erases).
    tries
        Passed to :meth:`Store.update` for each partly covered shard.

    Raises
    ------
    CorruptShardError
        An existing shard the region touches is corrupt; it is left as it is.
    ConcurrentUpdateError
        A shard kept changing under this writer for ``tries`` attempts.
    """
    if meta.sharding is None:
        raise ValueError(f"{store.url}: write_region writes sharded arrays; this one has "
                         "plain chunks")
    region = normalize_region(region, meta.shape)
    shape = tuple(s.stop - s.start for s in region)
    try:
        values = np.broadcast_to(_as_dtype(np.asarray(data), meta.dtype), shape)
    except ValueError as e:
        raise ValueError(f"data of shape {np.shape(data)} does not fit the region's shape "
                         f"{shape}") from e
    if 0 in shape:
        return
    for shard in meta.layout.shards_of_region(region):
        whole = meta.layout.shard_region(shard)
        part = tuple(slice(max(r.start, w.start), min(r.stop, w.stop))
                     for r, w in zip(region, whole, strict=True))
        block = values[tuple(slice(p.start - r.start, p.stop - r.start)
                             for p, r in zip(part, region, strict=True))]
        key = meta.object_key(shard)
        try:
            if part == whole:
                store.overwrite(key, encode_shard(meta, block))
                continue
            inside = tuple(slice(p.start - w.start, p.stop - w.start)
                           for p, w in zip(part, whole, strict=True))
            merge = functools.partial(merge_into_shard, meta=meta, key=key, where=store.url,
                                      region=inside, data=block)
            store.update(key, merge, tries=tries)
        finally:  # written, or perhaps written (an answer lost): nobody here trusts the old
            forget_written(store.url, [shard])


def merge_into_shard(current: bytes | None, *, meta: ArrayMeta, key: str, where: str,
                     region: tuple[slice, ...], data: np.ndarray) -> bytes | None:
    """The shard ``current`` (None: not stored) with ``data`` written into ``region`` (shard
    coordinates); None when every chunk of the result equals the fill value."""
    spec = meta.sharding
    assert spec is not None
    cps = spec.chunks_per_shard(meta.grid_shape)
    chunks = split_shard(current, meta, key=key, where=where)
    cs = spec.chunk_shape
    touched = itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1)
                                  for s, c in zip(region, cs, strict=True)))
    for local in touched:
        origin = [i * c for i, c in zip(local, cs, strict=True)]
        inner = tuple(slice(max(s.start, o) - o, min(s.stop, o + c) - o)
                      for s, o, c in zip(region, origin, cs, strict=True))
        src = data[tuple(slice(i.start + o - s.start, i.stop + o - s.start)
                         for i, o, s in zip(inner, origin, region, strict=True))]
        flat = int(np.ravel_multi_index(local, cps))
        if all(i.stop - i.start == c for i, c in zip(inner, cs, strict=True)):
            chunk = np.ascontiguousarray(src)  # the region covers it: nothing to read
        else:
            chunk = _decode(chunks[flat], meta, key=key, where=where, local=local, flat=flat)
            chunk[inner] = src
        chunks[flat] = None if is_fill(chunk, meta.fill_value) else spec.codecs.encode(chunk)
    return assemble_shard(spec, meta.grid_shape, chunks)


@dataclass
class ChunkEdit:
    """One inner chunk's part of a three-way merge (arrays of the full inner chunk shape):
    ``base`` what the editor started from, ``ours`` what it holds now, ``mask`` the voxels to
    merge (those it changed: ours != base, inside its region, not pending a conflict)."""

    base: np.ndarray
    ours: np.ndarray
    mask: np.ndarray


@dataclass
class ChunkOutcome:
    """What a three-way merge did to one inner chunk: the stored values it met (``theirs``),
    the voxels it wrote, and the voxels it left because someone else changed them too."""

    theirs: np.ndarray
    written: np.ndarray
    conflict: np.ndarray


def merge_edits_into_shard(current: bytes | None, *, meta: ArrayMeta, key: str, where: str,
                           edits: Mapping[int, ChunkEdit], outcomes: dict[int, Any],
                           record: Callable[[int, ChunkEdit, np.ndarray, np.ndarray,
                                             np.ndarray], Any] | None = None
                           ) -> bytes | None:
    """The shard ``current`` with ``edits`` (by flat inner-chunk index) merged voxel by voxel.

    Per voxel of a mask: the stored value (theirs) equal to the base or to ours → ours is
    written (writing ours again changes nothing, so replaying a merge is idempotent); anything
    else is a conflict: someone else changed the voxel since the base, to another value, and it
    is left as they wrote it. Voxels outside the masks are never written, so other writers'
    work in the same chunks survives. Only the edited inner chunks are decoded and re-encoded.
    ``outcomes`` is cleared and filled on every call (the last call is the one committed):
    with a :class:`ChunkOutcome` per chunk, or with what ``record(flat, edit, theirs,
    written, conflict)`` returns (so a caller can keep a compact summary instead of three
    full-chunk arrays per chunk). ``edits`` may build each chunk's arrays on access: one
    chunk's are alive at a time. Returns ``current`` itself when nothing changes, so that
    the store writes nothing.
    """
    spec = meta.sharding
    assert spec is not None
    outcomes.clear()
    chunks = split_shard(current, meta, key=key, where=where)
    cps = spec.chunks_per_shard(meta.grid_shape)
    changed = False
    for flat in sorted(edits):
        edit = edits[flat]
        local = tuple(int(i) for i in np.unravel_index(flat, cps))
        theirs = _decode(chunks[flat], meta, key=key, where=where, local=local, flat=flat)
        conflict = edit.mask & (theirs != edit.base) & (theirs != edit.ours)
        write = edit.mask & ~conflict & (theirs != edit.ours)
        outcomes[flat] = (record(flat, edit, theirs, write, conflict) if record is not None
                          else ChunkOutcome(theirs=theirs.copy(), written=write,
                                            conflict=conflict))
        if not write.any():
            continue
        theirs[write] = edit.ours[write]
        chunks[flat] = None if is_fill(theirs, meta.fill_value) else spec.codecs.encode(theirs)
        changed = True
    return assemble_shard(spec, meta.grid_shape, chunks) if changed else current


def replace_chunks_in_shard(current: bytes | None, *, meta: ArrayMeta, key: str, where: str,
                            flats: Sequence[int],
                            compute: Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]]
                            ) -> bytes | None:
    """The shard ``current`` with its inner chunks ``flats`` (flat indexes) replaced by what
    ``compute({flat: stored values})`` returns for each (full inner chunk shape; called once
    per chunk, so that one chunk's arrays are alive at a time): e.g. coarse
    blocks recomputed from the level below, read inside the update so that they include
    every commit before it. Chunks whose values do not change keep their stored bytes;
    ``current`` itself comes back when none changes (the store then writes nothing).
    """
    spec = meta.sharding
    assert spec is not None
    chunks = split_shard(current, meta, key=key, where=where)
    cps = spec.chunks_per_shard(meta.grid_shape)
    changed = False
    for flat in sorted(flats):  # one chunk at a time: memory stays a chunk's worth
        old = _decode(chunks[flat], meta, key=key, where=where,
                      local=tuple(int(i) for i in np.unravel_index(flat, cps)), flat=flat)
        new = compute({flat: old.copy()})[flat]
        if np.array_equal(old, new):
            continue
        chunks[flat] = None if is_fill(new, meta.fill_value) else spec.codecs.encode(
            np.ascontiguousarray(new, dtype=meta.dtype))
        changed = True
    return assemble_shard(spec, meta.grid_shape, chunks) if changed else current


def decode_chunk(raw: RawChunk, meta: ArrayMeta, *, key: str, where: str, flat: int = -1
                 ) -> np.ndarray:
    """A writable decoded inner chunk (the fill value when ``raw`` is None)."""
    return _decode(raw, meta, key=key, where=where, local=(), flat=flat)


def split_shard(current: bytes | None, meta: ArrayMeta, *, key: str, where: str
                ) -> list[RawChunk]:
    """Stored bytes of every inner chunk of a shard, in C order, through its validated index."""
    spec = meta.sharding
    assert spec is not None
    n = math.prod(spec.chunks_per_shard(meta.grid_shape))
    if current is None:
        return [None] * n
    size = spec.index_nbytes(meta.grid_shape)
    raw = current[-size:] if spec.index_location == "end" else current[:size]
    index = decode_index(raw, spec=spec, n_chunks=n, key=key, where=where,
                         object_size=len(current))
    view = memoryview(current)
    out: list[RawChunk] = []
    for flat in range(n):
        entry = index.chunk_slice(flat)
        out.append(None if entry is None else view[entry[0]:entry[0] + entry[1]])
    return out


def _decode(raw: RawChunk, meta: ArrayMeta, *, key: str, where: str, local: Coords,
            flat: int) -> np.ndarray:
    """A writable copy of one stored inner chunk (the fill value when it is not stored)."""
    if raw is None:
        return np.full(meta.chunk_shape, meta.fill_value, dtype=meta.dtype)
    try:
        chunk = meta.chunk_codecs.decode(raw, meta.chunk_shape, meta.dtype)
    except CorruptDataError as e:
        # Never merge into (and so overwrite) a shard whose bytes are garbage.
        raise CorruptShardError(f"{where}/{key}: inner chunk {local} (index entry {flat}) "
                                f"cannot be decoded: {e}; the shard was left unchanged") from e
    return chunk if chunk.flags.writeable else chunk.copy()


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` as ``dtype``, refusing conversions that would change values silently."""
    if values.dtype == dtype or np.can_cast(values.dtype, dtype, casting="safe"):
        return values.astype(dtype, copy=False)
    if dtype.kind == "f" and values.dtype.kind in "biuf":
        return values.astype(dtype)  # rounding only
    if dtype.kind in "iu" and values.dtype.kind in "biu":
        info = np.iinfo(dtype)
        if values.size == 0 or (values.min() >= info.min and values.max() <= info.max):
            return values.astype(dtype)
        raise TypeError(f"values {values.min()}..{values.max()} do not fit the array's {dtype}")
    raise TypeError(f"cannot write {values.dtype} values into a {dtype} array")
