"""The array part of the engine's cache keys: one small int per distinct array layout."""

from __future__ import annotations

import itertools
import threading
from dataclasses import is_dataclass

from ..store import Store
from .metadata import ArrayMeta


class CacheToken(int):
    """The array part of a cache key: one small int per distinct array layout.

    Cache keys are ``(token, coords)``; a warm plane looks up hundreds of them, and hashing an
    int is cheap where a tuple describing the layout would be re-hashed for every lookup.
    ``url`` says which store the entries came from (for :meth:`EngineCache.forget`);
    ``chunks_per_object`` how many inner chunks each stored object holds per axis. A cached
    chunk is only valid for the object it was decoded from: ``identities`` remembers, per
    shard whose index was read under this token, the identity (ETag, or inode-size-mtime
    locally) that index came from, so that a later read of the index can tell whether the
    shard was replaced meanwhile and its cached chunks must go (engine/fetch_plan.py). One
    small string per shard read in this process.
    """

    url: str
    chunks_per_object: tuple[int, ...]


Coords = tuple[int, ...]
#: A decoded inner chunk's key in :class:`~.cache.EngineCache`: ``(token, chunk coords)``.
ChunkKey = tuple[CacheToken, Coords]
#: A shard index's key in :class:`~.cache.EngineCache`: ``(token, "index", shard coords)``.
IndexKey = tuple[CacheToken, str, Coords]

_tokens: dict[tuple, CacheToken] = {}
_tokens_lock = threading.Lock()


_count = itertools.count()


def _token_for(layout: tuple, chunks_per_object: tuple[int, ...], *, shared: bool
               ) -> CacheToken:
    with _tokens_lock:
        token = _tokens.get(layout) if shared else None
        if token is None:
            token = CacheToken(next(_count))
            token.url = layout[0]
            token.chunks_per_object = chunks_per_object
            if shared:
                _tokens[layout] = token
        return token


def tokens_of(url: str) -> list[CacheToken]:
    """The tokens of every sharded array layout read at ``url`` in this process."""
    with _tokens_lock:
        return [t for t in _tokens.values() if t.url == url]


def cache_token(store: Store, meta: ArrayMeta) -> CacheToken:
    """What cache entries of this array are keyed by: the store and the array's layout.

    The caches are process-wide, so an array rewritten at the same URL with another shape,
    dtype, grid or codec chain must never meet the entries of the old one (stale indexes of
    another size, chunks of another shape or dtype).

    An unsharded array gets a token of its own at every open: its chunks are objects of their
    own, whose identities it would take one request each to check, so a new open never
    trusts chunks an earlier one cached.
    """
    codecs = meta.chunk_codecs
    spec = meta.sharding
    return _token_for((
        store.url, meta.zarr_format, meta.shape, meta.dtype.str, repr(meta.fill_value),
        meta.grid_shape, meta.chunk_shape, meta.key_prefix, meta.key_separator,
        codecs.endian, codecs.order, tuple(repr(f) for f in codecs.filters),
        tuple(repr(c) if is_dataclass(c) else type(c).__name__ for c in codecs.bytes_codecs),
        None if spec is None else (spec.index_location, spec.index_checksum, spec.index_endian)),
        meta.chunks_per_object, shared=spec is not None)
