"""Bounded LRU caches with in-flight de-duplication, under one memory budget.

A reader *claims* the keys it misses for its :class:`~.inflight.InFlight` unit: it alone
fetches them, and other readers that want the same key wait on that unit instead of fetching
again. A failed fetch fails the waiters too.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic

from . import buffers
from .cache_keys import CacheToken, ChunkKey, IndexKey, tokens_of
from .inflight import InFlight, K


@dataclass
class _Entry:
    value: Any
    nbytes: int
    stamp: float
    group: Hashable | None = None  # entries that share memory (engine/slab.py): evicted together


class _Group(Generic[K]):
    """The cached entries of one group, and when the first of them was cached."""

    __slots__ = ("members", "stamp")

    def __init__(self, stamp: float):
        self.members: set[K] = set()
        self.stamp = stamp


class ClaimingLRU(Generic[K]):
    """An LRU bounded by bytes, whose misses can be claimed by exactly one fetcher.

    Entries fulfilled with the same ``group`` share one block of memory, which is freed only
    when all of them are gone: evicting one evicts them all, so that the bytes counted are
    the bytes held. A group object with a ``size`` is *complete* when that many of its entries
    are cached (:meth:`get_groups`). ``K``: the type of its keys.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._data: OrderedDict[K, _Entry] = OrderedDict()
        self._groups: dict[Hashable, _Group[K]] = {}
        self._inflight: dict[K, InFlight[K]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def claim(self, keys: Iterable[K], unit: InFlight[K] | None = None, *,
              max_age: float | None = None
              ) -> tuple[dict[K, Any], dict[K, InFlight[K]], list[K]]:
        """Split ``keys`` into cached values, the units others fetch them in (to wait on), and
        the keys the caller must fetch, now claimed for its ``unit``."""
        hits: dict[K, Any] = {}
        waits: dict[K, InFlight[K]] = {}
        unit = InFlight() if unit is None else unit
        claimed: list[K] = []
        now = time.monotonic()
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is not None and (max_age is None or now - entry.stamp <= max_age):
                    self._data.move_to_end(key)
                    hits[key] = entry.value
                    self.hits += 1
                    continue
                other = self._inflight.get(key)
                if other is not None:
                    waits[key] = other
                    continue
                self._inflight[key] = unit
                claimed.append(key)
                self.misses += 1
        return hits, waits, claimed

    def get_all(self, keys: Sequence[K], *, max_age: float | None = None
                ) -> list[Any] | None:
        """The cached values of all ``keys``, now the most recently used; None (and nothing
        claimed, nothing counted) when any of them is missing or older than ``max_age``."""
        now = time.monotonic()
        values = []
        with self._lock:
            data = self._data
            for key in keys:
                entry = data.get(key)
                if entry is None or (max_age is not None and now - entry.stamp > max_age):
                    return None
                values.append(entry.value)
            for key in keys:
                data.move_to_end(key)
            self.hits += len(values)
        return values

    def get_groups(self, keys: Sequence[K], accept: Callable[[Any], bool], *,
                   hits: int, max_age: float | None = None) -> list[Any] | None:
        """The groups of ``keys``' entries, each complete (as many entries cached as its
        ``size``), none older than ``max_age``, and each ``accept``-ed; their entries are now
        the most recently used and ``hits`` are counted. None (nothing touched or counted)
        when any of that fails. A caller that knows a group's layout then reads the group's
        memory without looking up each entry."""
        now = time.monotonic()
        groups = []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                group = None if entry is None else entry.group
                record = None if group is None else self._groups.get(group)
                if (record is None or len(record.members) != getattr(group, "size", -1)
                        or (max_age is not None and now - record.stamp > max_age)
                        or not accept(group)):
                    return None
                groups.append(group)
            touch = self._data.move_to_end
            for group in dict.fromkeys(groups):
                deque(map(touch, self._groups[group].members), maxlen=0)
            self.hits += hits
        return groups

    def fulfil(self, key: K, value: Any, nbytes: int, group: Hashable | None = None
               ) -> None:
        with self._lock:
            self._inflight.pop(key, None)
            if nbytes <= self.max_bytes:
                self._remove(key)
                now = time.monotonic()
                self._data[key] = _Entry(value, nbytes, now, group)
                self.nbytes += nbytes
                if group is not None:
                    record = self._groups.get(group)
                    if record is None:
                        record = self._groups[group] = _Group(now)
                    record.members.add(key)
                while self.nbytes > self.max_bytes and self._data:
                    oldest = next(iter(self._data))
                    entry = self._data[oldest]
                    self._remove(oldest)
                    if entry.group is not None:
                        record = self._groups.get(entry.group)
                        for k in list(record.members) if record is not None else ():
                            self._remove(k)

    def inflight(self, key: K) -> InFlight[K] | None:
        """The unit ``key`` is being fetched in, if any."""
        return self._inflight.get(key)

    def inflight_count(self) -> int:
        """How many keys are being fetched (0: nothing is left to decode in the background)."""
        return len(self._inflight)

    def _remove(self, key: K) -> None:
        """Drop ``key``'s entry, if any (the lock held)."""
        entry = self._data.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry.nbytes
        if entry.group is not None:
            record = self._groups.get(entry.group)
            if record is not None:
                record.members.discard(key)
                if not record.members:
                    del self._groups[entry.group]

    def fail(self, keys: Iterable[K], error: BaseException) -> None:
        """The fetch of claimed ``keys`` failed: their claims go, and their unit's waiters get
        ``error``."""
        units: dict[InFlight[K], list[K]] = {}
        with self._lock:
            for key in keys:
                unit = self._inflight.pop(key, None)
                if unit is not None:
                    units.setdefault(unit, []).append(key)
        for unit, failed in units.items():
            unit.fail(failed, error)

    def remove(self, keys: Iterable[K]) -> None:
        """Drop the cached entries of ``keys`` (those not cached are passed over)."""
        with self._lock:
            for key in keys:
                self._remove(key)

    def discard(self, predicate: Callable[[K], bool]) -> None:
        """Drop every cached entry whose key satisfies ``predicate`` (used by ``refresh()``)."""
        with self._lock:
            for key in [k for k in self._data if predicate(k)]:
                self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._groups.clear()
            self.nbytes = 0


DEFAULT_BUDGET = 512 * 1024 * 1024

_UNKNOWN = object()
#: The identity of a shard that is not stored (reads as fill value).
ABSENT = "absent"

_generations: dict[str, int] = {}  # bumps per URL prefix
_generations_lock = threading.Lock()


def generation(url: str) -> int:
    """How many times cached data of arrays at ``url`` was found stale or replaced in this
    process: dask task names include it (engine/lazy.py), so that napari's dask cache, keyed
    by task name, never serves a block read before the change."""
    if not _generations:
        return 0
    parts = url.rstrip("/").split("/")
    return sum(_generations.get("/".join(parts[:i]), 0) for i in range(1, len(parts) + 1))


def bump_generation(url_prefix: str) -> None:
    """Arrays at or below ``url_prefix`` changed: their next dask tasks get new names."""
    prefix = url_prefix.rstrip("/")
    with _generations_lock:
        _generations[prefix] = _generations.get(prefix, 0) + 1


class EngineCache:
    """The engine's one memory budget: an index cache (1/16) and a decoded-chunk cache (rest)."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET):
        self.budget_bytes = int(budget_bytes)
        index_bytes = min(64 * 1024 * 1024, self.budget_bytes // 16) if budget_bytes else 0
        # indexes are always cached a bit
        self.indexes: ClaimingLRU[IndexKey] = ClaimingLRU(max(index_bytes, 1 << 20))
        self.chunks: ClaimingLRU[ChunkKey] = ClaimingLRU(self.budget_bytes - index_bytes)
        # (token, shard) -> identity of the object its cached index and chunks came from (an
        # ETag, inode-size-mtime locally, ABSENT): a chunk is only valid for the object it was
        # decoded from. One small entry per shard read through this cache.
        self.identities: dict[tuple[CacheToken, tuple[int, ...]], str | None] = {}
        _caches.add(self)

    def forget(self, url_prefix: str) -> None:
        """Drop every entry of arrays at or below ``url_prefix`` (a writer just replaced them)."""
        prefix = url_prefix.rstrip("/")
        bump_generation(prefix)

        def below(key: IndexKey | ChunkKey) -> bool:
            url = getattr(key[0], "url", key[0])
            return isinstance(url, str) and (url == prefix or url.startswith(prefix + "/"))

        self.indexes.discard(below)
        self.chunks.discard(below)

    def forget_shards(self, token: CacheToken, shards: Iterable[tuple[int, ...]]) -> None:
        """Drop the cached index and chunks of ``shards`` of the array layout ``token``: the
        objects were replaced (by a writer in this process, or found with a new identity)."""
        cps = token.chunks_per_object
        shards = list(shards)
        self.indexes.remove((token, "index", s) for s in shards)
        self.chunks.remove(
            (token, c) for s in shards for c in itertools.product(
                *(range(i * n, (i + 1) * n) for i, n in zip(s, cps, strict=True))))
        for s in shards:
            self.identities.pop((token, s), None)
        bump_generation(token.url)

    def note_identity(self, token: CacheToken, shard: tuple[int, ...], identity: str | None
                      ) -> None:
        """The index of ``shard`` was just read from an object with ``identity`` (None: the
        store cannot tell): drop what this cache holds of the shard unless it came from that
        very object. Called before the new index is cached."""
        key = (token, shard)
        known = self.identities.get(key, _UNKNOWN)
        if known is not _UNKNOWN and (identity is None or known != identity):
            self.forget_shards(token, [shard])
        self.identities[key] = identity

    def stats(self) -> dict[str, int]:
        return {
            "chunk_cache_bytes": self.chunks.nbytes, "chunk_hits": self.chunks.hits,
            "chunk_misses": self.chunks.misses, "index_cache_bytes": self.indexes.nbytes,
            "index_hits": self.indexes.hits, "index_misses": self.indexes.misses,
        }


_caches: weakref.WeakSet[EngineCache] = weakref.WeakSet()


def forget_written(url: str, shards: Iterable[tuple[int, ...]]) -> None:
    """A writer in this process replaced ``shards`` of the array at ``url``: every cache of
    this process drops them, so that every open array reads the new objects (arrays opened
    elsewhere find out through the shards' identities)."""
    shards = list(shards)
    for token in tokens_of(url):
        for cache in list(_caches):
            cache.forget_shards(token, shards)


_default: EngineCache | None = None
_default_lock = threading.Lock()


def default_cache() -> EngineCache:
    """The process-wide cache (budget from ``$NAPARI_ZSHARD_CACHE_BYTES``, default 512 MiB)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                budget = int(os.environ.get("NAPARI_ZSHARD_CACHE_BYTES", DEFAULT_BUDGET))
                _default = EngineCache(budget)
                buffers.set_spare_limit(budget // 2)
    return _default


def set_cache_budget(budget_bytes: int) -> EngineCache:
    """Replace the process-wide cache with one of ``budget_bytes`` (0 turns chunk caching off)."""
    global _default
    with _default_lock:
        _default = EngineCache(budget_bytes)
    buffers.set_spare_limit(budget_bytes // 2)
    return _default


def _reset_after_fork() -> None:
    global _default, _default_lock
    _default = None
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
