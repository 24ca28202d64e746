"""What a typical napari view costs in a layout, and how fast this machine reshards.

A view costs what the engine does for it on a cold cache (without read-ahead): one index
request per shard it touches, then the inner chunks it touches as coalesced byte ranges, then
every stored chunk decoded whole. For the source this is computed from its real shard
indexes; for a layout not written yet, from chunk sizes estimated with a compression ratio.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..engine import CoalescePolicy, EngineCache, ShardedArray
from ..engine.coalesce import coalesce_ranges
from ..engine.metadata import ArrayMeta
from ..engine.reader import RegionReader
from ..engine.shard_index import EMPTY
from ..engine.shard_writer import encode_shard_by_layers
from ..errors import CorruptDataError
from ..store import open_store
from .passthrough import copy_shard

#: The 2D view a plan prices: one full XY plane, and a canvas-sized tile of it.
TILE_EDGE = 512
#: Shard indexes read per view at most; beyond that the view's cost is estimated.
MAX_MEASURED_SHARDS = 256
#: Decoded bytes resharded in memory to measure the speed.
SAMPLE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ViewCost:
    """Requests, bytes fetched and bytes decoded for one view; ``estimated`` when chunk sizes
    were not read from shard indexes."""

    requests: int
    fetched: int
    decoded: int
    estimated: bool = False


def view_regions(shape: Sequence[int]) -> dict[str, tuple[slice, ...]]:
    """The middle XY plane (leading axes at their middle) and a 512² tile at its centre."""
    shape = tuple(shape)
    if len(shape) < 2:
        whole = tuple(slice(0, n) for n in shape)
        return {"plane": whole, "tile": whole}
    lead = tuple(slice(n // 2, n // 2 + 1) for n in shape[:-2])
    plane = (*lead, *(slice(0, n) for n in shape[-2:]))
    tile = (*lead, *(slice(max(0, n // 2 - TILE_EDGE // 2),
                           max(0, n // 2 - TILE_EDGE // 2) + min(n, TILE_EDGE))
                     for n in shape[-2:]))
    return {"plane": plane, "tile": tile}


def touched_chunks(meta: ArrayMeta, region: tuple[slice, ...]
                   ) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Per stored object the region touches: its grid coords and the C-order positions of
    the inner chunks touched in it."""
    if any(s.stop <= s.start for s in region):
        return []
    axes = [np.arange(s.start // c, (s.stop - 1) // c + 1)
            for s, c in zip(region, meta.chunk_shape, strict=True)]
    coords = np.stack([g.ravel() for g in np.meshgrid(*axes, indexing="ij")], axis=1)
    cps = np.array(meta.chunks_per_object)
    shards, inverse = np.unique(coords // cps, axis=0, return_inverse=True)
    flats = np.ravel_multi_index(tuple((coords % cps).T), tuple(cps))
    order = np.argsort(inverse.ravel(), kind="stable")
    bounds = np.cumsum(np.bincount(inverse.ravel(), minlength=len(shards)))[:-1]
    return [(tuple(int(v) for v in s), np.sort(part))
            for s, part in zip(shards, np.split(flats[order], bounds), strict=True)]


def _chunk_nbytes(meta: ArrayMeta) -> int:
    return math.prod(meta.chunk_shape) * meta.dtype.itemsize


def estimated_cost(meta: ArrayMeta, region: tuple[slice, ...], ratio: float,
                   policy: CoalescePolicy) -> ViewCost:
    """The view's cost in layout ``meta``, every chunk stored at ``chunk size / ratio`` bytes."""
    groups = touched_chunks(meta, region)
    nbytes = _chunk_nbytes(meta)
    size = max(1, round(nbytes / max(ratio, 1e-9)))
    n_chunks = sum(len(f) for _, f in groups)
    if meta.sharding is None:
        return ViewCost(n_chunks, n_chunks * size, n_chunks * nbytes, estimated=True)
    index = meta.sharding.index_nbytes(meta.grid_shape)
    requests, fetched = len(groups), len(groups) * index
    for _, flats in groups:
        ranges = coalesce_ranges(((int(f), int(f) * size, size) for f in flats), policy)
        requests += len(ranges)
        fetched += sum(r.length for r in ranges)
    return ViewCost(requests, fetched, n_chunks * nbytes, estimated=True)


def measured_cost(array: ShardedArray, region: tuple[slice, ...], policy: CoalescePolicy
                  ) -> tuple[ViewCost, float | None]:
    """The view's cost in the source, from its real shard indexes, and the compression ratio
    of the chunks it touches (None when it could not be measured: unsharded, too many shards,
    codecs read through zarr-python, a corrupt index)."""
    meta = array.meta
    groups = touched_chunks(meta, region)
    if meta.sharding is None or array.uses_fallback or len(groups) > MAX_MEASURED_SHARDS:
        return ViewCost(0, 0, 0, estimated=True), None
    reader = RegionReader(array.store, meta, cache=EngineCache(0), coalesce=policy,
                          readahead=False)
    try:
        indexes = reader.shard_indexes([s for s, _ in groups])
    except CorruptDataError:
        return ViewCost(0, 0, 0, estimated=True), None
    nbytes = _chunk_nbytes(meta)
    index = meta.sharding.index_nbytes(meta.grid_shape)
    requests, fetched, decoded, stored = len(groups), 0, 0, 0
    for shard, flats in groups:
        found = indexes.get(shard)
        if found is None:
            continue  # a missing shard: its index request finds nothing, all fill
        entries = found.entries[flats]
        entries = entries[entries[:, 0] != EMPTY]
        fetched += index
        decoded += len(entries) * nbytes
        stored += int(entries[:, 1].sum())
        ranges = coalesce_ranges(((i, int(o), int(n)) for i, (o, n) in enumerate(entries)),
                                 policy)
        requests += len(ranges)
        fetched += sum(r.length for r in ranges)
    ratio = decoded / stored if stored else None
    return ViewCost(requests, fetched, decoded), ratio


@dataclass(frozen=True)
class Sample:
    """Part of one destination shard resharded in memory (read, decode, encode; no write)."""

    array: str
    seconds: float
    pixels: int  # decoded bytes read from the source
    fetched: int  # bytes the source store delivered
    encoded: int  # bytes of encoded destination chunks

    @property
    def rate(self) -> float:
        """Decoded bytes resharded per second."""
        return self.pixels / self.seconds if self.seconds > 0 else math.inf

    @property
    def target_ratio(self) -> float | None:
        return self.pixels / self.encoded if self.encoded else None

    @property
    def source_ratio(self) -> float | None:
        return self.pixels / self.fetched if self.fetched else None


def measure_sample(path: str, source: ShardedArray, target: ArrayMeta, depth: int,
                   budget: int = SAMPLE_BYTES, passthrough: str | None = None) -> Sample:
    """Reshard a few layers from the middle of the middle destination shard, timed."""
    shard = tuple(e // 2 for e in target.grid_extent())
    if passthrough:
        return _measure_copy(path, source, target, shard, passthrough, budget)
    region = target.layout.shard_region(shard)
    extent = region[0].stop - region[0].start
    c0 = target.chunk_shape[0]
    row_bytes = math.prod(target.grid_shape[1:]) * target.dtype.itemsize
    rows = min(max(depth, budget // max(1, row_bytes) // depth * depth), -(-extent // c0) * c0)
    z0 = region[0].start + max(0, (extent - rows) // 2) // depth * depth
    # the sample is encoded as a shard of its own, `rows` deep, starting at z0
    part = dataclasses.replace(target, shape=(min(rows, target.shape[0] - z0),
                                              *target.shape[1:]),
                               grid_shape=(rows, *target.grid_shape[1:]))
    if source.uses_fallback:
        reader = source
    else:  # a store of its own, to count what it fetches
        reader = ShardedArray(open_store(source.store.url, source.store.options), source.meta,
                              cache=EngineCache(0), readahead=False)
    pixels = 0

    def read(r: tuple[slice, ...], out: np.ndarray) -> np.ndarray:
        nonlocal pixels
        pixels += out.nbytes
        return reader.read_region((slice(r[0].start + z0, r[0].stop + z0), *r[1:]), out)

    began = time.perf_counter()
    data = encode_shard_by_layers(part, (0, *shard[1:]), read,
                                  depth=depth if rows % depth == 0 else c0)
    seconds = time.perf_counter() - began
    index = target.sharding.index_nbytes(part.grid_shape) if target.sharding else 0
    encoded = max(0, len(data) - index) if data else 0
    fetched = reader.store.stats.snapshot()["bytes"] if reader is not source else 0
    return Sample(path, seconds, pixels, fetched, encoded)


def _measure_copy(path: str, source: ShardedArray, target: ArrayMeta, shard: tuple[int, ...],
                  mode: str, budget: int) -> Sample:
    """The first layers of chunks of a shard made of the source's stored chunks, timed."""
    reader = RegionReader(open_store(source.store.url, source.store.options), source.meta,
                          cache=EngineCache(0), coalesce=CoalescePolicy(), readahead=False)
    region = target.layout.shard_region(shard)
    c0 = source.meta.chunk_shape[0]  # a layer of source chunks (several destination rows)
    layer_bytes = c0 * math.prod(s.stop - s.start for s in region[1:]) * target.dtype.itemsize
    layers = max(1, budget // max(1, layer_bytes))
    began = time.perf_counter()
    data = copy_shard(reader, target, shard, mode, max_layers=layers)
    seconds = time.perf_counter() - began
    rows = min(layers * c0, region[0].stop - region[0].start)
    index = target.sharding.index_nbytes(target.grid_shape) if target.sharding else 0
    return Sample(path, seconds, rows * layer_bytes // c0, reader.store.stats.snapshot()["bytes"],
                  max(0, len(data) - index) if data else 0)
