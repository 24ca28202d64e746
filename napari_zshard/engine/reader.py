"""The read path: region → shards → inner chunks → one concurrent fetch batch → parallel decode.

See ../shared/DESIGN.md, "The engine". One :class:`RegionReader` serves one opened array; the
caches it uses are shared process-wide so that re-opening a volume re-uses what was read. What
to request is :mod:`.fetch_plan`'s, how fetched bytes become cached chunks :mod:`.chunk_decode`'s.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import numpy as np

from ..errors import CorruptShardError, ShortReadError, StoreError
from ..store import Store
from ..store.pool import LATER, NOW, decode_pool, readahead_pool
from .cache import EngineCache, bump_generation
from .cache_keys import cache_token
from .chunk_decode import FILL, ChunkDecoder
from .coalesce import CoalescePolicy
from .counters import ReadCounters
from .fetch_plan import FetchPlanner
from .metadata import ArrayMeta
from .progressive import MAX_PREFIX_SHARE, progressive_codecs
from .promise import Promise
from .shard_index import ShardIndex
from .slab import FillingSlabs, Slab, copy_from_slabs, gather_rows, plan_slabs

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
        self.cache = cache
        self.coalesce = coalesce
        self.readahead = readahead
        self.index_max_age = index_max_age
        self.counters = ReadCounters()
        self.token = cache_token(store, meta)
        self._planner = FetchPlanner(self)
        self._chunk_nbytes = math.prod(meta.chunk_shape) * meta.dtype.itemsize
        # the codecs when chunks can be decoded front to back (engine/progressive.py)
        self._progressive = (progressive_codecs(meta.chunk_codecs, meta.dtype) if progressive
                             else None)
        self._decoder = ChunkDecoder(self)
        self._filling = FillingSlabs(self._chunk_nbytes)  # slabs still being decoded
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
        axes = self._axis_ranges(region)
        self._planner.validate(axes)
        if self._copy_from_slabs(region, axes, out):
            return out
        token = self.token
        keys = [(token, c) for c in itertools.product(*axes)]
        # A chunk is as fresh as the index it was found through: it expires with it.
        cached = self.cache.chunks.get_all(keys, max_age=self.index_max_age)
        if cached is not None:  # a step through rows already decoded: nothing to plan
            self._copy_out(region, axes, cached, out)
            return out
        places = list(self._placements(region, axes))
        hits, waits, claimed = self.cache.chunks.claim(keys, max_age=self.index_max_age)
        pending: dict[Coords, Promise] = {k[1]: f for k, f in waits.items()}
        if claimed:
            claimed_coords = [k[1] for k in claimed]
            extra = self._readahead(claimed_coords) if self.readahead else []
            mine = set(claimed)
            needs = {key[1]: self._need(last) for key, (_, _, last) in zip(keys, places,
                                                                           strict=True)
                     if key in mine}
            # Read-ahead in the shards this read fetches anyway rides along in its requests;
            # read-ahead in other shards is fetched after it, in the background: it never
            # delays the read (a zoomed-in view of a big plane, a tile) nor shares its bandwidth.
            near, far = self._split_readahead(claimed_coords, extra)
            try:
                pending.update(self._fetch_and_decode(claimed_coords, near, needs))
            except BaseException as e:
                self.cache.chunks.fail([(token, c) for c in far], e)
                raise
            if far:
                readahead_pool().post(self._fetch_in_background, far)
        later = []
        values = []
        for key, (dst, src, last) in zip(keys, places, strict=True):
            value = hits.get(key)
            if value is None:  # first the chunks that are ready, or that nobody else is busy with
                need = self._need(last)
                value = self._await(key, pending[key[1]], need, wait=False)
                if value is None:
                    later.append((key, dst, src, need))
            values.append(value)
        self._copy_out(region, axes, values, out, places)
        fill = self.meta.fill_value
        for key, dst, src, need in later:
            value = self._await(key, pending[key[1]], need)
            if value is FILL:
                out[dst] = fill
            else:
                out[dst] = value[src]
        return out

    def _copy_from_slabs(self, region: tuple[slice, ...], axes: list[range],
                         out: np.ndarray) -> bool:
        """Copy ``region`` into ``out`` when each of its chunk rows lies decoded whole in one
        slab (a step through rows already read): a few copies per row, no work per chunk.
        False, and nothing done, otherwise."""
        if len(axes) < 2:
            return False
        ry, rx = axes[-2], axes[-1]
        leads = list(itertools.product(*axes[:-2]))
        first = [(self.token, (*lead, ry.start, rx.start)) for lead in leads]
        slabs = self.cache.chunks.get_groups(
            first, lambda g: isinstance(g, Slab) and g.covers(ry, rx),
            hits=len(leads) * len(ry) * len(rx), max_age=self.index_max_age)
        if slabs is None and self._filling:  # being decoded: enough of each chunk already?
            slabs = self._filling.find(leads, ry, rx, self._region_need(region, axes))
        if slabs is None:
            return False
        copy_from_slabs(region, axes, slabs, out, self.meta.chunk_shape)
        return True

    def _region_need(self, region: tuple[slice, ...], axes: list[range]) -> int:
        """Bytes of a chunk (C order) that hold every chunk's part of ``region``: up to the
        end of the deepest (y, x) plane it reaches in any of them."""
        k = len(region) - 2
        shape = self.meta.chunk_shape
        last = [(max(min(s.stop - g * c, c) for g in rng) - 1) * stride for s, c, rng, stride
                in zip(region[:k], shape[:k], axes[:k], self._strides[:k], strict=True)]
        return self._need((*last, *((c - 1) * stride for c, stride in
                                    zip(shape[k:], self._strides[k:], strict=True))))

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
            if value is FILL:
                out[dst] = fill
            else:
                out[dst] = value[src]

    def _need(self, last: tuple[int, ...]) -> int:
        """Bytes of an inner chunk (C order) up to the element whose per-axis offsets (times
        the axis strides) are ``last``: how much of it a read needs decoded."""
        return (sum(last) + 1) * self.meta.dtype.itemsize

    def _await(self, key, fut: Promise, need: int, wait: bool = True):
        """A chunk being fetched or decoded: its array as soon as its first ``need`` bytes are
        decoded (the prefix a cold read decoded first may be enough). ``wait=False``: None
        instead of waiting, so the caller first serves itself from the chunks that are ready.
        """
        partial = self.cache.partials.get(key)
        if partial is not None and (wait or partial.done()):
            try:
                array, done = partial.result()
            except Exception:  # the chunk's own future carries the located error
                pass
            else:
                if done >= need:
                    return array
        if not wait and not fut.done():
            return None
        return fut.result()

    def refresh(self) -> None:
        """Check every shard again before its cached index or chunks are used (the store
        changed): only shards whose identity changed are read again."""
        self._planner.validated.clear()
        self._filling.clear()
        if self.meta.sharding is None:  # no identities to check: forget this array's chunks
            self.cache.chunks.discard(lambda k: k[0] == self.token)
        bump_generation(self.store.url)

    # -- planning --------------------------------------------------------------------------
    def _axis_ranges(self, region: tuple[slice, ...]) -> list[range]:
        """Per axis, the chunk coordinates ``region`` touches."""
        return [range(s.start // c, (s.stop - 1) // c + 1)
                for s, c in zip(region, self.meta.chunk_shape, strict=True)]

    def _placements(self, region: tuple[slice, ...], axes: list[range]):
        """Per touched chunk (in ``itertools.product(*axes)`` order): the ``(dst, src)`` slices
        that copy its part of ``region`` into the output, and the per-axis offsets of that
        part's last element (:meth:`_need` turns them into bytes, for chunks not cached yet
        only). Built per axis once, so a plane of hundreds of chunks costs a tuple per chunk,
        not slice arithmetic."""
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

    def _readahead(self, claimed: list[Coords]) -> list[Coords]:
        """The rest of each claimed chunk's row: same leading coords, every (y, x) chunk."""
        meta = self.meta
        if meta.ndim < 3:
            return []
        grid = [-(-s // c) for s, c in zip(meta.shape, meta.chunk_shape, strict=True)]
        leads = {c[:-2] for c in claimed}
        budget = self.cache.chunks.max_bytes // 2
        if len(leads) * grid[-2] * grid[-1] * self._chunk_nbytes <= budget:
            ys, xs = {lead: range(grid[-2]) for lead in leads}, {lead: range(grid[-1])
                                                                 for lead in leads}
        else:
            # The whole row does not fit: read ahead the row within the shards being fetched
            # anyway (in C order those chunks are contiguous: no extra request).
            cps = meta.chunks_per_object
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
        _, _, mine = self.cache.chunks.claim(((self.token, c) for c in extra),
                                             max_age=self.index_max_age)
        return [k[1] for k in mine]

    def _split_readahead(self, claimed: list[Coords], extra: list[Coords]
                         ) -> tuple[list[Coords], list[Coords]]:
        """``extra`` split into the chunks in objects (shards) ``claimed`` touches, and the rest."""
        if not extra:
            return [], []
        if self.meta.sharding is None:  # one object per chunk: every extra chunk is another
            return [], extra
        cps = self.meta.chunks_per_object
        touched = {tuple(g // n for g, n in zip(c, cps, strict=True)) for c in claimed}
        near, far = [], []
        for c in extra:
            shard = tuple(g // n for g, n in zip(c, cps, strict=True))
            (near if shard in touched else far).append(c)
        return near, far

    def _fetch_in_background(self, chunks: list[Coords]) -> None:
        """Read-ahead of ``chunks``: fetched and decoded at low priority, nobody waiting. A
        failure releases their claims (a read that needs them fetches them again and reports
        any error itself).

        The fetch starts once the decodes reads wait for are done (at most
        :data:`READAHEAD_YIELD` seconds later): receiving it would take cores from them. A
        cold 512² tile over loopback HTTP took 17-39 ms while the rest of its row arrived,
        16 ms alone. Nothing those decodes wait for waits for this pool: no deadlock."""
        decode_pool().wait_urgent(READAHEAD_YIELD)
        try:
            self._fetch_and_decode([], chunks, {})
        except BaseException as e:  # nobody to report to; the claims were failed
            log.debug("read-ahead of %d chunks of %s failed: %s", len(chunks), self.store.url, e)

    # -- fetching --------------------------------------------------------------------------
    def _fetch_and_decode(self, claimed: list[Coords], extra: list[Coords],
                          needs: dict[Coords, int]) -> dict[Coords, Promise]:
        """Fetch every claimed chunk in one concurrent batch; each chunk's decode starts as
        soon as its bytes arrive (pipelined with the rest of the batch), the chunks a read
        waits for (``needs``: bytes of each it needs) before the read-ahead. Promises per chunk.
        """
        everything = claimed + extra
        try:
            fills, requests, request_parts = self._planner.plan(everything, optional=set(extra))
        except BaseException as e:
            self.cache.chunks.fail([(self.token, c) for c in everything], e)
            raise
        futures: dict[Coords, Promise] = {}
        for coords in fills:
            self.cache.chunks.fulfil((self.token, coords), FILL, 64)
            f: Promise = Promise()
            f.set_result(FILL)
            futures[coords] = f
        pending = {c: Promise() for parts in request_parts for (c, _), _, _ in parts}
        futures.update(pending)
        if not requests:
            return futures
        # Chunks a read needs only the top of: decode that part first (engine/progressive.py)
        partials = {} if self._progressive is None else {
            c: self.cache.partials.open((self.token, c)) for c in pending
            if needs.get(c, self._chunk_nbytes) <= MAX_PREFIX_SHARE * self._chunk_nbytes}
        # a chunk row's chunks decoded into one array (engine/slab.py); not when the cache
        # could not hold it, nor when caching is off (each chunk is dropped once read)
        slabs = plan_slabs(pending, self.meta.chunk_shape, self.meta.dtype,
                           self.cache.chunks.max_bytes // 2)
        if slabs:
            self._filling.add(slabs)
        pool, decoder = decode_pool(), self._decoder
        unsharded = self.meta.sharding is None

        posted = [0] * len(requests)  # per request: how many of its parts are being decoded

        def post(i: int, body: memoryview, available: int | None) -> None:
            """Decode each part of request ``i`` whose bytes are all in ``body[:available]``
            (None: the whole body is in), in order, once."""
            parts, key, k = request_parts[i], requests[i].key, posted[i]
            while k < len(parts):
                (c, flat), offset, nbytes = parts[k]
                if available is not None and (nbytes is None or offset + nbytes > available):
                    break
                data = body[offset:] if nbytes is None else body[offset:offset + nbytes]
                if c in partials:
                    pool.post(decoder.decode_prefix_first, c, (key, flat, data), pending[c],
                              partials[c], needs[c], slabs.get(c), priority=NOW)
                else:
                    pool.post(decoder.decode_into, c, (key, flat, data), pending[c],
                              slabs.get(c), priority=NOW if c in needs else LATER)
                k += 1
            posted[i] = k

        def on_result(i: int, result) -> None:
            key = requests[i].key
            if result.data is None:
                for (c, _), _, _ in request_parts[i]:
                    if unsharded:  # a chunk never written: fill value
                        self.cache.chunks.fulfil((self.token, c), FILL, 64)
                        pending[c].set_result(FILL)
                        decoder.close_partial(c, partials.get(c))
                    else:
                        decoder.fail(c, pending[c], StoreError(
                            f"{self.store.url}/{key} disappeared after its index was read; "
                            "the store is being rewritten — call refresh()"), partials)
                return
            post(i, memoryview(result.data), None)

        try:
            # the chunks at the front of a big range decode while the rest is arriving
            self.store.read_many(requests, on_result=on_result, on_progress=post)
        except ShortReadError as e:
            error = CorruptShardError(
                f"{self.store.url}/{e.key}: shard is truncated: bytes {e.start}.."
                f"{e.start + e.requested - 1} named by its index lie past the end of the file")
            for c, fut in pending.items():
                decoder.fail(c, fut, error, partials)
            raise error from e
        except BaseException as e:
            for c, fut in pending.items():
                decoder.fail(c, fut, e, partials)
            raise
        finally:
            self.counters.add(data_requests=len(requests))
        return futures

    def shard_indexes(self, shards: list[Coords]) -> dict[Coords, ShardIndex | None]:
        """Validated indexes of ``shards`` (None for a missing shard), fetching misses at once."""
        return self._planner.shard_indexes(shards)

    def stored_chunks(self, chunks: list[Coords]) -> dict[Coords, tuple[str, memoryview] | None]:
        """The stored, still encoded bytes of ``chunks`` (:meth:`.FetchPlanner.stored_chunks`)."""
        return self._planner.stored_chunks(chunks)
