"""Destination shards made chunk by chunk from the source's stored chunks.

When the destination's inner chunks have the source's chunk shape, a reshard regroups stored
chunks into new shards: with the same codec chain (or that chain plus a trailing crc32c) the
stored bytes are copied as they are, bound by reading and writing, not by the compressor;
with other codecs each chunk is decoded and re-encoded on its own (``transcode``), without
assembling layers of the array. Every copied chunk is still checked first — its crc32c, or,
without one, by decoding it — so a corrupt source chunk stops the job (or is skipped) exactly
as when recompressing, and nothing corrupt is ever copied.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..engine.codecs import Crc32cCodec
from ..engine.metadata import ArrayMeta
from ..engine.reader import RegionReader
from ..engine.shard_writer import ShardAssembly, is_fill
from ..errors import CorruptDataError
from ..store.pool import decode_pool

COPY = "copy"  # the same chain: stored bytes as they are
ADD_CRC32C = "add-crc32c"  # the destination adds a crc32c to the source's chain
TRANSCODE = "transcode"  # other codecs: each chunk decoded and re-encoded on its own

Coords = tuple[int, ...]


def passthrough_mode(source: ArrayMeta, target: ArrayMeta, *, recompress: bool = False
                     ) -> str | None:
    """How the destination's chunks come from the source's stored ones (:data:`COPY`,
    :data:`ADD_CRC32C`, :data:`TRANSCODE`), or None: another chunk shape, read by layers."""
    if target.sharding is None or source.chunk_shape != target.chunk_shape:
        return None
    if source.dtype != target.dtype or not _same_fill(source.fill_value, target.fill_value):
        return None
    src, dst = source.chunk_codecs, target.chunk_codecs
    if src is None:
        return None
    if recompress or src.filters or dst.filters:
        return TRANSCODE
    chain, wanted = src.to_json(), dst.to_json()
    if chain == wanted:
        return COPY
    if wanted == [*chain, {"name": "crc32c"}]:
        return ADD_CRC32C
    return TRANSCODE


def _same_fill(a, b) -> bool:
    if bool(a == b):
        return True
    try:
        return bool(np.isnan(a) and np.isnan(b))
    except TypeError:
        return False


def copy_shard(reader: RegionReader, target: ArrayMeta, shard: Coords, mode: str, *,
               max_layers: int | None = None) -> bytearray | None:
    """Destination shard ``shard`` from the source's stored chunks (``reader`` reads the
    source) as ``mode`` says, one layer of chunks (along axis 0) at a time; ``max_layers``
    stops early (a timing sample). None when no chunk is stored."""
    source = reader.meta
    spec = target.sharding
    assert spec is not None
    cps = spec.chunks_per_shard(target.grid_shape)
    extent = tuple(-(-n // c) for n, c in zip(source.shape, source.chunk_shape, strict=True))
    base = tuple(s * n for s, n in zip(shard, cps, strict=True))
    codecs = source.chunk_codecs
    crc = codecs.bytes_codecs[-1] if codecs.bytes_codecs and isinstance(
        codecs.bytes_codecs[-1], Crc32cCodec) else None
    add_crc = Crc32cCodec() if mode == ADD_CRC32C else None

    def check(coords: Coords, item: tuple[str, memoryview] | None) -> bytes | None:
        if item is None:
            return None
        key, data = item
        try:  # the crc32c proves the bytes intact; without one, decoding does
            if crc is not None and mode != TRANSCODE:
                crc.decode(data, None)
            else:
                chunk = codecs.decode(data, source.chunk_shape, source.dtype)
        except CorruptDataError as e:
            raise type(e)(f"{reader.store.url}/{key}: inner chunk {coords}: {e}") from e
        if mode == TRANSCODE:
            return None if is_fill(chunk, target.fill_value) else spec.codecs.encode(chunk)
        return add_crc.encode(data) if add_crc is not None else bytes(data)

    def check_all(batch: list[tuple[Coords, tuple[str, memoryview] | None]]) -> list:
        return [check(c, item) for c, item in batch]

    out = ShardAssembly(spec, target.grid_shape)
    per_layer = math.prod(cps[1:])
    for lz in range(cps[0] if max_layers is None else min(cps[0], max_layers)):
        coords = [(base[0] + lz, *(b + i for b, i in zip(base[1:], local, strict=True)))
                  for local in np.ndindex(*cps[1:])]
        inside = [c for c in coords if all(g < e for g, e in zip(c, extent, strict=True))]
        if not inside:
            for _ in range(per_layer):
                out.add(None)
            continue
        stored = reader.stored_chunks(inside)
        items = [(c, stored.get(c)) for c in coords]
        per = max(1, len(items) // (4 * (os.cpu_count() or 1)))
        batches = [items[j:j + per] for j in range(0, len(items), per)]
        for checked in decode_pool().map(check_all, batches):
            for chunk in checked:
                out.add(chunk)
        del stored, items, batches
    while out.count < math.prod(cps):  # (a timing sample stopped early)
        out.add(None)
    return out.finish()
