"""Which bytes to request for which inner chunks: validated shard indexes (cached, fetched in one
batch), then byte ranges coalesced per shard. The read path (:mod:`.reader`) and the reshard's
chunk copy use it.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptDataError, CorruptShardError, ShortReadError, StoreError
from ..store import ByteRequest, FullRequest, RangeRequest, Store, SuffixRequest
from .cache import ABSENT, EngineCache
from .cache_keys import CacheToken, IndexKey
from .coalesce import CoalescePolicy, coalesce_ranges
from .counters import ReadCounters
from .inflight import InFlight
from .metadata import ArrayMeta
from .shard_index import ShardIndex, decode_index

Coords = tuple[int, ...]

_MISSING_SHARD = "missing-shard"


@dataclass
class FetchPlan:
    """The chunks that read as fill value; the byte requests, and per request the
    ``((coords, index entry), offset, nbytes)`` of each chunk inside it (nbytes None: the whole
    object), in offset order; read-ahead chunks left for a later fetch."""

    fills: list[Coords]
    requests: list[ByteRequest]
    parts: list[list[tuple[Any, int, int | None]]]  # the tag: (coords, index entry)
    left: list[Coords] = field(default_factory=list)


class FetchPlanner:
    """What to fetch of one array (``meta`` in ``store``): its shard indexes, read once per
    open and cached under ``token`` in ``cache`` (for at most ``index_max_age`` seconds), and
    the coalesced byte ranges of its chunks; request counts go to ``counters``."""

    def __init__(self, store: Store, meta: ArrayMeta, cache: EngineCache, token: CacheToken,
                 counters: ReadCounters, *, coalesce: CoalescePolicy,
                 index_max_age: float | None = None):
        self.store, self.meta, self.cache, self.token = store, meta, cache, token
        self.counters = counters
        self.coalesce = coalesce
        self.index_max_age = index_max_age
        self.validated: set[Coords] = set()  # shards checked since the open (validate())

    def plan(self, chunks: list[Coords], optional: AbstractSet[Coords] = frozenset(), *,
             ride_along: AbstractSet[Coords] = frozenset()) -> FetchPlan:
        """What to fetch for ``chunks`` (:class:`FetchPlan`): the chunks that read as fill
        value, and the byte requests, coalesced per shard.

        ``optional`` chunks are read-ahead: when their shard's index is corrupt they are left
        out (their claims failed) instead of failing the chunks that were asked for.
        ``ride_along`` chunks (read-ahead too) are fetched only when their bytes lie inside a
        request made for the others anyway; the rest is left for later (``FetchPlan.left``),
        so that read-ahead never adds bytes to what a read waits for: a cold 512² tile of 32³
        chunks in 512³ shards fetched 35.7 MiB before returning with the rest of its shards'
        rows riding along, tensorstore 9.2 MiB.
        """
        meta = self.meta
        if meta.sharding is None:
            keys = [meta.object_key(c) for c in chunks]
            return FetchPlan([], [FullRequest(k) for k in keys],
                             [[((c, -1), 0, None)] for c in chunks])
        locate = meta.layout.locate
        by_shard: dict[Coords, list[tuple[Coords, int]]] = defaultdict(list)
        for c in chunks:
            shard, slot = locate(c)
            by_shard[shard].append((c, slot))
        plan = FetchPlan([], [], [])
        for shard in [s for s, members in by_shard.items()
                      if all(c in ride_along for c, _ in members)]:
            plan.left.extend(c for c, _ in by_shard.pop(shard))  # no request to ride along
        optional_shards = {shard for shard, members in by_shard.items()
                           if all(c in optional for c, _ in members)}
        indexes, errors = self._read_indexes(list(by_shard), optional_shards)
        for shard, error in errors.items():
            self.cache.chunks.fail([(self.token, c) for c, _ in by_shard.pop(shard)], error)
        for shard, members in by_shard.items():
            index = indexes[shard]
            key = meta.object_key(shard)
            ranges: list[tuple[tuple[Coords, int], int, int]] = []
            riders: list[tuple[tuple[Coords, int], int, int]] = []
            for c, flat in members:
                sl = None if index is None else index.chunk_slice(flat)
                if sl is None:
                    plan.fills.append(c)
                else:
                    (riders if c in ride_along else ranges).append(((c, flat), sl[0], sl[1]))
            spans = coalesce_ranges(ranges, self.coalesce)
            starts = [span.start for span in spans]
            for tag, offset, nbytes in riders:
                i = bisect.bisect_right(starts, offset) - 1
                if i >= 0 and offset + nbytes <= spans[i].end:
                    spans[i].parts.append((tag, offset - spans[i].start, nbytes))
                else:
                    plan.left.append(tag[0])
            for span in spans:
                span.parts.sort(key=lambda part: part[1])  # decoded as the bytes arrive
                plan.requests.append(RangeRequest(key, span.start, span.length))
                plan.parts.append(list(span.parts))
        return plan

    def shard_indexes(self, shards: list[Coords]) -> dict[Coords, ShardIndex | None]:
        """Validated indexes of ``shards`` (None for a missing shard), fetching misses at once."""
        found, _ = self._read_indexes(shards, frozenset())
        return found

    def stored_chunks(self, chunks: list[Coords]) -> dict[Coords, tuple[str, memoryview] | None]:
        """The stored, still encoded bytes of ``chunks`` with the key of the object holding
        each (None: not stored, reads as fill value), fetched in one coalesced batch; for
        copying chunks whose codecs do not change without decoding and re-encoding them."""
        plan = self.plan(chunks)
        requests, request_parts = plan.requests, plan.parts
        out: dict[Coords, tuple[str, memoryview] | None] = dict.fromkeys(plan.fills)
        try:
            results = self.store.read_many(requests)
        except ShortReadError as e:
            raise CorruptShardError(
                f"{self.store.url}/{e.key}: shard is truncated: bytes {e.start}.."
                f"{e.start + e.requested - 1} named by its index lie past the end of the file"
            ) from e
        self.counters.add(data_requests=len(requests))
        for req, parts, res in zip(requests, request_parts, results, strict=True):
            if res.data is None and self.meta.sharding is not None:
                raise StoreError(f"{self.store.url}/{req.key} disappeared after its index was "
                                 "read; the store is being rewritten — call refresh()")
            view = None if res.data is None else memoryview(res.data)
            for (c, _), offset, nbytes in parts:
                out[c] = None if view is None else (
                    req.key, view[offset:] if nbytes is None else view[offset:offset + nbytes])
        return out

    def validate(self, axes: list[range]) -> None:
        """Make sure every shard holding the chunks ``axes`` spans was checked since this array
        was opened (or refreshed): its index read again from the store, and whatever the cache
        held of it dropped if the object is not the one it came from (another process
        rewrote it). Costs one index request per shard, once per open; chunks of unchanged
        shards stay cached."""
        if self.meta.sharding is None:
            return  # unsharded arrays never share chunks between opens (engine/cache_keys.py)
        todo = [s for s in self.meta.layout.shards_spanned(axes) if s not in self.validated]
        if todo:
            self._read_indexes(todo, frozenset(), fresh=True)

    def _read_indexes(self, shards: list[Coords], optional: AbstractSet[Coords], *,
                      fresh: bool = False
                      ) -> tuple[dict[Coords, ShardIndex | None], dict[Coords, CorruptDataError]]:
        """Indexes of ``shards`` and, for ``optional`` shards only, the corruption errors that
        left them out; a corrupt index of any other shard raises. ``fresh``: read them from
        the store even when cached."""
        meta = self.meta
        spec = meta.sharding
        assert spec is not None
        n_chunks = math.prod(meta.chunks_per_object)
        size = spec.index_nbytes(meta.grid_shape)
        unit: InFlight[IndexKey] = InFlight()
        hits, waits, claimed = self.cache.indexes.claim(
            ((self.token, "index", s) for s in shards), unit,
            max_age=-1.0 if fresh else self.index_max_age)
        found: dict[Coords, ShardIndex | None] = {
            k[2]: (None if v is _MISSING_SHARD else v) for k, v in hits.items()}
        errors: dict[Coords, CorruptDataError] = {}
        while claimed:
            keys = [meta.object_key(k[2]) for k in claimed]
            reqs = [SuffixRequest(key, size) if spec.index_location == "end"
                    else RangeRequest(key, 0, size) for key in keys]
            try:
                results = self.store.read_many(reqs)
            except ShortReadError as e:
                error = CorruptShardError(f"{self.store.url}/{e.key}: shard has {e.received} "
                                          f"bytes where its index needs {size}: truncated")
                error.__cause__ = e
                short = [ck for ck, key in zip(claimed, keys, strict=True) if key == e.key]
                if not short or short[0][2] not in optional:
                    self.cache.indexes.fail(claimed, error)
                    raise error from e
                # A read-ahead shard is truncated: leave it out, fetch the others again.
                self.cache.indexes.fail(short, error)
                errors[short[0][2]] = error
                claimed = [ck for ck in claimed if ck != short[0]]
                continue
            except BaseException as e:
                self.cache.indexes.fail(claimed, e)
                raise
            self.counters.add(index_requests=len(reqs))
            for ck, key, res in zip(claimed, keys, results, strict=True):
                try:
                    index = None if res.data is None else decode_index(
                        res.data, spec=spec, n_chunks=n_chunks, key=key, where=self.store.url,
                        object_size=res.object_size)
                except CorruptDataError as e:
                    self.cache.indexes.fail([ck], e)
                    errors[ck[2]] = e
                    continue
                except BaseException as e:
                    self.cache.indexes.fail(claimed, e)  # releases the ones still in flight
                    raise
                self.cache.note_identity(self.token, ck[2],
                                         ABSENT if res.data is None else res.etag)
                value = _MISSING_SHARD if index is None else index
                unit.publish(ck, value)
                self.cache.indexes.fulfil(ck, value, 64 if index is None else index.nbytes)
                self.validated.add(ck[2])  # read from the store after this array was opened
                found[ck[2]] = index
            break
        for k, other in waits.items():
            try:
                v = other.wait(k)
            except CorruptDataError as e:
                errors[k[2]] = e
                continue
            found[k[2]] = None if v is _MISSING_SHARD else v
            self.validated.add(k[2])  # another reader's fetch of it, under way after our open
        for shard, corrupt in errors.items():
            if shard not in optional:
                raise corrupt
        return found, errors
