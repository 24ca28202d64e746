"""Encoding and committing whole shards: inner chunks in C order, index with crc32c.

C order inside the shard keeps the chunks of one XY plane contiguous, so a plane costs one
coalesced range request per shard. A shard whose chunks all equal the fill value is not
written at all (and an existing one is deleted), as zarr-python does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..store import Store
from ..store.pool import decode_pool
from .metadata import ArrayMeta, ShardingSpec
from .shard_index import EMPTY, encode_index

Coords = tuple[int, ...]


def is_fill(chunk: np.ndarray, fill_value: Any) -> bool:
    if chunk.dtype.kind in "fc" and np.isnan(fill_value):
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill_value).all())


def shard_region(meta: ArrayMeta, shard: Coords) -> tuple[slice, ...]:
    """The part of the array that shard ``shard`` holds, clipped to the array's shape."""
    return tuple(slice(g * s, min(n, (g + 1) * s))
                 for g, s, n in zip(shard, meta.grid_shape, meta.shape, strict=True))


def iter_shards(meta: ArrayMeta) -> Iterator[Coords]:
    """Grid coordinates of every shard, in C order."""
    yield from np.ndindex(*meta.grid_extent())


def _padded(meta: ArrayMeta, block: np.ndarray) -> np.ndarray:
    if block.shape == meta.grid_shape:
        return np.ascontiguousarray(block, dtype=meta.dtype)
    full = np.full(meta.grid_shape, meta.fill_value, dtype=meta.dtype)
    full[tuple(slice(0, n) for n in block.shape)] = block
    return full


def encode_shard(meta: ArrayMeta, block: np.ndarray, *, parallel: bool = True) -> bytes | None:
    """Encode one shard from ``block`` (the shard's region; padded here at array edges).

    Returns None when every inner chunk equals the fill value (nothing to store).
    """
    spec = meta.sharding
    if spec is None:
        raise ValueError("encode_shard needs a sharded array")
    full = _padded(meta, block)
    cps = spec.chunks_per_shard(meta.grid_shape)
    cs = spec.chunk_shape
    chunks = [full[tuple(slice(i * c, (i + 1) * c) for i, c in zip(local, cs, strict=True))]
              for local in np.ndindex(*cps)]

    def encode(chunk: np.ndarray) -> bytes | None:
        return None if is_fill(chunk, meta.fill_value) else spec.codecs.encode(chunk)

    encoded = list(decode_pool().map(encode, chunks)) if parallel and len(chunks) > 1 \
        else [encode(c) for c in chunks]
    return assemble_shard(spec, meta.grid_shape, encoded)


def assemble_shard(spec: ShardingSpec, shard_shape: tuple[int, ...],
                   chunks: Sequence[bytes | memoryview | None]) -> bytes | None:
    """One shard from its encoded inner chunks (C order; None = not stored) and their index;
    None when no chunk is stored."""
    if all(c is None for c in chunks):
        return None
    entries = np.full((len(chunks), 2), EMPTY, dtype=np.uint64)
    offset = spec.index_nbytes(shard_shape) if spec.index_location == "start" else 0
    for flat, chunk in enumerate(chunks):
        if chunk is not None:
            entries[flat] = (offset, len(chunk))
            offset += len(chunk)
    stored = [c for c in chunks if c is not None]
    index = encode_index(entries, spec)
    return b"".join([index, *stored] if spec.index_location == "start" else [*stored, index])


def write_shard(store: Store, meta: ArrayMeta, shard: Coords, block: np.ndarray) -> int:
    """Encode and atomically commit one whole shard; returns the bytes written (0: all fill)."""
    data = encode_shard(meta, block)
    key = meta.object_key(shard)
    if data is None:
        store.delete(key)
        return 0
    store.write(key, data)
    return len(data)


def write_array_data(store: Store, meta: ArrayMeta, source: Any, *,
                     shards: Sequence[Coords] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Iterator[int]:
    """Write ``source`` (anything sliceable like numpy: numpy, dask, ShardedArray) shard by
    shard, yielding the number of shards done so far. Memory holds one shard at a time."""
    todo = list(shards) if shards is not None else list(iter_shards(meta))
    for i, shard in enumerate(todo, 1):
        block = np.asarray(source[shard_region(meta, shard)])
        write_shard(store, meta, shard, block)
        if progress is not None:
            progress(i, len(todo))
        yield i
