"""Encoding and committing whole shards: inner chunks in C order, index with crc32c.

C order inside the shard keeps the chunks of one XY plane contiguous, so a plane costs one
coalesced range request per shard. A shard whose chunks all equal the fill value is not
written at all (and an existing one is deleted), as zarr-python does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, overload

import numpy as np

from ..store import Store
from ..store.base import ObjectWriter
from .metadata import ArrayMeta, ShardingSpec
from .pools import decode_pool
from .shard_index import EMPTY, encode_index

Coords = tuple[int, ...]


def is_fill(chunk: np.ndarray, fill_value: Any) -> bool:
    if chunk.dtype.kind in "fc" and np.isnan(fill_value):
        return bool(np.isnan(chunk).all())
    return bool((chunk == fill_value).all())


def is_fill_chunk(chunk: np.ndarray, fill_value: Any) -> bool:
    """:func:`is_fill` for a chunk about to be encoded: two corners first, the whole
    comparison only for chunks that may be all fill (most chunks of an image are not)."""
    nan = fill_value != fill_value  # (NaN: a corner is fill when it is NaN too)
    for corner in ((0,) * chunk.ndim, (-1,) * chunk.ndim):
        value = chunk[corner]
        if not (value == fill_value or (nan and value != value)):
            return False
    return is_fill(chunk, fill_value)


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


class ShardAssembly:
    """A shard assembled as its encoded inner chunks arrive in C order, in one growing buffer:
    never a list of chunks plus their concatenation, so a shard of hundreds of MiB takes its
    size in memory once, not twice. :meth:`finish` gives the bytes :func:`assemble_shard`
    gives.

    With ``out`` (an :class:`~napari_zshard.store.base.ObjectWriter`) and the index at the
    end, the chunks are not kept at all: :meth:`flush` hands those added so far to ``out`` in
    one write, and :meth:`finish` appends the index and gives the shard's size.
    """

    def __init__(self, spec: ShardingSpec, shard_shape: tuple[int, ...],
                 out: ObjectWriter | None = None):
        self.spec = spec
        self.entries = np.full((math.prod(spec.chunks_per_shard(shard_shape)), 2), EMPTY,
                               dtype=np.uint64)
        self.start = spec.index_nbytes(shard_shape) if spec.index_location == "start" else 0
        self.out = out
        self.streaming = out is not None and not self.start  # (an index first: gathered)
        self.buffer = bytearray()
        self.pending: list[bytes | memoryview] = []  # streaming: added, not yet written
        self.size = 0  # bytes of the chunks added
        self.count = 0

    def add(self, chunk: bytes | memoryview | None) -> None:
        """The next chunk in C order (None: not stored)."""
        if chunk is not None:
            self.entries[self.count] = (self.start + self.size, len(chunk))
            self.size += len(chunk)
            if self.streaming:
                self.pending.append(chunk)
            else:
                self.buffer += chunk
        self.count += 1

    def flush(self) -> None:
        """Write the chunks added since the last flush to ``out`` (streaming only)."""
        if self.pending:
            pending, self.pending = self.pending, []
            assert self.out is not None  # chunks are only left pending when streaming to out
            self.out.write(pending)

    def finish(self) -> bytearray | int | None:
        """The shard, index included (with ``out``: written there; its size in bytes); None
        when no chunk is stored (nothing was written to ``out`` then)."""
        if self.count != len(self.entries):
            raise ValueError(f"a shard of {len(self.entries)} chunks got {self.count}")
        if not (self.entries[:, 0] != EMPTY).any():
            return None
        index = encode_index(self.entries, self.spec)
        if self.out is not None:
            pending, self.pending = self.pending, []
            self.out.write([*pending, index] if self.streaming else [index, self.buffer])
            self.buffer = bytearray()
            return self.start + self.size + (0 if self.start else len(index))
        if self.start:
            return bytearray(index) + self.buffer
        self.buffer += index
        return self.buffer


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
        block = np.asarray(source[meta.layout.shard_region(shard)])
        write_shard(store, meta, shard, block)
        if progress is not None:
            progress(i, len(todo))
        yield i


@overload
def encode_shard_by_layers(meta: ArrayMeta, shard: Coords,
                           read: Callable[[tuple[slice, ...], np.ndarray], Any], *,
                           depth: int | None = None, out: None = None) -> bytearray | None: ...
@overload
def encode_shard_by_layers(meta: ArrayMeta, shard: Coords,
                           read: Callable[[tuple[slice, ...], np.ndarray], Any], *,
                           depth: int | None = None, out: ObjectWriter) -> int | None: ...
def encode_shard_by_layers(meta: ArrayMeta, shard: Coords,
                           read: Callable[[tuple[slice, ...], np.ndarray], Any], *,
                           depth: int | None = None, out: ObjectWriter | None = None
                           ) -> bytearray | int | None:
    """Encode shard ``shard`` from ``read(region, out)`` (which fills ``out`` with the array's
    ``region``, like :meth:`ShardedArray.read_region`), one layer of inner chunks at a time.

    A layer is ``depth`` rows along axis 0 (a multiple of the inner chunk depth; default one
    chunk): memory holds two decoded layers (the next one is read while this one is encoded;
    the two buffers are reused) and the encoded chunks, never the whole shard decoded, which
    is what lets a writer stream shards of hundreds of MiB. Layers go in order, so the inner
    chunks stay in C order. Returns the shard (see :class:`ShardAssembly`; with ``out``, each
    layer is written there as soon as it is encoded and the shard's size is returned), or
    None when every chunk is fill.
    """
    spec = meta.sharding
    if spec is None:
        raise ValueError("encode_shard_by_layers needs a sharded array")
    cs, cps = spec.chunk_shape, spec.chunks_per_shard(meta.grid_shape)
    depth = depth or cs[0]
    if depth % cs[0]:
        raise ValueError(f"layer depth {depth} is not a multiple of the chunk depth {cs[0]}")
    region = meta.layout.shard_region(shard)
    layers = [(lo, min(depth, meta.grid_shape[0] - lo))
              for lo in range(0, meta.grid_shape[0], depth)]
    stored = [(lo, rows) for lo, rows in layers if region[0].start + lo < region[0].stop]

    def encode(chunk: np.ndarray) -> bytes | None:
        return None if is_fill_chunk(chunk, meta.fill_value) else spec.codecs.encode(chunk)

    buffers: list[np.ndarray] = []

    def read_layer(i: int) -> np.ndarray:
        lo, rows = stored[i]
        if len(buffers) < 2:  # layer i is read while layer i - 1 is encoded: two buffers
            buffers.append(np.empty((depth, *meta.grid_shape[1:]), dtype=meta.dtype))
        block = buffers[i % 2][:rows]
        start = region[0].start + lo
        part = (slice(start, min(start + rows, region[0].stop)), *region[1:])
        inside = tuple(slice(0, s.stop - s.start) for s in part)
        if any(s.stop < n for s, n in zip(inside, block.shape, strict=True)):
            block.fill(meta.fill_value)  # at the array's edge: padding
        read(part, block[inside])
        return block

    shard_bytes = ShardAssembly(spec, meta.grid_shape, out)
    with ThreadPoolExecutor(1, thread_name_prefix="zshard-layer") as ahead:
        pending = ahead.submit(read_layer, 0) if stored else None
        for i, (_, rows) in enumerate(layers):
            if i >= len(stored):  # past the end of the array: padding, all fill
                for _ in range((rows // cs[0]) * math.prod(cps[1:])):
                    shard_bytes.add(None)
                continue
            assert pending is not None  # submitted for this layer (i < len(stored))
            block = pending.result()
            pending = ahead.submit(read_layer, i + 1) if i + 1 < len(stored) else None
            chunks = [block[tuple(slice(j * c, (j + 1) * c)
                                  for j, c in zip(local, cs, strict=True))]
                      for local in np.ndindex(rows // cs[0], *cps[1:])]
            # a few batches per core: one future per chunk would cost more than a small chunk
            per = max(1, len(chunks) // (4 * (os.cpu_count() or 1)))
            batches = [chunks[j:j + per] for j in range(0, len(chunks), per)]
            for done in decode_pool().map(lambda batch: [encode(c) for c in batch], batches):
                for chunk in done:
                    shard_bytes.add(chunk)
            shard_bytes.flush()
            del block, chunks, batches
    return shard_bytes.finish()
