"""Creating arrays: metadata through zarr-python's model (spec-exact), written by our store."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MetadataError, StoreError
from ..store import Store, open_store
from .metadata import ArrayMeta, parse_json, parse_v3

SUPPORTED_KINDS = "biuf"  # bool, ints, floats (complex round-trips through zarr, not napari)

#: Default inner chunk edge (3D) and target shard size (below s3fs's 100 MiB multipart size).
DEFAULT_CHUNK_3D = 64
DEFAULT_CHUNK_2D = 256
TARGET_SHARD_BYTES = 32 * 1024 * 1024


def default_layout(shape: Sequence[int], dtype: np.dtype) -> tuple[tuple[int, ...],
                                                                   tuple[int, ...]]:
    """Inner chunk and shard shapes for streaming XY planes: 64³ chunks (256² in 2D) and
    shards of ~32 MB grown along the last axes first, clipped to the data."""
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    spatial = min(nd, 3)
    edge = DEFAULT_CHUNK_3D if spatial == 3 else DEFAULT_CHUNK_2D
    chunks = tuple([1] * (nd - spatial) + [edge] * spatial)
    chunks = tuple(max(1, min(c, s)) for c, s in zip(chunks, shape, strict=True))
    shards = list(chunks)
    itemsize = np.dtype(dtype).itemsize
    grown = True
    while grown:
        grown = False
        for ax in range(nd - 1, nd - spatial - 1, -1):
            if shards[ax] >= shape[ax]:
                continue
            trial = list(shards)
            trial[ax] *= 2
            if math.prod(trial) * itemsize <= TARGET_SHARD_BYTES:
                shards = trial
                grown = True
    # a shard never needs to be larger than the array rounded up to whole chunks
    shards = [min(sh, -(-s // c) * c) for sh, s, c in zip(shards, shape, chunks, strict=True)]
    return chunks, tuple(shards)


def array_metadata(*, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                   shards: Sequence[int] | None, compressor: str = "zstd", level: int = 3,
                   checksum: bool = True, fill_value: Any = 0,
                   dimension_names: Sequence[str | None] | None = None,
                   attributes: dict[str, Any] | None = None) -> bytes:
    """The ``zarr.json`` bytes of a new array, produced by zarr-python (the reference)."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec
    from zarr.storage import MemoryStore

    dtype = np.dtype(dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise MetadataError(
            f"cannot store dtype {dtype}: only booleans, integers and floats are supported"
        )
    compressors: list[Any] = []
    if compressor == "zstd":
        compressors.append(ZstdCodec(level=level))
    elif compressor == "blosc":
        compressors.append(BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle"))
    elif compressor == "gzip":
        compressors.append(GzipCodec(level=level))
    elif compressor not in ("none", None):
        raise ValueError(
            f"compressor must be 'zstd', 'blosc', 'gzip' or 'none', not {compressor!r}")
    if checksum:
        compressors.append(Crc32cCodec())
    docs: dict[str, Any] = {}
    zarr.create_array(
        MemoryStore(docs), shape=tuple(shape), dtype=dtype, chunks=tuple(chunks),
        shards=tuple(shards) if shards else None, compressors=compressors or None,
        fill_value=fill_value, dimension_names=list(dimension_names) if dimension_names else None,
        attributes=attributes or {}, zarr_format=3,
    )
    return docs["zarr.json"].to_bytes()


def create_array(url: str | os.PathLike | Store, *, shape: Sequence[int], dtype: Any,
                 chunks: Sequence[int] | None = None, shards: Sequence[int] | None = None,
                 compressor: str = "zstd", level: int = 3, checksum: bool = True,
                 fill_value: Any = 0, dimension_names: Sequence[str] | None = None,
                 attributes: dict[str, Any] | None = None, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> tuple[Store, ArrayMeta]:
    """Write the metadata of a new sharded array and return its store and parsed metadata.

    Chunk and shard shapes default to :func:`default_layout`. With ``overwrite=False`` an
    existing array or group at the location is an error.
    """
    store = url if isinstance(url, Store) else open_store(url, storage_options)
    if chunks is None or shards is None:
        d_chunks, d_shards = default_layout(shape, np.dtype(dtype))
        chunks = chunks or d_chunks
        shards = shards if shards is not None else d_shards
    if shards is not None and any(s % c for s, c in zip(shards, chunks, strict=True)):
        raise ValueError(f"shard shape {tuple(shards)} must be a multiple of the chunk shape "
                         f"{tuple(chunks)}")
    if not overwrite and (store.read("zarr.json") is not None or store.read(".zarray")
                          is not None or store.read(".zgroup") is not None):
        raise StoreError(f"{store.url} already holds a Zarr array or group; "
                         "pass overwrite=True to replace it")
    raw = array_metadata(shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                         compressor=compressor, level=level, checksum=checksum,
                         fill_value=fill_value, dimension_names=dimension_names,
                         attributes=attributes)
    meta = parse_v3(parse_json(raw, f"{store.url}/zarr.json"), f"{store.url}/zarr.json")
    store.write("zarr.json", raw)
    return store, meta
