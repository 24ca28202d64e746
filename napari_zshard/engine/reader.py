"""The read path: region → inner chunks → what is cached, being fetched, or to fetch → one
concurrent fetch batch → parallel decode → copied out. See the package docstring ("How a read
works") for the life of one cold plane.

One :class:`RegionReader` serves one opened array. Its collaborators: the
:class:`~.fetch_plan.FetchPlanner` (shard indexes, byte ranges), the
:class:`~.chunk_decode.ChunkDecoder` (bytes → cached chunks) and the process-wide
:class:`~.cache.EngineCache`, in which a read claims what it misses for its one
:class:`~.inflight.InFlight` unit.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np

from ..errors import CorruptShardError, ShortReadError, StoreError
from ..store import Store
from .cache import EngineCache, bump_generation
from .cache_keys import ChunkKey, cache_token
from .chunk_decode import FILL, ChunkDecoder
from .coalesce import CoalescePolicy
from .counters import ReadCounters
from .fetch_plan import FetchPlanner
from .inflight import InFlight
from .metadata import ArrayMeta
from .pools import LATER, NOW, decode_pool, readahead_pool
from .slab import Slab, copy_from_slabs, gather_rows, plan_slabs

log = logging.getLogger(__name__)

Coords = tuple[int, ...]
#: Longest wait of background read-ahead for the decodes of reads (seconds).
READAHEAD_YIELD = 0.5


def normalize_region(region: Sequence[slice], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Clip step-1 slices to ``shape``; raise for anything else."""
    if len(region) != len(shape):
        raise IndexError(f"region has {len(region)} axes, the array {len(shape)}")
    out = []
    for s, n in zip(region, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise IndexError("read_region takes step-1 slices")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


class RegionReader:
    """Reads rectangular regions of one array through the engine."""

    def __init__(self, store: Store, meta: ArrayMeta, *, cache: EngineCache,
                 coalesce: CoalescePolicy, readahead: bool = True,
                 index_max_age: float | None = None, progressive: bool = True):
        self.store = store
        self.meta = meta
        self.layout = meta.layout
        self.cache = cache
        self.readahead = readahead
        self.index_max_age = index_max_age
        self.counters = ReadCounters()
        self.token = token = cache_token(store, meta)
        self.planner = FetchPlanner(store, meta, cache, token, self.counters, coalesce=coalesce,
                                    index_max_age=index_max_age)
        self.decoder = ChunkDecoder(store.url, meta, cache, token, self.counters,
                                    progressive=progressive)
        self._chunk_nbytes = math.prod(meta.chunk_shape) * meta.dtype.itemsize
        # C-order element strides of an inner chunk: how far into it a region reaches
        self._strides = [math.prod(meta.chunk_shape[i + 1:]) for i in range(meta.ndim)]

    # -- public ----------------------------------------------------------------------------
    def read(self, region: Sequence[slice], out: np.ndarray | None = None) -> np.ndarray:
        meta = self.meta
        region = normalize_region(region, meta.shape)
        shape = tuple(s.stop - s.start for s in region)
        if out is None:
            out = np.empty(shape, dtype=meta.dtype)
        elif out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the region {shape}")
        if 0 in shape:
            return out
        axes = self.layout.chunk_ranges(region)
        self.planner.validate(axes)
        # 1. every chunk row decoded whole in one cached slab: a few copies
        if self._copy_from_slabs(region, axes, out):
            return out
        token = self.token
        keys = [(token, c) for c in itertools.product(*axes)]
        # A chunk is as fresh as the index it was found through: it expires with it.
        cached = self.cache.chunks.get_all(keys, max_age=self.index_max_age)
        if cached is not None:  # 2. every chunk cached: nothing to plan
            self._copy_out(region, axes, cached, out)
            return out
        # 3. claim what nobody has or fetches, for this read's unit; fetch it
        places = list(self._placements(region, axes))
        unit: InFlight[ChunkKey] = InFlight()
        hits, waits, claimed = self.cache.chunks.claim(keys, unit, max_age=self.index_max_age)
        needs = {key: self._need(last) for key, (_, _, last) in zip(keys, places, strict=True)
                 if key not in hits}
        if claimed:
            self._fetch(unit, [k[1] for k in claimed], {k[1]: needs[k] for k in claimed})
        # 4. copy out what is at hand, then the rest as it is decoded
        values = [hits[key] if key in hits else waits.get(key, unit).get(key, needs[key])
                  for key in keys]
        self._copy_out(region, axes, values, out, places)
        fill = meta.fill_value
        later = {key: place for key, value, place in zip(keys, values, places, strict=True)
                 if value is None}
        mine = {key: needs[key] for key in later if key not in waits}
        since = 0
        while mine:
            ready, since = unit.collect(mine, since)
            for key, value in ready:
                del mine[key]
                dst, src, _ = later[key]
                out[dst] = fill if value is FILL else value[src]
        for key, (dst, src, _) in later.items():
            if key in waits:  # another read's fetch
                value = waits[key].wait(key, needs[key])
                out[dst] = fill if value is FILL else value[src]
        return out

    def refresh(self) -> None:
        """Check every shard again before its cached index or chunks are used (the store
        changed): only shards whose identity changed are read again."""
        self.planner.validated.clear()
        if self.meta.sharding is None:  # no identities to check: forget this array's chunks
            self.cache.chunks.discard(lambda k: k[0] == self.token)
        bump_generation(self.store.url)

    def shard_indexes(self, shards: list[Coords]):
        """Validated indexes of ``shards`` (None for a missing shard), fetching misses at once."""
        return self.planner.shard_indexes(shards)

    def stored_chunks(self, chunks: list[Coords]):
        """The stored, still encoded bytes of ``chunks`` (:meth:`.FetchPlanner.stored_chunks`)."""
        return self.planner.stored_chunks(chunks)

    # -- copying out -----------------------------------------------------------------------
    def _copy_from_slabs(self, region: tuple[slice, ...], axes: list[range],
                         out: np.ndarray) -> bool:
        """Copy ``region`` into ``out`` when each of its chunk rows lies decoded whole in one
        cached slab (a step through rows read already): a few copies per row, no work per
        chunk. False, and nothing done, otherwise. (A row still being decoded is read chunk by
        chunk from its unit, and copied out by rows all the same: :func:`.slab.gather_rows`.)"""
        if len(axes) < 2:
            return False
        ry, rx = axes[-2], axes[-1]
        leads = list(itertools.product(*axes[:-2]))
        first = [(self.token, (*lead, ry.start, rx.start)) for lead in leads]
        slabs = self.cache.chunks.get_groups(
            first, lambda g: isinstance(g, Slab) and g.covers(ry, rx),
            hits=len(leads) * len(ry) * len(rx), max_age=self.index_max_age)
        if slabs is None:
            return False
        copy_from_slabs(region, axes, slabs, out, self.meta.chunk_shape)
        return True

    def _copy_out(self, region: tuple[slice, ...], axes: list[range], values: list,
                  out: np.ndarray, places: list | None = None) -> None:
        """Copy the chunks at hand (``values`` in ``itertools.product(*axes)`` order; None:
        not ready, skipped) into ``out``: rows of chunks decoded into one slab in one strided
        copy each (engine/slab.py), the others chunk by chunk."""
        meta = self.meta
        copied = (gather_rows(region, axes, values, out, meta.chunk_shape, self._chunk_nbytes)
                  if len(values) > 1 and meta.ndim >= 2 else ())
        if len(copied) == len(values):
            return
        fill = meta.fill_value
        for i, (value, (dst, src, _)) in enumerate(zip(
                values, self._placements(region, axes) if places is None else places,
                strict=True)):
            if value is None or i in copied:
                continue
            out[dst] = fill if value is FILL else value[src]

    def _need(self, last: tuple[int, ...]) -> int:
        """Bytes of an inner chunk (C order) up to the element whose per-axis offsets (times
        the axis strides) are ``last``: how much of it a read needs decoded."""
        return (sum(last) + 1) * self.meta.dtype.itemsize

    def _placements(self, region: tuple[slice, ...], axes: list[range]):
        """Per touched chunk (in ``itertools.product(*axes)`` order): the ``(dst, src)`` slices
        that copy its part of ``region`` into the output, and the per-axis offsets of that
        part's last element (:meth:`_need` turns them into bytes). Built per axis once, so a
        plane of hundreds of chunks costs a tuple per chunk, not slice arithmetic."""
        dst_axes, src_axes, last_axes = [], [], []
        for s, c, rng, stride in zip(region, self.meta.chunk_shape, axes, self._strides,
                                     strict=True):
            dsts, srcs, lasts = [], [], []
            for g in rng:
                lo, hi = max(s.start, g * c), min(s.stop, (g + 1) * c)
                dsts.append(slice(lo - s.start, hi - s.start))
                srcs.append(slice(lo - g * c, hi - g * c))
                lasts.append((hi - g * c - 1) * stride)  # the part's last element, this axis
            dst_axes.append(dsts)
            src_axes.append(srcs)
            last_axes.append(lasts)
        return zip(itertools.product(*dst_axes), itertools.product(*src_axes),
                   itertools.product(*last_axes), strict=True)

    # -- fetching --------------------------------------------------------------------------
    def _fetch(self, unit: InFlight[ChunkKey], claimed: list[Coords],
               needs: dict[Coords, int]) -> None:
        """Fetch and decode the ``claimed`` chunks (``needs``: bytes of each the read needs)
        and read ahead the rest of their chunk rows: inside the byte ranges fetched anyway
        when they lie there, in the background after this read otherwise — it never delays
        the read (a zoomed-in view of a big plane, a tile) nor shares its bandwidth."""
        extra = self._readahead(unit, claimed) if self.readahead else []
        near, far = self._split_readahead(claimed, extra)
        try:
            left = self._fetch_and_decode(unit, claimed, near, needs, ride_along=True)
        except BaseException as e:
            self.decoder.fail(near + far, e)  # those not fetched yet: released
            raise
        if far or left:
            readahead_pool().post(self._fetch_in_background, unit, left + far)

    def _readahead(self, unit: InFlight[ChunkKey], claimed: list[Coords]) -> list[Coords]:
        """The rest of each claimed chunk's row (same leading coords, every (y, x) chunk),
        claimed for ``unit``: the whole row when the cache can hold it, else the part of it in
        the shards being fetched anyway (contiguous in C order: no extra request)."""
        meta = self.meta
        if meta.ndim < 3:
            return []
        grid = self.layout.chunk_grid
        leads = {c[:-2] for c in claimed}
        budget = self.cache.chunks.max_bytes // 2
        if len(leads) * grid[-2] * grid[-1] * self._chunk_nbytes <= budget:
            ys, xs = {lead: range(grid[-2]) for lead in leads}, {lead: range(grid[-1])
                                                                 for lead in leads}
        else:
            cps = self.layout.chunks_per_shard
            ys, xs = {}, {}
            for c in claimed:
                for axis, spans in ((-2, ys), (-1, xs)):
                    lo = c[axis] // cps[axis] * cps[axis]
                    old = spans.get(c[:-2], range(lo, lo))
                    spans[c[:-2]] = range(min(old.start, lo), max(old.stop, min(
                        grid[axis], lo + cps[axis])))
            n = sum(len(ys[lead]) * len(xs[lead]) for lead in leads)
            if n * self._chunk_nbytes > budget:
                return []
        want = set(claimed)
        extra = [(*lead, y, x) for lead in leads for y in ys[lead] for x in xs[lead]
                 if (*lead, y, x) not in want]
        if not extra:
            return []
        _, _, mine = self.cache.chunks.claim(((self.token, c) for c in extra), unit,
                                             max_age=self.index_max_age)
        return [k[1] for k in mine]

    def _split_readahead(self, claimed: list[Coords], extra: list[Coords]
                         ) -> tuple[list[Coords], list[Coords]]:
        """``extra`` split into the chunks in objects (shards) ``claimed`` touches, and the rest."""
        if not extra:
            return [], []
        if self.meta.sharding is None:  # one object per chunk: every extra chunk is another
            return [], extra
        shard_of = self.layout.shard_of
        touched = {shard_of(c) for c in claimed}
        near: list[Coords] = []
        far: list[Coords] = []
        for c in extra:
            (near if shard_of(c) in touched else far).append(c)
        return near, far

    def _fetch_in_background(self, unit: InFlight[ChunkKey], chunks: list[Coords]) -> None:
        """Read-ahead of ``chunks``: fetched and decoded at low priority, nobody waiting. A
        failure releases their claims (a read that needs them fetches them again and reports
        any error itself).

        The fetch starts once the decodes reads wait for are done (at most
        :data:`READAHEAD_YIELD` seconds later): receiving it would take cores from them. A
        cold 512² tile over loopback HTTP took 17-39 ms while the rest of its row arrived,
        16 ms alone. Nothing those decodes wait for waits for this pool: no deadlock."""
        decode_pool().wait_urgent(READAHEAD_YIELD)
        try:
            self._fetch_and_decode(unit, [], chunks, {})
        except BaseException as e:  # nobody to report to; the claims were failed
            log.debug("read-ahead of %d chunks of %s failed: %s", len(chunks), self.store.url, e)

    def _fetch_and_decode(self, unit: InFlight[ChunkKey], claimed: list[Coords],
                          extra: list[Coords], needs: dict[Coords, int], *,
                          ride_along: bool = False) -> list[Coords]:
        """Fetch every chunk of ``claimed`` and ``extra`` (read-ahead) in one concurrent batch;
        each chunk's decode starts as soon as its bytes arrive (pipelined with the rest of the
        batch), the chunks a read waits for (``needs``) before the read-ahead, and only the
        prefix they need first when that pays (engine/progressive.py). ``ride_along``: the
        read-ahead only where its bytes lie inside the requests made anyway; returns the
        read-ahead chunks left for a later fetch."""
        decoder = self.decoder
        everything = claimed + extra
        try:
            plan = self.planner.plan(everything, optional=set(extra),
                                     ride_along=set(extra) if ride_along else frozenset())
        except BaseException as e:
            decoder.fail(everything, e)
            raise
        requests, request_parts = plan.requests, plan.parts
        for coords in plan.fills:
            decoder.fill(unit, coords)
        if not requests:
            return plan.left
        pending = [c for parts in request_parts for (c, _), _, _ in parts]
        # a chunk row's chunks decoded into one array (engine/slab.py); not when the cache
        # could not hold it, nor when caching is off (each chunk is dropped once read)
        slabs = plan_slabs(pending, self.meta.chunk_shape, self.meta.dtype,
                           self.cache.chunks.max_bytes // 2)
        pool = decode_pool()
        posted = [0] * len(requests)  # per request: how many of its parts are being decoded

        def post(i: int, body: memoryview, available: int | None) -> None:
            """Decode each part of request ``i`` whose bytes are all in ``body[:available]``
            (None: the whole body is in), in order, once."""
            parts, key, k = request_parts[i], requests[i].key, posted[i]
            while k < len(parts):
                (c, slot), offset, nbytes = parts[k]
                if available is not None and (nbytes is None or offset + nbytes > available):
                    break
                data = body[offset:] if nbytes is None else body[offset:offset + nbytes]
                need = needs.get(c)
                if need is not None and decoder.prefix_pays(need):
                    pool.post(decoder.decode_prefix_first, unit, c, (key, slot, data), need,
                              slabs.get(c), priority=NOW)
                else:
                    pool.post(decoder.decode, unit, c, (key, slot, data), slabs.get(c),
                              priority=LATER if need is None else NOW)
                k += 1
            posted[i] = k

        def on_result(i: int, result) -> None:
            if result.data is not None:
                post(i, memoryview(result.data), None)
                return
            chunks = [c for (c, _), _, _ in request_parts[i]]
            if self.meta.sharding is None:  # a chunk never written: fill value
                for c in chunks:
                    decoder.fill(unit, c)
            else:
                decoder.fail(chunks, StoreError(
                    f"{self.store.url}/{requests[i].key} disappeared after its index was "
                    "read; the store is being rewritten — call refresh()"))

        try:
            # the chunks at the front of a big range decode while the rest is arriving
            self.store.read_many(requests, on_result=on_result, on_progress=post)
        except ShortReadError as e:
            error = CorruptShardError(
                f"{self.store.url}/{e.key}: shard is truncated: bytes {e.start}.."
                f"{e.start + e.requested - 1} named by its index lie past the end of the file")
            decoder.fail(pending, error)
            raise error from e
        except BaseException as e:
            decoder.fail(pending, e)
            raise
        finally:
            self.counters.add(data_requests=len(requests))
        return plan.left
