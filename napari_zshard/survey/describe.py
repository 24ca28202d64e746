"""``zshard info`` without the printing: a summary of each array, from metadata and the listing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..engine.codecs import BloscCodec, ChunkCodecs, Crc32cCodec, ZlibCodec, ZstdCodec
from .arrays import ArrayNode, Survey


@dataclass(frozen=True)
class ArrayInfo:
    """What one array is and how much of it is stored.

    ``objects_*`` count shards for sharded arrays and chunks otherwise. The counts of stored
    objects and bytes are None when the store cannot be listed. ``uncompressed_bytes`` is the
    size of the region the stored objects cover (clipped to the array), so
    ``compression_ratio`` = ``uncompressed_bytes / bytes_stored`` whatever the fraction stored.
    """

    path: str
    url: str
    zarr_format: int | None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    chunk_shape: tuple[int, ...] | None = None  # the decode unit (inner chunk when sharded)
    shard_shape: tuple[int, ...] | None = None  # None when not sharded
    codecs: tuple[str, ...] = ()  # encode order, e.g. ("bytes(little)", "zstd(3)", "crc32c")
    index_location: str | None = None
    index_checksum: bool | None = None
    fill_value: Any = None
    nbytes: int | None = None  # the whole array, uncompressed
    objects_possible: int | None = None
    objects_present: int | None = None
    bytes_stored: int | None = None
    uncompressed_bytes: int | None = None
    compression_ratio: float | None = None
    error: str | None = None  # why the engine cannot read this array

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples as lists, NaN/Infinity fill values as strings)."""
        out = asdict(self)
        for name in ("shape", "chunk_shape", "shard_shape", "codecs"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out


def codec_chain(codecs: ChunkCodecs) -> tuple[str, ...]:
    """The codecs of one chunk in encode order, short and readable."""
    out = []
    if codecs.order is not None:
        out.append(f"transpose({','.join(map(str, codecs.order))})")
    out.append(f"bytes({codecs.endian})")
    out += [getattr(f, "codec_id", type(f).__name__.lower()) for f in codecs.filters]
    for c in codecs.bytes_codecs:
        if isinstance(c, ZstdCodec):
            out.append(f"zstd({c.level}{', checksum' if c.checksum else ''})")
        elif isinstance(c, BloscCodec):
            out.append(f"blosc({c.cname}, {c.clevel}, {c.shuffle})")
        elif isinstance(c, ZlibCodec):
            out.append(f"{'gzip' if c.gzip else 'zlib'}({c.level})")
        elif isinstance(c, Crc32cCodec):
            out.append("crc32c")
        else:
            out.append(c.name or type(c).__name__)
    return tuple(out)


def _json_scalar(value: Any) -> Any:
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, complex):
        return [_json_scalar(value.real), _json_scalar(value.imag)]
    return value


def covered_bytes(node: ArrayNode, coords: tuple[int, ...]) -> int:
    """Uncompressed bytes of the array region that the object at ``coords`` holds."""
    meta = node.meta
    assert meta is not None
    n = 1
    for c, g, s in zip(coords, meta.grid_shape, meta.shape, strict=True):
        n *= min(s, (c + 1) * g) - c * g
    return n * meta.dtype.itemsize


def describe_array(node: ArrayNode) -> ArrayInfo:
    """Summarise one array of a survey."""
    meta = node.meta
    if meta is None:
        return ArrayInfo(path=node.path, url=node.url, zarr_format=None, error=str(node.error))
    sharding = meta.sharding
    present = stored = uncompressed = ratio = None
    if node.objects is not None:
        present = len(node.objects)
        stored = sum(o.size or 0 for o in node.objects)
        uncompressed = sum(covered_bytes(node, o.coords) for o in node.objects)
        ratio = uncompressed / stored if stored else None
    return ArrayInfo(
        path=node.path, url=node.url, zarr_format=meta.zarr_format, shape=meta.shape,
        dtype=str(meta.dtype), chunk_shape=meta.chunk_shape,
        shard_shape=meta.grid_shape if sharding else None,
        codecs=codec_chain(meta.chunk_codecs),
        index_location=sharding.index_location if sharding else None,
        index_checksum=sharding.index_checksum if sharding else None,
        fill_value=_json_scalar(meta.fill_value),
        nbytes=math.prod(meta.shape) * meta.dtype.itemsize,
        objects_possible=node.possible_objects, objects_present=present, bytes_stored=stored,
        uncompressed_bytes=uncompressed, compression_ratio=ratio,
    )


def describe(found: Survey) -> list[ArrayInfo]:
    """Summarise every array of a survey (see :func:`~napari_zshard.survey.survey`)."""
    return [describe_array(node) for node in found.arrays]
