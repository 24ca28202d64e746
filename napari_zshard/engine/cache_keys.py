"""The array part of the engine's cache keys: one small int per distinct array layout."""

from __future__ import annotations

import threading
from dataclasses import is_dataclass

from ..store import Store
from .metadata import ArrayMeta


class CacheToken(int):
    """The array part of a cache key: one small int per distinct array layout.

    Cache keys are ``(token, coords)``; a warm plane looks up hundreds of them, and hashing an
    int is cheap where a tuple describing the layout would be re-hashed for every lookup.
    ``url`` says which store the entries came from (for :meth:`EngineCache.forget`).
    """

    url: str


_tokens: dict[tuple, CacheToken] = {}
_tokens_lock = threading.Lock()


def _token_for(layout: tuple) -> CacheToken:
    with _tokens_lock:
        token = _tokens.get(layout)
        if token is None:
            token = _tokens[layout] = CacheToken(len(_tokens))
            token.url = layout[0]
        return token


def cache_token(store: Store, meta: ArrayMeta) -> CacheToken:
    """What cache entries of this array are keyed by: the store and the array's layout.

    The caches are process-wide, so an array rewritten at the same URL with another shape,
    dtype, grid or codec chain must never meet the entries of the old one (stale indexes of
    another size, chunks of another shape or dtype).
    """
    codecs = meta.chunk_codecs
    spec = meta.sharding
    return _token_for((
        store.url, meta.zarr_format, meta.shape, meta.dtype.str, repr(meta.fill_value),
        meta.grid_shape, meta.chunk_shape, meta.key_prefix, meta.key_separator,
        codecs.endian, codecs.order, tuple(repr(f) for f in codecs.filters),
        tuple(repr(c) if is_dataclass(c) else type(c).__name__ for c in codecs.bytes_codecs),
        None if spec is None else (spec.index_location, spec.index_checksum, spec.index_endian)))
