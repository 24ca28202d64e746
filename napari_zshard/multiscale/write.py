"""Writing images as sharded OME-Zarr 0.5 pyramids: streaming, shard by shard, in parallel.

Level 0 is written from the source (numpy, dask or any sliceable array) one destination shard
at a time; each coarser level is computed from the level just written, again one destination
shard at a time and in slabs, so memory holds a few shards per worker whatever the volume size.
A local store is written into a hidden sibling folder and renamed into place at the end; on an
object store the root ``zarr.json`` (which makes the image visible) is written last. Either way
a cancelled or crashed save never leaves a store that claims to be complete.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine import EngineCache, ShardedArray
from ..engine.create import SUPPORTED_KINDS, array_metadata, default_layout
from ..engine.metadata import ArrayMeta, parse_json, parse_v3
from ..engine.shard_tasks import ShardTaskRunner
from ..engine.shard_writer import iter_shards, write_shard
from ..errors import MetadataError, StoreError
from ..ome import Axis, Channel, Dataset, ImageLabel, Multiscale
from ..ome.omero import image_omero
from ..store import Store, validate_name
from .downsample import COARSEST_EDGE, METHODS, downsample, level_factors
from .staging import disk_full, staged_target

log = logging.getLogger(__name__)


@dataclass
class ImageSpec:
    """What to write besides the pixels: how the image is named, placed and shown."""

    name: str = "image"
    axes: Sequence[Axis] | None = None  # default: last axes z/y/x, earlier t/c
    scale: Sequence[float] | None = None
    translate: Sequence[float] | None = None
    kind: str = "image"  # "image" | "labels"
    contrast_limits: tuple[float, float] | None = None
    channels: list[Channel] = field(default_factory=list)
    image_label: ImageLabel | None = None
    method: str | None = None  # downsampling; default mean for images, mode for labels


@dataclass
class WriteOptions:
    """Layout and behaviour of a save (every field optional)."""

    chunks: Sequence[int] | None = None
    shards: Sequence[int] | None = None
    compressor: str = "zstd"
    level: int = 3
    checksum: bool = True
    levels: int | None = None  # number of pyramid levels; None: down to a 3D-viewable level
    overwrite: bool = False
    workers: int | None = None  # threads; default: one per core
    client: Any = None  # a dask.distributed Client: run the shard tasks on its cluster


@dataclass(frozen=True)
class WriteProgress:
    done: int
    total: int
    message: str


#: Axis names by rank: 4D is a time series of volumes (a napari layer has no channel axis).
DEFAULT_AXIS_NAMES = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}
_AXIS_KINDS = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def default_axes(ndim: int) -> tuple[Axis, ...]:
    names = DEFAULT_AXIS_NAMES.get(ndim) or tuple(f"dim_{i}" for i in range(ndim))
    return tuple(Axis(n, _AXIS_KINDS.get(n)) for n in names)


def _check_source(data: Any, kind: str) -> None:
    dtype = np.dtype(data.dtype)
    if dtype.kind not in SUPPORTED_KINDS:
        raise MetadataError(f"cannot save {kind} data of dtype {dtype}: only booleans, integers "
                            "and floating point numbers can be stored")
    if math.prod(data.shape) == 0:
        raise MetadataError(f"cannot save an empty {kind} (shape {tuple(data.shape)})")
    if not 2 <= len(data.shape) <= 5:
        raise MetadataError(f"cannot save {len(data.shape)}D data: OME-Zarr images have 2 to 5 "
                            "axes")


# -- the tasks (module-level functions: they travel to dask workers) -------------------------
def _write_from_source(store: Store, meta: ArrayMeta, source: Any, shard,
                       sliced: bool = False) -> int:
    """One shard of a level from its source (``sliced``: ``source`` is the shard's region)."""
    block = source if sliced else source[meta.layout.shard_region(shard)]
    if hasattr(block, "compute"):
        block = block.compute(scheduler="sync")  # parallelism comes from the shard tasks
    return write_shard(store, meta, shard, np.asarray(block, dtype=meta.dtype))


def write_downsampled_shard(store: Store, meta: ArrayMeta, previous: Store,
                            previous_meta: ArrayMeta, factors, method: str, shard) -> int:
    """Write one shard of a coarser level from the level before it (``previous``, described
    by ``previous_meta``: its zarr.json may not be written yet), in slabs along axis 0;
    ``method`` is ``"mean"`` or ``"mode"``. Returns the bytes written."""
    # A cache of its own: the level was written moments ago under a name the process-wide
    # cache may know from before (an object store overwritten in place), each of its chunks
    # is read once, and a save should not push out what the viewer has cached. Opened from
    # its metadata: its zarr.json is not written before the whole save is done.
    source = ShardedArray(previous, previous_meta, readahead=False, cache=EngineCache(0))
    region = meta.layout.shard_region(shard)
    out = np.empty(tuple(s.stop - s.start for s in region), dtype=meta.dtype)
    # slabs one source chunk deep along axis 0: little memory, and no chunk decoded twice
    step = max(1, -(-source.meta.chunk_shape[0] // factors[0]))
    for lo in range(region[0].start, region[0].stop, step):
        hi = min(lo + step, region[0].stop)
        piece = (slice(lo, hi), *region[1:])
        src = tuple(slice(s.start * f, min(n, s.stop * f))
                    for s, f, n in zip(piece, factors, source.shape, strict=True))
        out[lo - region[0].start:hi - region[0].start] = downsample(source[src], factors, method)
    return write_shard(store, meta, shard, out)


# -- the run ----------------------------------------------------------------------------------


def _level_shapes(shape, factors_list):
    shapes = [tuple(shape)]
    for factors in factors_list:
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], factors, strict=True)))
    return shapes


def _layout(shape, dtype, options: WriteOptions):
    chunks, shards = default_layout(shape, dtype)
    for name in ("chunks", "shards"):
        given = getattr(options, name)
        if given is not None and len(given) != len(shape):
            raise ValueError(f"{name} {tuple(given)} do not match the {len(shape)}D data")
    if options.chunks is not None:
        chunks = tuple(min(int(c), n) for c, n in zip(options.chunks, shape, strict=True))
        shards = tuple(c * max(1, min(-(-s // c), -(-n // c)))
                       for c, s, n in zip(chunks, shards, shape, strict=True))
    if options.shards is not None:
        shards = tuple(min(int(s), -(-n // c) * c)
                       for s, c, n in zip(options.shards, chunks, shape, strict=True))
    return tuple(chunks), tuple(shards)


@dataclass
class _ImagePlan:
    """One multiscale image, its arrays created and its shard tasks known."""

    name: str
    store: Store
    levels_data: list[Any]
    given: bool  # the caller supplied every level
    metas: list[ArrayMeta]
    stores: list[Store]
    raws: list[bytes]  # each level's zarr.json, written when the whole save is done
    factors: list[tuple[int, ...]]
    method: str
    attributes: dict[str, Any]
    spec: ImageSpec
    axes: tuple[Axis, ...]

    @property
    def n_shards(self) -> int:
        return sum(math.prod(m.grid_extent()) for m in self.metas)


def plan_image(store: Store, levels_data: Sequence[Any], spec: ImageSpec,
               options: WriteOptions, *, like: _ImagePlan | None = None) -> _ImagePlan:
    """Create the level arrays of one image in ``store`` and describe the work to fill them.

    ``like``: the image a label image annotates. OME-Zarr wants a label image's levels to
    match its image's (ome-zarr-models refuses a different count), so a label image of the
    image's size gets the image's level shapes, built from its level 0 when its own differ.
    """
    source = levels_data[0]
    ndim = len(source.shape)
    axes = tuple(spec.axes) if spec.axes else default_axes(ndim)
    if len(axes) != ndim:
        raise MetadataError(f"{len(axes)} axis names for {ndim}D data")
    scale = tuple(float(s) for s in (spec.scale or (1.0,) * ndim))
    given = len(levels_data) > 1
    like_shapes = [tuple(m.shape) for m in like.metas] if like is not None else None
    if like is not None and like_shapes and tuple(source.shape) == like_shapes[0] and \
            [tuple(d.shape) for d in levels_data] != like_shapes:
        levels_data, given = [source], False
        factors_list, shapes = list(like.factors), like_shapes
    elif given:
        factors_list = [tuple(max(1, round(a / b)) for a, b in
                              zip(levels_data[i].shape, levels_data[i + 1].shape, strict=True))
                        for i in range(len(levels_data) - 1)]
        shapes = [tuple(d.shape) for d in levels_data]
    else:
        # an explicit number of levels is honoured even below a 3D-viewable size
        factors_list = level_factors(source.shape, scale,
                                     spatial=[a.type == "space" for a in axes],
                                     coarsest_edge=1 if options.levels else COARSEST_EDGE)
        if options.levels is not None:
            factors_list = factors_list[:max(0, options.levels - 1)]
        shapes = _level_shapes(source.shape, factors_list)
    dtype = np.dtype(source.dtype)
    metas, stores, raws = [], [], []
    for i, shape in enumerate(shapes):
        chunks, shards = _layout(shape, dtype, options)
        if shards is not None and any(s % c for s, c in zip(shards, chunks, strict=True)):
            raise ValueError(f"shard shape {tuple(shards)} must be a multiple of the chunk "
                             f"shape {tuple(chunks)}")
        # the level's zarr.json is only described here: _write_into writes it once the whole
        # save is done, so a level of an interrupted save is no array (it would read as fill
        # value where shards were never written)
        level_store = store.child(str(i))
        raw = array_metadata(shape=shape, dtype=dtype, chunks=chunks, shards=shards,
                             compressor=options.compressor, level=options.level,
                             checksum=options.checksum, dimension_names=[a.name for a in axes])
        where = f"{level_store.url}/zarr.json"
        metas.append(parse_v3(parse_json(raw, where), where))
        stores.append(level_store)
        raws.append(raw)
    return _ImagePlan(
        name=spec.name, store=store, levels_data=list(levels_data), given=given, metas=metas,
        stores=stores, raws=raws, factors=factors_list,
        method=spec.method or ("mode" if spec.kind == "labels" else "mean"),
        attributes=_group_attributes(spec, axes, scale, shapes, dtype), spec=spec, axes=axes)


def _group_attributes(spec: ImageSpec, axes, scale, shapes, dtype) -> dict[str, Any]:
    ndim = len(axes)
    cumulative = [1.0] * ndim
    datasets = []
    base = tuple(spec.translate) if spec.translate else (0.0,) * ndim
    for i, shape in enumerate(shapes):
        if i:
            cumulative = [c * (a / b) for c, a, b in
                          zip(cumulative, shapes[i - 1], shape, strict=True)]
        level_scale = tuple(s * c for s, c in zip(scale, cumulative, strict=True))
        # a coarse voxel's centre sits half a (coarse - fine) voxel further along each axis
        translation = tuple(b + (c - 1) / 2 * s
                            for b, c, s in zip(base, cumulative, scale, strict=True))
        datasets.append(Dataset(str(i), level_scale, translation if any(translation) else None))
    ms = Multiscale(axes=tuple(axes), datasets=tuple(datasets), name=spec.name)
    ome: dict[str, Any] = {"version": "0.5", "multiscales": [ms.to_json()]}
    if spec.kind == "labels":
        ome["image-label"] = (spec.image_label or ImageLabel()).to_json()
    elif spec.channels or spec.contrast_limits:
        ome["omero"] = _omero(spec, axes, shapes[0], dtype)  # None: known once written
    attributes: dict[str, Any] = {"ome": ome}
    if spec.contrast_limits is not None:
        attributes["napari_zshard"] = {"contrast_limits": list(spec.contrast_limits)}
    return attributes


def _omero(spec: ImageSpec, axes, shape, dtype, data_range: tuple[float, float] | None = None
           ) -> dict[str, Any] | None:
    caxis = next((i for i, a in enumerate(axes) if a.type == "channel"), None)
    return image_omero(spec.channels, n=1 if caxis is None else shape[caxis], name=spec.name,
                       window=spec.contrast_limits, dtype=dtype, data_range=data_range)


def _finish_omero(plan: _ImagePlan) -> None:
    """Fill the ``omero`` block a float image without display window left open, from the
    range of its coarsest level (just written, small)."""
    ome = plan.attributes["ome"]
    if "omero" not in ome or ome["omero"] is not None:
        return
    # (its zarr.json is not written yet: the save is not done)
    coarsest = ShardedArray(plan.stores[-1], plan.metas[-1], readahead=False,
                            cache=EngineCache(0))
    values = np.asarray(coarsest[...], dtype=np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ome["omero"] = _omero(plan.spec, plan.axes, plan.metas[0].shape, plan.metas[0].dtype,
                          data_range=(lo, hi if hi > lo else lo + 1))


def run_plan(plan: _ImagePlan, runner: ShardTaskRunner) -> Iterator[str]:
    """Fill the levels of ``plan`` shard by shard, yielding a message per finished shard."""
    for i, (meta, level_store) in enumerate(zip(plan.metas, plan.stores, strict=True)):
        shards = list(iter_shards(meta))
        if i == 0 or plan.given:
            source = plan.levels_data[i]
            args: list[tuple[Any, ...]]  # _write_from_source's arguments, one task each
            if runner.client is not None and isinstance(source, np.ndarray):
                # each worker gets its shard's region, not a copy of the whole array per task
                args = [(level_store, meta, source[meta.layout.shard_region(s)], s, True)
                        for s in shards]
            else:
                args = [(level_store, meta, source, s) for s in shards]
            tasks = runner.run(_write_from_source, args)
        else:
            tasks = runner.run(write_downsampled_shard,
                               [(level_store, meta, plan.stores[i - 1], plan.metas[i - 1],
                                 plan.factors[i - 1], plan.method, s) for s in shards])
        for _ in tasks:
            yield f"{plan.name}: level {i} of {len(plan.metas) - 1}"


def group_json(attributes: dict[str, Any]) -> bytes:
    """A group's ``zarr.json``, produced by zarr-python's metadata model."""
    import zarr
    from zarr.storage import MemoryStore

    docs: dict = {}
    zarr.create_group(MemoryStore(docs), attributes=attributes, zarr_format=3)
    return docs["zarr.json"].to_bytes()


def _write_into(store: Store, levels: list[Any], spec: ImageSpec,
                labels: dict[str, tuple[Any, ImageSpec]],
                options: WriteOptions) -> Iterator[WriteProgress]:
    """Plan and write every image into ``store``, its root ``zarr.json`` last."""
    runner = ShardTaskRunner(workers=options.workers, client=options.client,
                             name="zshard-save")
    try:  # in-flight shard tasks end before a failed save is cleaned up
        image = plan_image(store, levels, spec, options)
        plans = []
        label_root = store.child("labels")
        for name, (label_data, label_spec) in labels.items():
            label_levels = list(label_data) if isinstance(label_data, (list, tuple)) \
                else [label_data]
            plans.append(plan_image(label_root.child(name), label_levels, label_spec, options,
                                    like=image))
        plans.append(image)  # written last: its root zarr.json makes the save visible
        total = sum(p.n_shards for p in plans)
        done = 0
        for plan in plans:
            for message in run_plan(plan, runner):
                done += 1
                yield WriteProgress(done, total, message)
            _finish_omero(plan)
        # every shard is in: now the metadata, levels first, the root last
        for plan in plans:
            for level_store, raw in zip(plan.stores, plan.raws, strict=True):
                level_store.write("zarr.json", raw)
            if plan.store is not store:
                plan.store.write("zarr.json", group_json(plan.attributes))
        if labels:
            label_root.write("zarr.json", group_json(
                {"ome": {"version": "0.5", "labels": list(labels)}}))
        store.write("zarr.json", group_json(plans[-1].attributes))  # last: now complete
    finally:
        runner.close()


def write_image(url: str | os.PathLike, data: Any | Sequence[Any], spec: ImageSpec | None = None,
                *, labels: dict[str, tuple[Any, ImageSpec]] | None = None,
                options: WriteOptions | None = None,
                storage_options: dict[str, Any] | None = None) -> Iterator[WriteProgress]:
    """Save ``data`` (an array, or a list of pyramid levels largest first) and optional label
    images as a sharded OME-Zarr 0.5 image at ``url``; yields progress as shards complete.

    Closing the generator early (a cancel) stops the work and leaves no complete-looking store.
    """
    spec = spec or ImageSpec()
    options = options or WriteOptions()
    levels = list(data) if isinstance(data, (list, tuple)) else [data]
    _check_source(levels[0], spec.kind)
    if spec.method is not None and spec.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {spec.method!r}")
    if options.levels is not None and options.levels < 1:
        raise ValueError(f"levels must be at least 1, not {options.levels}")
    for name, (label_data, _) in (labels or {}).items():
        validate_name(name, what="label name")
        _check_source(label_data[0] if isinstance(label_data, (list, tuple)) else label_data,
                      "labels")
    try:
        with staged_target(url, options, storage_options) as store:
            yield from _write_into(store, levels, spec, labels or {}, options)
    except (OSError, StoreError) as e:
        if disk_full(e):
            raise StoreError(f"cannot save {os.fspath(url)}: the disk is full (no space left on "
                             "the device). Nothing was saved; free some space or save "
                             "elsewhere.") from e
        if isinstance(e, StoreError):
            raise
        raise StoreError(f"cannot save {os.fspath(url)}: {e.strerror or e}") from e


def save_image(url: str | os.PathLike, data: Any, spec: ImageSpec | None = None, *,
               progress: bool = False, **kwargs: Any) -> str:
    """:func:`write_image` run to the end (with a tqdm bar when ``progress``); returns the URL."""
    steps = write_image(url, data, spec, **kwargs)
    if progress:
        from tqdm import tqdm

        bar = None
        for p in steps:
            if bar is None:
                bar = tqdm(total=p.total, unit="shard", desc="saving")
            bar.update(p.done - bar.n)
            bar.set_postfix_str(p.message, refresh=False)
        if bar is not None:
            bar.close()
    else:
        for _ in steps:
            pass
    return os.fspath(url)
