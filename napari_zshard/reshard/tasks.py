"""The unit of work: one destination shard, read from the source, encoded, committed and
journaled — or compared with the source. Module-level functions over picklable arguments, so
the same tasks run on threads and on dask workers."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass

import numpy as np

from ..engine import ArrayMeta, CoalescePolicy, EngineCache, ShardedArray, open_array
from ..engine.reader import RegionReader
from ..engine.shard_writer import encode_shard_by_layers
from ..errors import CorruptDataError
from ..store import Store, join_key
from ..store.base import ObjectWriter
from .journal import record_done
from .passthrough import copy_shard

Coords = tuple[int, ...]


@dataclass(frozen=True)
class SourceRef:
    """How a task opens a source array: its store and metadata, no metadata read."""

    store: Store
    meta: ArrayMeta
    fallback: bool = False  # codecs the engine lacks: read through zarr-python

    @classmethod
    def of(cls, array: ShardedArray) -> SourceRef:
        return cls(array.store, array.meta, array.uses_fallback)

    def open(self) -> ShardedArray:
        if self.fallback:
            return open_array(self.store, cache=_task_cache(), readahead=False)
        return ShardedArray(self.store, self.meta, cache=_task_cache(), readahead=False)

    def reader(self) -> RegionReader:
        """The engine's reader itself: for copying stored chunks as they are."""
        return RegionReader(self.store, self.meta, cache=_task_cache(),
                            coalesce=CoalescePolicy(), readahead=False)


@dataclass(frozen=True)
class ShardOutcome:
    """What became of one destination shard."""

    array: str
    key: str  # relative to the array
    status: str  # "written" | "fill" | "corrupt"
    nbytes: int = 0  # bytes committed
    pixels: int = 0  # decoded bytes the shard covers
    error: str | None = None


_cache: EngineCache | None = None
_cache_lock = threading.Lock()


def _task_cache() -> EngineCache:
    """One per process: shard indexes are shared by the tasks, decoded chunks are not kept
    (each is read once per task; keeping them would only cost memory)."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = EngineCache(0)
        return _cache


def _forget_after_fork() -> None:
    global _cache, _cache_lock
    _cache, _cache_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class CommitQueue:
    """Shard commits on a thread of their own, so that the next shard is computed while the
    last one is committed (fsynced and renamed; uploaded, on an object store); at most
    ``depth`` finished shards wait. (On a dask cluster each task commits its own shard.)"""

    def __init__(self, depth: int = 2):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="zshard-commit")
        self._slots = threading.BoundedSemaphore(depth)
        self._futures: list[Future] = []
        self._lock = threading.Lock()

    def submit(self, fn, *args) -> None:
        self._raise_failures(wait=False)
        self._slots.acquire()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            self._futures.append(future)

    def flush(self) -> None:
        """Wait for every commit; raise the first failure."""
        self._raise_failures(wait=True)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def _raise_failures(self, *, wait: bool) -> None:
        with self._lock:
            futures = list(self._futures)
        if wait:
            futures_wait(futures)
        done = [f for f in futures if f.done()]
        with self._lock:
            self._futures = [f for f in self._futures if f not in done]
        for future in done:
            future.result()


def commit_shard(dst: Store, array: str, key: str, shard: ObjectWriter,
                 nbytes: int | None) -> None:
    """Commit one destination shard written to ``shard`` (``nbytes`` None: all fill, so it is
    discarded and any shard left at ``key`` by an earlier run deleted), then journal it."""
    full_key = join_key(array, key) if array else key
    if nbytes is None:
        shard.abort()
        dst.delete(full_key)  # (a shard left by an earlier run of other data)
    else:
        shard.commit()
    record_done(dst, array, key, nbytes or 0)


def reshard_shard(source: SourceRef, dst: Store, array: str, meta: ArrayMeta, shard: Coords,
                  depth: int, passthrough: str | None = None,
                  commits: CommitQueue | None = None) -> ShardOutcome:
    """Write destination shard ``shard`` of ``array`` from the source, then journal it:
    decoded and re-encoded layer by layer, or (``passthrough``) made of the source's stored
    chunks. Each layer is written out as it is done (to a temporary object: see
    :meth:`Store.writer`); with ``commits`` the commit and the journal entry happen there.

    A corrupt source is reported, not raised, and nothing is written for this shard: the
    caller decides whether that stops the run.
    """
    key = meta.object_key(shard)
    region = meta.layout.shard_region(shard)
    pixels = int(np.prod([s.stop - s.start for s in region])) * meta.dtype.itemsize
    out = dst.writer(join_key(array, key) if array else key)
    try:
        if passthrough:
            nbytes = copy_shard(source.reader(), meta, shard, passthrough, out=out)
        else:
            nbytes = encode_shard_by_layers(meta, shard, source.open().read_region,
                                            depth=depth, out=out)
    except CorruptDataError as e:
        out.abort()
        return ShardOutcome(array, key, "corrupt", pixels=pixels, error=str(e))
    except BaseException:
        out.abort()
        raise
    try:
        if commits is not None:
            commits.submit(commit_shard, dst, array, key, out, nbytes)
        else:
            commit_shard(dst, array, key, out, nbytes)
    except BaseException:
        out.abort()  # (not queued, or its commit failed: no temporary object left behind)
        raise
    return ShardOutcome(array, key, "written" if nbytes else "fill", nbytes or 0, pixels)


def verify_shard(source: SourceRef, dst: Store, array: str, meta: ArrayMeta, shard: Coords,
                 depth: int, sample_seed: int | None = None) -> str | None:
    """Compare destination shard ``shard`` with the source, layer by layer (or one random
    layer when ``sample_seed`` is given); a description of the first difference, or None."""
    src = source.open()
    target = ShardedArray(dst.child(array) if array else dst, meta, cache=EngineCache(0),
                          readahead=False)
    region = meta.layout.shard_region(shard)
    starts = list(range(region[0].start, region[0].stop, depth))
    if sample_seed is not None:
        starts = [random.Random(sample_seed).choice(starts)]
    for lo in starts:
        part = (slice(lo, min(lo + depth, region[0].stop)), *region[1:])
        a, b = src.read_region(part), target.read_region(part)
        same = a == b
        if a.dtype.kind in "fc":
            same |= np.isnan(a) & np.isnan(b)
        if not same.all():
            local = tuple(int(v) for v in np.argwhere(~same)[0])
            voxel = tuple(i + s.start for i, s in zip(local, part, strict=True))
            return (f"{array or 'the array'}, shard {meta.object_key(shard)}: voxel {voxel} is "
                    f"{b[local]} in the destination but {a[local]} in the source")
    return None
