"""``ShardedArray``: a numpy-like, lazily read view of one Zarr array, backed by the engine."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MetadataError, UnsupportedCodecError, ZShardError
from ..store import FullRequest, Store, open_store
from .cache import EngineCache, default_cache
from .coalesce import CoalescePolicy
from .fallback import ZarrFallbackReader
from .metadata import ArrayMeta, parse_json, parse_v2, parse_v3
from .reader import RegionReader

log = logging.getLogger(__name__)


def read_array_meta(store: Store, *, zarr_json: bytes | None = None) -> ArrayMeta:
    """Read and parse the array metadata at the root of ``store`` (v3 first, then v2).

    ``zarr_json`` is the root's ``zarr.json`` when the caller already fetched it.
    """
    raw = zarr_json if zarr_json is not None else store.read("zarr.json")
    if raw is not None:
        where = f"{store.url}/zarr.json"
        with _malformed_is_metadata_error(where):
            return parse_v3(parse_json(raw, where), where)
    raw, attrs_raw = (r.whole for r in store.read_many([FullRequest(".zarray"),
                                                       FullRequest(".zattrs")]))
    if raw is not None:
        where = f"{store.url}/.zarray"
        with _malformed_is_metadata_error(where):
            attrs = parse_json(attrs_raw, f"{store.url}/.zattrs") if attrs_raw else {}
            return parse_v2(parse_json(raw, where), where, attrs)
    if _has_chunks(store):
        raise MetadataError(
            f"{store.url}: chunks are stored here but no zarr.json: a save or conversion into "
            "it did not finish (its metadata is written last). Save it again, or remove it "
            "(`zshard fsck --remove-partial` cleans what an interrupted reshard left)")
    raise MetadataError(f"{store.url}: no Zarr array here (neither zarr.json nor .zarray)")


def _has_chunks(store: Store) -> bool:
    """Whether ``store`` holds chunk objects (``c/…``); False when it cannot be listed."""
    try:
        return next(iter(store.list_prefix("c")), None) is not None
    except (ZShardError, OSError, NotImplementedError):
        return False


@contextlib.contextmanager
def _malformed_is_metadata_error(where: str):
    """Metadata is untrusted: a field of the wrong JSON type is a MetadataError, not a crash."""
    try:
        yield
    except ZShardError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
        raise MetadataError(f"{where}: malformed metadata ({type(e).__name__}: {e})") from e


class ShardedArray:
    """A lazily read Zarr array (v3 sharded or not, or v2) that indexes like numpy.

    Create it with :func:`open_array`. Indexing (``arr[10, :, 100:200]``) reads only the inner
    chunks the selection touches; :meth:`to_dask` wraps it in a dask array.
    """

    def __init__(self, store: Store, meta: ArrayMeta, *, cache: EngineCache | None = None,
                 coalesce: CoalescePolicy | None = None, readahead: bool = True,
                 index_max_age: float | None = None, progressive: bool = True,
                 fallback_reason: str | None = None):
        self.store = store
        self.meta = meta
        self._options = {"readahead": readahead, "index_max_age": index_max_age,
                         "coalesce": coalesce, "progressive": progressive}
        self._explicit_cache = cache
        if fallback_reason is None:
            self._reader: Any = RegionReader(
                store, meta, cache=cache or default_cache(),
                coalesce=coalesce or CoalescePolicy(), readahead=readahead,
                index_max_age=index_max_age, progressive=progressive)
        else:
            self._reader = ZarrFallbackReader(store, fallback_reason)

    # -- numpy-like ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def dtype(self) -> np.dtype:
        return self.meta.dtype

    @property
    def ndim(self) -> int:
        return self.meta.ndim

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...]:
        """The inner chunk shape (the decode unit)."""
        return self.meta.chunk_shape

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard shape, or None when the array is not sharded."""
        return self.meta.grid_shape if self.meta.sharding else None

    @property
    def fill_value(self):
        return self.meta.fill_value

    @property
    def attrs(self) -> dict[str, Any]:
        return self.meta.attributes

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def uses_fallback(self) -> bool:
        """True when this array is read through zarr-python (codec chain not in the engine)."""
        return isinstance(self._reader, ZarrFallbackReader)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        shards = f", shards={self.shards}" if self.shards else ""
        return (f"<ShardedArray {self.url} shape={self.shape} dtype={self.dtype} "
                f"chunks={self.chunks}{shards}>")

    def __array__(self, dtype=None, copy=None):
        data = self.read_region(tuple(slice(0, n) for n in self.shape))
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        region, post = _plan_selection(key, self.shape)
        data = self.read_region(region)
        return data[post] if post else data

    # -- engine ----------------------------------------------------------------------------
    def read_region(self, region: Sequence[slice], out: np.ndarray | None = None) -> np.ndarray:
        """Read a rectangular region given as step-1 slices (one per axis)."""
        return self._reader.read(region, out)

    def refresh(self) -> None:
        """Pick up changes others made to the store since this array was opened.

        Each shard is checked again (its index re-read: one request per shard, when next
        read) before its cached index or chunks are used; only shards whose identity changed
        are read again. Slices of this array's dask arrays taken after this get new task
        names, so napari's dask cache does not serve blocks read before."""
        self._reader.refresh()

    @property
    def counters(self) -> dict[str, int]:
        """Requests by kind and chunks decoded by this array (engine reads only)."""
        reader = self._reader
        return reader.counters.snapshot() if hasattr(reader, "counters") else {}

    def reset_counters(self) -> None:
        if hasattr(self._reader, "counters"):
            self._reader.counters.reset()
        self.store.stats.reset()

    def to_dask(self, blocks: str | Sequence[int] = "napari"):
        """A dask array over this array; see :func:`napari_zshard.engine.lazy.to_dask`."""
        from .lazy import to_dask

        return to_dask(self, blocks=blocks)

    def __reduce__(self):
        # The store pickles without credentials; the caches are per process.
        return (_reopen, (self.store, self._options))


def _reopen(store: Store, options: dict[str, Any]) -> ShardedArray:
    return open_array(store, **options)


def _plan_selection(key, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple]:
    """Split a basic numpy index into a step-1 bounding region and the rest to apply after."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - len(key) + 1) + key[i + 1:]
    if len(key) > len(shape):
        raise IndexError(f"too many indices: {len(key)} for an array of rank {len(shape)}")
    key = key + (slice(None),) * (len(shape) - len(key))
    region: list[slice] = []
    post: list[int | slice] = []
    trivial = True
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
            region.append(slice(i, i + 1))
            post.append(0)
            trivial = False
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step == 1:
                region.append(slice(start, max(start, stop)))
                post.append(slice(None))
                continue
            idx = range(start, stop, step)
            if len(idx) == 0:
                region.append(slice(0, 0))
                post.append(slice(None))
            else:
                lo, hi = min(idx[0], idx[-1]), max(idx[0], idx[-1]) + 1
                region.append(slice(lo, hi))
                stop = idx[-1] - lo + (1 if step > 0 else -1)
                post.append(slice(idx[0] - lo, stop if stop >= 0 else None, step))
            trivial = False
        else:
            raise IndexError(f"ShardedArray supports ints, slices and ..., not {type(k).__name__}"
                             "; use .to_dask() for fancy indexing")
    return tuple(region), (() if trivial else tuple(post))


def open_array(url: str | os.PathLike | Store, *, storage_options: dict[str, Any] | None = None,
               cache: EngineCache | None = None, coalesce: CoalescePolicy | None = None,
               readahead: bool = True, index_max_age: float | None = None,
               progressive: bool = True) -> ShardedArray:
    """Open the Zarr array at ``url`` for lazy reading.

    Parameters
    ----------
    url
        A local path or a ``file://``, ``http(s)://``, ``s3://``, ``gs://`` or ``memory://`` URL
        of a Zarr v3 (sharded or not) or Zarr v2 array, or an already opened store.
    storage_options
        Passed to the transport (``endpoint_url``, ``anon``, ``key``/``secret``, ``profile``...);
        they override the options configured for the URL's prefix.
    cache
        The cache to use; by default the process-wide one (512 MiB, see ``set_cache_budget``).
    coalesce
        Gap and size limits for merging byte ranges into one request.
    readahead
        On a miss, fetch the rest of the plane's chunk row in the same batch.
    index_max_age
        Seconds after which a cached shard index is re-read; None trusts it until ``refresh()``.
    progressive
        On a cold read that needs only the top of its inner chunks (a plane near the top of a
        chunk row), decode that part first and return, then resume each chunk's decoder in
        the background (zstd or gzip chunks in C order). What a viewer wants: a cold z-step
        about 2x sooner. Resuming costs ~10% more CPU than decoding a chunk in one go, so a
        loop that reads every plane of a row as fast as it can is ~5-10% faster with ``False``,
        which decodes chunks whole before returning.
    """
    store = url if isinstance(url, Store) else open_store(url, storage_options)
    return _open(store, None, cache=cache, coalesce=coalesce, readahead=readahead,
                 index_max_age=index_max_age, progressive=progressive)


def _open(store: Store, zarr_json: bytes | None, **options: Any) -> ShardedArray:
    try:
        meta = read_array_meta(store, zarr_json=zarr_json)
        reason = None
    except UnsupportedCodecError as e:
        meta, reason = _meta_for_fallback(store, str(e)), str(e)
    return ShardedArray(store, meta, fallback_reason=reason, **options)


def open_arrays(store: Store, paths: Sequence[str], *,
                zarr_jsons: Sequence[bytes | None] | None = None,
                **options: Any) -> list[ShardedArray]:
    """Open the arrays at ``paths`` below ``store`` (pyramid levels), fetching all their
    ``zarr.json`` in one concurrent batch instead of one round trip each (or taking them from
    ``zarr_jsons`` when the caller fetched them in a batch of its own)."""
    paths = [p.strip("/") for p in paths]
    if zarr_jsons is None:
        zarr_jsons = [r.whole for r in store.read_many(
            [FullRequest(f"{p}/zarr.json" if p else "zarr.json") for p in paths])]
    return [_open(store.child(p) if p else store, raw, **options)
            for p, raw in zip(paths, zarr_jsons, strict=True)]


def _meta_for_fallback(store: Store, reason: str) -> ArrayMeta:
    """Shape, dtype and grid of an array whose codecs the engine does not implement."""
    import zarr

    from .fallback import zarr_store_for

    try:
        arr = zarr.open_array(store=zarr_store_for(store), mode="r")
    except (TypeError, ValueError, AttributeError, KeyError, NotImplementedError) as e:
        # Garbage metadata, not a codec chain zarr-python knows: say what the engine saw.
        raise MetadataError(f"{reason}; zarr-python cannot open it either "
                            f"({type(e).__name__}: {e})") from e
    shards = getattr(arr, "shards", None)
    return ArrayMeta(zarr_format=arr.metadata.zarr_format, shape=tuple(arr.shape),
                     dtype=np.dtype(arr.dtype), fill_value=arr.fill_value,
                     grid_shape=tuple(shards or arr.chunks), key_prefix="", key_separator="/",
                     codecs=None, sharding=None, attributes=dict(arr.attrs))
