"""The destination layout of each array: chunk and shard shapes checked, fitted to the array,
and written down as the new ``zarr.json``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.create import array_metadata, default_layout
from ..engine.metadata import ArrayMeta, parse_json, parse_v3
from .errors import LayoutError

Shape = tuple[int, ...]

#: A layer streamed through one shard task is at most this big (decoded), whatever the shard.
MAX_LAYER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class CodecChoice:
    """How the destination's inner chunks are compressed."""

    compressor: str = "zstd"  # "zstd" | "blosc" | "gzip" | "none"
    level: int = 3
    checksum: bool = True

    def __str__(self) -> str:
        name = self.compressor if self.compressor == "none" else f"{self.compressor}({self.level})"
        return name + (" + crc32c" if self.checksum else "")


def suggest_layout(shape: Sequence[int], dtype: Any) -> tuple[Shape, Shape]:
    """Chunk and shard shapes that stream XY planes well (the engine's default layout):
    64³ inner chunks (256² in 2D) in shards of about 32 MB, grown along y and x first."""
    return default_layout(shape, np.dtype(dtype))


def parse_shape(value: str | Sequence[int] | None, what: str) -> Shape | None:
    """``"64,64,64"``, ``"64x64x64"`` or a sequence of integers; None/""/"auto" → None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "auto"):
            return None
        try:
            value = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise LayoutError(f"{what} must be integers like 64,64,64, not {text!r}") from None
    shape = tuple(int(v) for v in value)
    if not shape or any(v <= 0 for v in shape):
        raise LayoutError(f"{what} must be positive integers, not {shape}")
    return shape


def parse_level_layouts(texts: str | Sequence[str] | None
                        ) -> list[tuple[str | None, str | None] | None] | None:
    """Per pyramid level, ``"CHUNKS/SHARDS"`` (``"32,32,32/512,512,512"``; either side may be
    empty for the default, ``"-"`` keeps the default for that level) → the ``levels`` argument
    of :func:`~napari_zshard.reshard.plan_reshard`. A string holds the levels separated by
    blanks or semicolons. None or nothing: None."""
    if texts is None:
        return None
    if isinstance(texts, str):
        texts = texts.replace(";", " ").split()
    levels: list[tuple[str | None, str | None] | None] = []
    for i, text in enumerate(texts):
        if text == "-":
            levels.append(None)
            continue
        chunks, sep, shards = text.partition("/")
        if not sep:
            raise LayoutError(f"level {i}: give CHUNKS/SHARDS (like 32,32,32/512,512,512) or "
                              f"'-' for the default, not {text!r}")
        parse_shape(chunks, f"level {i} chunk shape")  # checked here, with the level named
        parse_shape(shards, f"level {i} shard shape")
        levels.append((chunks or None, shards or None))
    return levels or None


def fit_layout(shape: Shape, dtype: np.dtype, chunks: Shape | None, shards: Shape | None, *,
               where: str) -> tuple[Shape, Shape]:
    """Check ``chunks``/``shards`` against an array of ``shape`` (None: the suggestion) and
    clip them to it: a chunk never exceeds the array, a shard never exceeds the array rounded
    up to whole chunks."""
    ndim = len(shape)
    for name, given in (("chunk shape", chunks), ("shard shape", shards)):
        if given is not None and len(given) != ndim:
            raise LayoutError(f"{name} {_dims(given)} has {len(given)} values but {where} has "
                              f"{ndim} axes (shape {_dims(shape)}); give one value per axis")
    suggested_chunks, suggested_shards = suggest_layout(shape, dtype)
    chunks = chunks or suggested_chunks
    if shards is None:
        shards = tuple(-(-s // c) * c for s, c in zip(suggested_shards, chunks, strict=True))
    bad = [i for i, (s, c) in enumerate(zip(shards, chunks, strict=True)) if s % c]
    if bad:
        i = bad[0]
        raise LayoutError(f"shard shape {_dims(shards)} is not a multiple of the chunk shape "
                          f"{_dims(chunks)} (axis {i}: {shards[i]} is not a multiple of "
                          f"{chunks[i]}); a shard holds whole chunks")
    fitted_chunks = tuple(max(1, min(c, n)) for c, n in zip(chunks, shape, strict=True))
    fitted_shards = tuple(max(c, min(s, -(-n // c) * c))
                          for s, c, n in zip(shards, fitted_chunks, shape, strict=True))
    return fitted_chunks, fitted_shards


def target_metadata(*, shape: Shape, dtype: np.dtype, fill_value: Any, chunks: Shape,
                    shards: Shape, codec: CodecChoice,
                    dimension_names: Sequence[str | None] | None,
                    attributes: dict[str, Any]) -> tuple[bytes, ArrayMeta]:
    """The new array's ``zarr.json`` (written by zarr-python's model) and its parsed form."""
    raw = array_metadata(shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                         compressor=codec.compressor, level=codec.level,
                         checksum=codec.checksum, fill_value=fill_value,
                         dimension_names=dimension_names, attributes=attributes)
    where = "destination zarr.json"
    return raw, parse_v3(parse_json(raw, where), where)


def layer_depth(target: ArrayMeta, source: ArrayMeta) -> int:
    """Rows along axis 0 that one shard task reads and encodes at a time.

    A layer spans whole source chunks where it can (so no source chunk is decoded twice for
    one shard) and whole destination chunks always, within :data:`MAX_LAYER_BYTES`.
    """
    chunk = target.chunk_shape[0]
    shard = target.grid_shape[0]
    depth = math.lcm(chunk, source.chunk_shape[0])
    row_bytes = math.prod(target.grid_shape[1:]) * target.dtype.itemsize
    if depth > shard or shard % depth or depth * row_bytes > MAX_LAYER_BYTES:
        depth = chunk
    return depth


def describe_layout(chunks: Shape, shards: Shape | None) -> str:
    """``"32x32x32 in 512x512x512"``; ``"32x32x32 (unsharded)"``."""
    return f"{_dims(chunks)} in {_dims(shards)}" if shards else f"{_dims(chunks)} (unsharded)"


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(v) for v in shape)
