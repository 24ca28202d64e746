"""Array metadata (Zarr v3 ``zarr.json`` and Zarr v2 ``.zarray``) parsed into one model.

Metadata is untrusted input: ranks, shapes and chunk sizes are capped before anything is
allocated, and every problem is a :class:`MetadataError` that names the store.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MetadataError, UnsupportedCodecError
from .codecs import ChunkCodecs, parse_v2_codecs, parse_v3_codecs
from .layout import ShardLayout

MAX_RANK = 32
MAX_DIM = 2**53
MAX_CHUNK_BYTES = 2**31  # one decoded inner chunk
MAX_CHUNKS_PER_SHARD = 2**24  # a 256 MiB shard index

V3_DTYPES = {
    "bool": "|b1", "int8": "|i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "uint8": "|u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
    "float16": "<f2", "float32": "<f4", "float64": "<f8",
    "complex64": "<c8", "complex128": "<c16",
}


@dataclass(frozen=True)
class ShardingSpec:
    """The ``sharding_indexed`` codec: inner chunks, their codecs, and the shard index."""

    chunk_shape: tuple[int, ...]
    codecs: ChunkCodecs
    index_location: str  # "end" | "start"
    index_checksum: bool  # index codecs include crc32c
    index_endian: str  # "little" | "big"

    def chunks_per_shard(self, shard_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(shard_shape, self.chunk_shape, strict=True))

    def index_nbytes(self, shard_shape: tuple[int, ...]) -> int:
        checksum = 4 if self.index_checksum else 0
        return math.prod(self.chunks_per_shard(shard_shape)) * 16 + checksum


@dataclass(frozen=True)
class ArrayMeta:
    """What the engine needs to read an array, whatever its Zarr version."""

    zarr_format: int
    shape: tuple[int, ...]
    dtype: np.dtype  # native byte order
    fill_value: Any
    grid_shape: tuple[int, ...]  # one stored object per grid cell: the shard (or chunk) shape
    key_prefix: str  # "c" for v3 default keys, "" otherwise
    key_separator: str
    codecs: ChunkCodecs | None  # unsharded arrays: how one object decodes
    sharding: ShardingSpec | None
    dimension_names: tuple[str | None, ...] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """The decode unit: inner chunk shape when sharded, else the chunk shape."""
        return self.sharding.chunk_shape if self.sharding else self.grid_shape

    @property
    def chunk_codecs(self) -> ChunkCodecs:
        # codecs is None only for an array read through zarr-python (engine/array.py), which
        # never decodes through the engine; no check here: every chunk decode asks for this
        return self.sharding.codecs if self.sharding else self.codecs  # type: ignore[return-value]

    @property
    def chunks_per_object(self) -> tuple[int, ...]:
        if self.sharding is None:
            return (1,) * self.ndim
        return self.sharding.chunks_per_shard(self.grid_shape)

    @functools.cached_property
    def layout(self) -> ShardLayout:
        """The chunk → shard → slot arithmetic of this array (engine/layout.py)."""
        return ShardLayout(self.shape, self.chunk_shape, self.chunks_per_object)

    def grid_extent(self) -> tuple[int, ...]:
        """Number of stored objects along each axis."""
        return tuple(-(-s // g) for s, g in zip(self.shape, self.grid_shape, strict=True))

    def object_key(self, coords: tuple[int, ...]) -> str:
        """Store key of the shard (or chunk) at grid ``coords``."""
        parts = [str(c) for c in coords]
        if self.key_prefix:
            return self.key_separator.join([self.key_prefix, *parts])
        return self.key_separator.join(parts) if parts else "0"

    def grid_coords(self, key: str) -> tuple[int, ...] | None:
        """The grid coords whose :meth:`object_key` is ``key`` (None: not one of this
        array's chunk or shard keys)."""
        parts = key.split(self.key_separator)
        if self.key_prefix:
            if parts[0] != self.key_prefix:
                return None
            parts = parts[1:]
        if len(parts) != self.ndim or not all(p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)


def _fail(where: str, message: str) -> MetadataError:
    return MetadataError(f"{where}: {message}")


def _shape(value: Any, where: str, what: str, *, positive: bool) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_RANK:
        raise _fail(where, f"{what} must be a list of at most {MAX_RANK} integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v < MAX_DIM):
            raise _fail(where, f"{what} has an invalid entry {v!r}")
        if positive and v == 0:
            raise _fail(where, f"{what} must be positive, got {value!r}")
        out.append(v)
    return tuple(out)


def _check_chunk_bytes(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if math.prod(shape) * dtype.itemsize > MAX_CHUNK_BYTES:
        raise _fail(where, f"chunk shape {shape} of {dtype} exceeds the {MAX_CHUNK_BYTES} byte cap")


def parse_fill_value(value: Any, dtype: np.dtype, where: str) -> Any:
    """A Zarr fill value as a numpy scalar of ``dtype`` (NaN/Infinity/hex forms included)."""
    if value is None:
        return dtype.type(0)
    if isinstance(value, dict) or (isinstance(value, list) and dtype.kind != "c"):
        raise _fail(where, f"fill_value {value!r} is not a scalar of dtype {dtype}")
    try:
        if dtype.kind == "b":
            return np.bool_(bool(value))
        if dtype.kind == "c":
            re_, im = value if isinstance(value, (list, tuple)) else (value, 0)
            return dtype.type(complex(parse_fill_value(re_, np.dtype("f8"), where),
                                      parse_fill_value(im, np.dtype("f8"), where)))
        if isinstance(value, str):
            special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
            if value in special and dtype.kind == "f":
                return dtype.type(special[value])
            if value.startswith("0x") and dtype.kind == "f":
                raw = int(value, 16).to_bytes(dtype.itemsize, "big")
                return np.frombuffer(raw, dtype.newbyteorder(">"))[0].astype(dtype)
            raise ValueError(value)
        return np.array(value).astype(dtype, casting="unsafe")[()] if dtype.kind == "f" else \
            dtype.type(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise _fail(where, f"fill_value {value!r} does not fit dtype {dtype}") from e


def parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _fail(where, f"is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise _fail(where, "must be a JSON object")
    return doc


def parse_v3(doc: dict[str, Any], where: str) -> ArrayMeta:
    """Parse an array's ``zarr.json``. Raises UnsupportedCodecError for chains the engine lacks."""
    if doc.get("zarr_format") != 3:
        raise _fail(where, f"zarr_format must be 3, got {doc.get('zarr_format')!r}")
    if doc.get("node_type") != "array":
        raise _fail(where, f"is a {doc.get('node_type')!r}, not an array")
    shape = _shape(doc.get("shape"), where, "shape", positive=False)
    dt_name = doc.get("data_type")
    if dt_name is None:  # required: broken metadata, not a type for zarr-python to read
        raise _fail(where, "data_type is missing (every Zarr v3 array names its data type)")
    if not isinstance(dt_name, str) or dt_name not in V3_DTYPES:
        raise UnsupportedCodecError(f"{where}: data_type {dt_name!r}")
    dtype = np.dtype(V3_DTYPES[dt_name])
    grid = doc.get("chunk_grid") or {}
    if grid.get("name") != "regular":
        raise UnsupportedCodecError(f"{where}: chunk grid {grid.get('name')!r}")
    grid_shape = _shape((grid.get("configuration") or {}).get("chunk_shape"), where,
                        "chunk_shape", positive=True)
    if len(grid_shape) != len(shape):
        raise _fail(where, f"chunk_shape {grid_shape} does not match the rank of shape {shape}")
    enc = doc.get("chunk_key_encoding") or {"name": "default"}
    sep = (enc.get("configuration") or {}).get("separator")
    if enc.get("name") == "default":
        prefix, sep = "c", sep or "/"
    elif enc.get("name") == "v2":
        prefix, sep = "", sep or "."
    else:
        raise UnsupportedCodecError(f"{where}: chunk key encoding {enc.get('name')!r}")
    if sep not in ("/", "."):
        raise _fail(where, f"chunk key separator {sep!r} is not '/' or '.'")
    codecs_doc = doc.get("codecs")
    if not isinstance(codecs_doc, list) or not codecs_doc:
        raise _fail(where, "codecs must be a non-empty list")
    sharding = None
    codecs = None
    first = codecs_doc[0]
    if isinstance(first, dict) and first.get("name") == "sharding_indexed":
        if len(codecs_doc) != 1:
            raise UnsupportedCodecError(f"{where}: codecs around sharding_indexed")
        sharding = _parse_sharding(codecs_doc[0].get("configuration") or {}, grid_shape, dtype,
                                   where)
    else:
        _check_chunk_bytes(grid_shape, dtype, where)
        codecs = parse_v3_codecs(codecs_doc, len(shape), where)
    names = doc.get("dimension_names")
    return ArrayMeta(
        zarr_format=3, shape=shape, dtype=dtype,
        fill_value=parse_fill_value(doc.get("fill_value"), dtype, where),
        grid_shape=grid_shape, key_prefix=prefix, key_separator=sep,
        codecs=codecs, sharding=sharding,
        dimension_names=tuple(names) if isinstance(names, list) else None,
        attributes=doc.get("attributes") or {},
    )


def _parse_sharding(config: dict[str, Any], shard_shape: tuple[int, ...], dtype: np.dtype,
                    where: str) -> ShardingSpec:
    chunk_shape = _shape(config.get("chunk_shape"), where, "sharding chunk_shape", positive=True)
    if len(chunk_shape) != len(shard_shape) or any(
        s % c for s, c in zip(shard_shape, chunk_shape, strict=True)
    ):
        raise _fail(where, f"shard shape {shard_shape} is not a multiple of the inner chunk "
                    f"shape {chunk_shape}")
    _check_chunk_bytes(chunk_shape, dtype, where)
    n_chunks = math.prod(s // c for s, c in zip(shard_shape, chunk_shape, strict=True))
    if n_chunks > MAX_CHUNKS_PER_SHARD:
        raise _fail(where, f"{n_chunks} inner chunks per shard exceeds the cap "
                    f"{MAX_CHUNKS_PER_SHARD}")
    location = config.get("index_location", "end")
    if location not in ("start", "end"):
        raise _fail(where, f"index_location must be 'start' or 'end', got {location!r}")
    index_codecs = config.get("index_codecs") or [
        {"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
    names = [c.get("name") for c in index_codecs]
    if names not in (["bytes"], ["bytes", "crc32c"]):
        raise UnsupportedCodecError(f"{where}: shard index codecs {names}")
    endian = (index_codecs[0].get("configuration") or {}).get("endian", "little")
    inner = config.get("codecs")
    if not isinstance(inner, list) or not inner:
        raise _fail(where, "sharding codecs must be a non-empty list")
    return ShardingSpec(
        chunk_shape=chunk_shape,
        codecs=parse_v3_codecs(inner, len(shard_shape), where),
        index_location=location,
        index_checksum=names[-1] == "crc32c",
        index_endian=endian,
    )


def parse_v2(doc: dict[str, Any], where: str, attributes: dict[str, Any] | None = None
             ) -> ArrayMeta:
    """Parse a Zarr v2 ``.zarray`` (OME-Zarr 0.4 data)."""
    if doc.get("zarr_format") != 2:
        raise _fail(where, f"zarr_format must be 2, got {doc.get('zarr_format')!r}")
    shape = _shape(doc.get("shape"), where, "shape", positive=False)
    chunks = _shape(doc.get("chunks"), where, "chunks", positive=True)
    if len(chunks) != len(shape):
        raise _fail(where, f"chunks {chunks} does not match the rank of shape {shape}")
    if doc.get("dtype") is None:  # np.dtype(None) would silently be float64
        raise _fail(where, "dtype is missing (every Zarr v2 array names its dtype)")
    try:
        stored = np.dtype(doc.get("dtype"))
    except TypeError as e:
        raise _fail(where, f"dtype {doc.get('dtype')!r} is not a numpy dtype") from e
    if stored.kind not in "biufc" or stored.fields is not None:
        raise UnsupportedCodecError(f"{where}: dtype {stored}")
    dtype = stored.newbyteorder("=")
    _check_chunk_bytes(chunks, dtype, where)
    order = doc.get("order", "C")
    if order not in ("C", "F"):
        raise _fail(where, f"order must be 'C' or 'F', got {order!r}")
    sep = doc.get("dimension_separator", ".")
    if sep not in ("/", "."):
        raise _fail(where, f"dimension_separator {sep!r} is not '/' or '.'")
    return ArrayMeta(
        zarr_format=2, shape=shape, dtype=dtype,
        fill_value=parse_fill_value(doc.get("fill_value"), dtype, where),
        grid_shape=chunks, key_prefix="", key_separator=sep,
        codecs=parse_v2_codecs(doc, stored, len(shape), where), sharding=None,
        attributes=attributes or {},
    )
