"""Destination shards made chunk by chunk from the source's stored chunks.

When the destination's inner chunks have the source's chunk shape, a reshard regroups stored
chunks into new shards: with the same codec chain (or that chain plus a trailing crc32c) the
stored bytes are copied as they are, bound by reading and writing, not by the compressor;
with other codecs each chunk is decoded and re-encoded on its own (``transcode``), without
assembling layers of the array. When the destination's chunks tile the source's (a source
chunk is a whole number of destination chunks along every axis, e.g. 64³ → 32³) each stored
chunk is decoded once and cut straight into its destination chunks (``split``): no layer of
the array is assembled and copied out again, and the cut is made while the decoded chunk is
still in the CPU's cache. Every copied chunk is still checked first — its crc32c, or,
without one, by decoding it — so a corrupt source chunk stops the job (or is skipped) exactly
as when recompressing, and nothing corrupt is ever copied.

The stored bytes of the next layer of source chunks are fetched while this one is encoded,
and a layer's chunks are encoded while the last layer's are still being collected, so the
decode pool always has work.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import overload

import numpy as np

from ..engine.codecs import Crc32cCodec
from ..engine.metadata import ArrayMeta
from ..engine.pools import decode_pool
from ..engine.reader import RegionReader
from ..engine.shard_writer import ShardAssembly, is_fill_chunk
from ..errors import CorruptDataError
from ..store.base import ObjectWriter

COPY = "copy"  # the same chain: stored bytes as they are
ADD_CRC32C = "add-crc32c"  # the destination adds a crc32c to the source's chain
TRANSCODE = "transcode"  # other codecs: each chunk decoded and re-encoded on its own
SPLIT = "split"  # smaller chunks tiling the source's: each decoded once, cut and encoded

Coords = tuple[int, ...]


def passthrough_mode(source: ArrayMeta, target: ArrayMeta, *, recompress: bool = False
                     ) -> str | None:
    """How the destination's chunks come from the source's stored ones (:data:`COPY`,
    :data:`ADD_CRC32C`, :data:`TRANSCODE`, :data:`SPLIT`), or None: another chunk shape,
    read by layers."""
    if target.sharding is None:
        return None
    if source.dtype != target.dtype or not _same_fill(source.fill_value, target.fill_value):
        return None
    src, dst = source.chunk_codecs, target.chunk_codecs
    if src is None:
        return None
    if source.chunk_shape != target.chunk_shape:
        return SPLIT if _tiles(source, target) else None
    if recompress or src.filters or dst.filters:
        return TRANSCODE
    chain, wanted = src.to_json(), dst.to_json()
    if chain == wanted:
        return COPY
    if wanted == [*chain, {"name": "crc32c"}]:
        return ADD_CRC32C
    return TRANSCODE


def _tiles(source: ArrayMeta, target: ArrayMeta) -> bool:
    """Whether each source chunk is a whole number of destination chunks along every axis
    and lies inside one destination shard (so no task decodes another's source chunks)."""
    extent = target.grid_extent()
    return all(s % c == 0 and (g % s == 0 or n == 1) for s, c, g, n in zip(
        source.chunk_shape, target.chunk_shape, target.grid_shape, extent, strict=True))


_per_thread = threading.local()
#: Source chunks up to this size are decoded into a buffer each thread keeps (see
#: :func:`_chunk_buffer`); larger ones into a new array each.
CHUNK_BUFFER_BYTES = 16 * 1024 * 1024


def _chunk_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """This thread's buffer for one decoded source chunk, reused chunk after chunk (all that
    is cut from it is encoded before the next is decoded into it): a new array per chunk cost
    8% more CPU time resharding 32,768 unsharded 32³ chunks (measured, same run)."""
    if math.prod(shape) * dtype.itemsize > CHUNK_BUFFER_BYTES:
        return None
    found = getattr(_per_thread, "chunk", None)
    if found is None or found.shape != tuple(shape) or found.dtype != dtype:
        found = _per_thread.chunk = np.empty(shape, dtype)
    return found


def _same_fill(a, b) -> bool:
    if bool(a == b):
        return True
    try:
        return bool(np.isnan(a) and np.isnan(b))
    except TypeError:
        return False


@overload
def copy_shard(reader: RegionReader, target: ArrayMeta, shard: Coords, mode: str, *,
               max_layers: int | None = None, out: None = None) -> bytearray | None: ...
@overload
def copy_shard(reader: RegionReader, target: ArrayMeta, shard: Coords, mode: str, *,
               max_layers: int | None = None, out: ObjectWriter) -> int | None: ...
def copy_shard(reader: RegionReader, target: ArrayMeta, shard: Coords, mode: str, *,
               max_layers: int | None = None, out: ObjectWriter | None = None
               ) -> bytearray | int | None:
    """Destination shard ``shard`` from the source's stored chunks (``reader`` reads the
    source) as ``mode`` says, one layer of source chunks (along axis 0) at a time;
    ``max_layers`` stops early (a timing sample). None when no chunk is stored. With
    ``out``, each layer is written there as it is done and the shard's size is returned
    (see :class:`ShardAssembly`)."""
    source = reader.meta
    spec = target.sharding
    assert spec is not None
    cps = spec.chunks_per_shard(target.grid_shape)  # destination chunks per shard
    dcs, scs = target.chunk_shape, source.chunk_shape
    per = tuple(s // c for s, c in zip(scs, dcs, strict=True))  # destination chunks per source
    # the shard's destination chunks, and those that hold any of the array (global coords)
    lo = tuple(g * n for g, n in zip(shard, cps, strict=True))
    hi = tuple(a + n for a, n in zip(lo, cps, strict=True))
    d_extent = tuple(-(-n // c) for n, c in zip(target.shape, dcs, strict=True))
    s_extent = tuple(-(-n // c) for n, c in zip(source.shape, scs, strict=True))
    s_lo = tuple(a // k for a, k in zip(lo, per, strict=True))
    s_hi = tuple(min(-(-b // k), e) for b, k, e in zip(hi, per, s_extent, strict=True))
    codecs = source.chunk_codecs
    crc = codecs.bytes_codecs[-1] if codecs.bytes_codecs and isinstance(
        codecs.bytes_codecs[-1], Crc32cCodec) else None
    add_crc = Crc32cCodec() if mode == ADD_CRC32C else None
    decode = mode in (TRANSCODE, SPLIT)
    fill = target.fill_value
    encode = spec.codecs.encode
    row = math.prod(cps[1:])  # destination chunks in one row of the shard (along axis 0)
    strides = [math.prod(cps[i + 1:]) for i in range(len(cps))]  # C order inside the shard
    # each source chunk's destination chunks: offsets inside it, the slices cutting them, and
    # their places among the shard's chunks relative to the first one's
    subs = [(sub, tuple(slice(i * c, (i + 1) * c) for i, c in zip(sub, dcs, strict=True)),
             sum(i * st for i, st in zip(sub, strides, strict=True)))
            for sub in np.ndindex(*per)]
    # source chunks whose destination chunks are all in this shard and wholly in the array
    whole = [(a, min(b, n // c)) for a, b, c, n in zip(lo, hi, dcs, target.shape, strict=True)]

    def cut(coords: Coords, chunk: np.ndarray | None, data: memoryview
            ) -> Iterator[tuple[int, bytes | memoryview | None]]:
        """(position in the layer's rows, encoded destination chunk) of one source chunk;
        ``chunk``: the decoded source chunk when decoding (else None)."""
        first = [g * k for g, k in zip(coords, per, strict=True)]
        if all(a <= d and d + k <= b for d, k, (a, b) in zip(first, per, whole, strict=True)):
            # (the common case, made short: nothing to clip; the layer starts at this row)
            base = sum((d - a) * st for d, a, st in zip(first[1:], lo[1:], strides[1:],
                                                        strict=True))
            for _, where, offset in subs:
                if not decode:
                    yield base, add_crc.encode(data) if add_crc is not None else data
                    continue
                assert chunk is not None  # decoding: convert decoded it
                part = chunk[where]
                yield base + offset, None if is_fill_chunk(part, fill) else encode(part)
            return
        z0 = coords[0] * per[0]
        for sub, where, _ in subs:
            dst = tuple(s * k + i for s, k, i in zip(coords, per, sub, strict=True))
            if not all(a <= d < b for a, d, b in zip(lo, dst, hi, strict=True)):
                continue  # another shard's (or past the shard grid at the array's end)
            if not all(d < e for d, e in zip(dst, d_extent, strict=True)):
                continue  # wholly past the array's end: not stored
            # its place among the destination chunks of this layer of source chunks
            flat = (dst[0] - max(z0, lo[0])) * row + sum(
                (d - a) * st for d, a, st in zip(dst[1:], lo[1:], strides[1:], strict=True))
            if not decode:  # (the stored bytes are copied once, into the shard)
                yield flat, add_crc.encode(data) if add_crc is not None else data
                continue
            assert chunk is not None  # decoding: convert decoded it
            part = chunk[where]
            beyond = [n - d * c for d, c, n in zip(dst, dcs, target.shape, strict=True)]
            if any(b < c for b, c in zip(beyond, dcs, strict=True)):  # cut by the array's end
                part = np.array(part)
                for axis, (b, c) in enumerate(zip(beyond, dcs, strict=True)):
                    if b < c:
                        part[(slice(None),) * axis + (slice(b, None),)] = fill
            yield flat, None if is_fill_chunk(part, fill) else encode(part)

    def convert(coords: Coords, item: tuple[str, memoryview] | None
                ) -> list[tuple[int, bytes | memoryview | None]]:
        if item is None:
            return []  # not stored: every destination chunk of it is fill
        key, data = item
        chunk = None
        try:  # the crc32c proves the bytes intact; without one, decoding does
            if crc is not None and not decode:
                crc.decode(data, None)
            else:
                chunk = codecs.decode(data, scs, source.dtype, _chunk_buffer(scs, source.dtype))
        except CorruptDataError as e:
            raise type(e)(f"{reader.store.url}/{key}: inner chunk {coords}: {e}") from e
        return list(cut(coords, chunk, data))

    def convert_all(batch: list[tuple[Coords, tuple[str, memoryview] | None]]) -> list:
        return [placed for c, item in batch for placed in convert(c, item)]

    layers = list(range(s_lo[0], s_hi[0]))[:max_layers]
    if lo[0] < d_extent[0] and not layers:  # (cannot happen: the shard holds some array)
        raise ValueError(f"shard {shard} covers no source chunk")

    def layer_coords(sz: int) -> list[Coords]:
        return [(sz, *(a + i for a, i in zip(s_lo[1:], local, strict=True)))
                for local in np.ndindex(*(b - a for a, b in zip(s_lo[1:], s_hi[1:],
                                                                strict=True)))]

    shard_bytes = ShardAssembly(spec, target.grid_shape, out)
    pool = decode_pool()
    inflight: deque[tuple[int, list[Future]]] = deque()

    def collect(sz: int, futures: list[Future]) -> None:
        """Add a layer's destination rows to the shard, in C order."""
        first = max(sz * per[0], lo[0])
        rows = min((sz + 1) * per[0], hi[0]) - first
        layer: list[bytes | memoryview | None] = [None] * (rows * row)
        for fut in futures:
            for flat, chunk in fut.result():
                layer[flat] = chunk
        assert shard_bytes.count == (first - lo[0]) * row  # layers in order, none left out
        for chunk in layer:
            shard_bytes.add(chunk)
        shard_bytes.flush()

    workers = 4 * (os.cpu_count() or 1)  # a few batches per core: fewer futures, no idling
    with ThreadPoolExecutor(1, thread_name_prefix="zshard-fetch") as ahead:
        fetching = ahead.submit(reader.stored_chunks, layer_coords(layers[0])) \
            if layers else None
        try:
            for i, sz in enumerate(layers):
                assert fetching is not None  # submitted for this layer (there is one)
                stored = fetching.result()
                fetching = ahead.submit(reader.stored_chunks, layer_coords(layers[i + 1])) \
                    if i + 1 < len(layers) else None
                items = list(stored.items())
                n = max(1, -(-len(items) // workers))
                inflight.append((sz, [pool.submit(convert_all, items[j:j + n])
                                      for j in range(0, len(items), n)]))
                del stored, items
                if len(inflight) > 1:  # the layer before is (nearly) encoded: collect it
                    collect(*inflight.popleft())
            while inflight:
                collect(*inflight.popleft())
        finally:
            for _, futures in inflight:  # a failed layer: the rest need not run
                for fut in futures:
                    fut.cancel()
            if fetching is not None:
                fetching.cancel()
    while shard_bytes.count < len(shard_bytes.entries):  # past the array's (or sample's) end
        shard_bytes.add(None)
    return shard_bytes.finish()
