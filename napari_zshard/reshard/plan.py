"""Planning a reshard: validate the request, lay out each destination array, and preview what
the new layout costs a viewer and what the job costs, before anything is written."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..engine import ArrayMeta, CoalescePolicy, ShardedArray
from ..errors import StoreError, ZShardError
from ..store import normalize_url, open_store
from .cost import Sample, ViewCost, estimated_cost, measure_sample, measured_cost, view_regions
from .errors import DestinationError, LayoutError
from .journal import DestinationState, inspect_destination
from .layout import (
    CodecChoice,
    Shape,
    describe_layout,
    fit_layout,
    layer_depth,
    parse_shape,
    suggest_layout,
    target_metadata,
)
from .passthrough import passthrough_mode
from .source import SourceTree, open_source

log = logging.getLogger(__name__)

LevelLayout = tuple[Sequence[int] | str | None, Sequence[int] | str | None]


@dataclass
class ArrayPlan:
    """One array of the source and its destination layout, with the view costs of both."""

    path: str  # relative to the source/destination root; "" when the source is one array
    level: int
    source: ShardedArray
    target: ArrayMeta
    zarr_json: bytes
    depth: int  # rows along axis 0 a shard task streams at a time
    target_ratio: float  # (estimated) compression ratio of the destination chunks
    passthrough: str | None = None  # stored chunks copied as they are (see passthrough.py)
    views: dict[str, tuple[ViewCost, ViewCost]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path or "array"

    @property
    def nbytes(self) -> int:
        return self.source.nbytes

    @property
    def n_shards(self) -> int:
        return math.prod(self.target.grid_extent())

    @property
    def source_objects(self) -> int:
        return math.prod(self.source.meta.grid_extent())

    @property
    def source_index_bytes(self) -> int:
        spec = self.source.meta.sharding
        return self.source_objects * spec.index_nbytes(self.source.meta.grid_shape) if spec \
            else 0

    @property
    def target_index_bytes(self) -> int:
        assert self.target.sharding is not None
        return self.n_shards * self.target.sharding.index_nbytes(self.target.grid_shape)

    @property
    def bytes_to_write(self) -> int:
        """Estimated: the pixels at the measured compression ratio, plus the shard indexes."""
        return round(self.nbytes / self.target_ratio) + self.target_index_bytes


@dataclass
class ReshardPlan:
    """What :func:`plan_reshard` found and decided; :meth:`table` shows it, :meth:`run`
    executes it."""

    source: str
    destination: str
    codec: CodecChoice
    arrays: list[ArrayPlan]
    groups: dict[str, dict[str, Any]]  # group path -> attributes, deepest first, root last
    state: DestinationState
    sample: Sample | None = None
    notes: list[str] = field(default_factory=list)
    dst_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_shards(self) -> int:
        return sum(a.n_shards for a in self.arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def bytes_to_write(self) -> int:
        return sum(a.bytes_to_write for a in self.arrays)

    @property
    def estimated_seconds(self) -> float | None:
        """Reading, decoding and encoding everything at the sample's speed (writes and the
        parallelism of several shard tasks are not in it)."""
        if self.sample is None or not self.sample.pixels:
            return None
        return self.sample.seconds * self.nbytes / self.sample.pixels

    def suggest(self) -> dict[str, tuple[Shape, Shape]]:
        """A layout per array that streams XY planes well (see :func:`suggest_layout`)."""
        return {a.path: suggest_layout(a.source.shape, a.source.dtype) for a in self.arrays}

    def run(self, **options: Any) -> Iterator:
        """Execute the plan; see :func:`~napari_zshard.reshard.run_reshard` for options."""
        from .run import run_reshard

        return run_reshard(self, **options)

    def table(self) -> str:
        """The plan as a readable text table, one block per array."""
        from .report import plan_table

        return plan_table(self)


def _level_layouts(levels: Sequence[LevelLayout | None] | None
                   ) -> list[tuple[Shape | None, Shape | None] | None]:
    out: list[tuple[Shape | None, Shape | None] | None] = []
    for i, entry in enumerate(levels or []):
        if entry is None:
            out.append(None)
            continue
        chunks, shards = entry
        out.append((parse_shape(chunks, f"level {i} chunk shape"),
                    parse_shape(shards, f"level {i} shard shape")))
    return out


def check_locations(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """The destination may be neither the source nor inside it, nor contain it."""
    source, target = normalize_url(src), normalize_url(dst)
    if target == source:
        raise DestinationError(f"the destination {target} is the source; reshard into a new "
                               "location (the source is never modified)")
    if target.startswith(source.rstrip("/") + "/"):
        raise DestinationError(f"the destination {target} lies inside the source {source}; "
                               "choose a location outside it")
    if source.startswith(target.rstrip("/") + "/"):
        raise DestinationError(f"the source {source} lies inside the destination {target}; "
                               "choose a location that does not contain the source")


def plan_reshard(src: str | os.PathLike, dst: str | os.PathLike, *,
                 chunks: Sequence[int] | str | None = None,
                 shards: Sequence[int] | str | None = None,
                 codec: str = "zstd", codec_level: int = 3, checksum: bool = True,
                 levels: Sequence[LevelLayout | None] | None = None,
                 src_options: dict[str, Any] | None = None,
                 dst_options: dict[str, Any] | None = None,
                 measure: bool = True, recompress: bool = False,
                 coalesce: CoalescePolicy | None = None) -> ReshardPlan:
    """Plan rewriting the store at ``src`` into ``dst`` with new chunk and shard shapes.

    Parameters
    ----------
    src, dst
        Paths or URLs. ``src`` is a Zarr array, or an OME-Zarr image (every level and every
        label image is resharded). ``dst`` may not be ``src``, lie inside it or contain it.
    chunks, shards
        Inner chunk and shard shapes (one value per axis; ``"64,64,64"`` works too). Either
        may be None: the suggested layout (:func:`suggest_layout`). They are clipped to each
        array, so one shape serves every pyramid level.
    codec, codec_level, checksum
        Compression of the destination's inner chunks (``zstd``, ``blosc``, ``gzip`` or
        ``none``) and whether each chunk carries a crc32c.
    levels
        Per pyramid level, ``(chunks, shards)`` overriding ``chunks``/``shards`` (None entries
        and levels past the end use them). Applies to the image and its label images alike.
    measure
        Reshard a sample in memory to estimate the time and the destination's compression.
    recompress
        Decode and re-encode every chunk even where the chunk shape and codecs do not change
        (by default such chunks are copied as stored, after checking their crc32c).
        Where only the codecs change, chunks are re-encoded one by one either way.
    coalesce
        Gap and size limits the viewer merges byte ranges with (for the view costs).

    Raises
    ------
    DestinationError, LayoutError, SourceError
        With a message saying what to change.
    """
    check_locations(src, dst)
    chunks_default = parse_shape(chunks, "chunk shape")
    shards_default = parse_shape(shards, "shard shape")
    per_level = _level_layouts(levels)
    codec_choice = CodecChoice(codec, codec_level, checksum)
    if codec not in ("zstd", "blosc", "gzip", "none"):
        raise ValueError(f"codec must be 'zstd', 'blosc', 'gzip' or 'none', not {codec!r}")
    tree = open_source(src, src_options)
    n_levels = 1 + max((a.level for a in tree.arrays), default=0)
    if len(per_level) > n_levels:
        raise LayoutError(f"{len(per_level)} per-level layouts given, but {tree.url} has "
                          f"{n_levels} level{'s' if n_levels != 1 else ''}")
    arrays = [_plan_array(a, chunks_default, shards_default, per_level, codec_choice)
              for a in tree.arrays]
    for a in arrays:
        if not a.source.uses_fallback:
            a.passthrough = passthrough_mode(a.source.meta, a.target, recompress=recompress)
    try:
        target = open_store(dst, dst_options)
        state = inspect_destination(target, {a.path: a.zarr_json for a in arrays})
    except StoreError as e:
        raise DestinationError(f"cannot use the destination {os.fspath(dst)}: {e}") from e
    plan = ReshardPlan(tree.url, target.url, codec_choice, arrays, tree.groups, state,
                       dst_options=dict(dst_options or {}))
    _price(plan, tree, measure, coalesce or CoalescePolicy())
    return plan


def _plan_array(item, chunks: Shape | None, shards: Shape | None, per_level, codec: CodecChoice
                ) -> ArrayPlan:
    arr = item.array
    if item.level < len(per_level) and per_level[item.level] is not None:
        level_chunks, level_shards = per_level[item.level]
        chunks, shards = level_chunks or chunks, level_shards or shards
    where = f"array {item.path}" if item.path else "the array"
    fitted_chunks, fitted_shards = fit_layout(arr.shape, arr.dtype, chunks, shards, where=where)
    raw, meta = target_metadata(shape=arr.shape, dtype=arr.dtype, fill_value=arr.fill_value,
                                chunks=fitted_chunks, shards=fitted_shards, codec=codec,
                                dimension_names=item.dimension_names,
                                attributes=dict(arr.meta.attributes))
    return ArrayPlan(item.path, item.level, arr, meta, raw, layer_depth(meta, arr.meta), 1.0)


def _price(plan: ReshardPlan, tree: SourceTree, measure: bool, policy: CoalescePolicy) -> None:
    """Fill in the sample, the compression ratios and the view costs of every array."""
    first = plan.arrays[0]
    if measure:
        try:
            plan.sample = measure_sample(first.path, first.source, first.target, first.depth,
                                         passthrough=first.passthrough)
        except ZShardError as e:  # a corrupt or unreachable part: the plan still stands
            plan.notes.append(f"no speed sample: {e}")
            log.warning("reshard plan: no speed sample: %s", e)
    sample = plan.sample
    # How the new codec and chunk size change compression, measured on the sample, applied
    # to each array's own measured ratio (labels compress far better than images).
    change = sample.target_ratio / sample.source_ratio \
        if sample and sample.target_ratio and sample.source_ratio else 1.0
    for a in plan.arrays:
        regions = view_regions(a.source.shape)
        measured = {name: measured_cost(a.source, region, policy)
                    for name, region in regions.items()}
        source_ratio = measured["plane"][1] or (sample.source_ratio if sample else None) or 1.0
        a.target_ratio = sample.target_ratio if a is first and sample and sample.target_ratio \
            else source_ratio * change
        for name, region in regions.items():
            cost, _ = measured[name]
            if cost.estimated:
                cost = estimated_cost(a.source.meta, region, source_ratio, policy)
            a.views[name] = (cost, estimated_cost(a.target, region, a.target_ratio, policy))


__all__ = ["ArrayPlan", "ReshardPlan", "check_locations", "describe_layout", "plan_reshard",
           "suggest_layout"]
