"""Turning the fetched bytes of an inner chunk into its cached array, on the decode pool.

A chunk's bytes are decoded whole (:meth:`ChunkDecoder.decode`), or, for a read that needs
only its top, that prefix first and the rest later at low priority into the same array
(:meth:`ChunkDecoder.decode_prefix_first`, :mod:`.progressive`). Either way the chunk's
in-flight unit (:mod:`.inflight`) hears of its progress, the decoded-chunk cache is filled
or failed, and a decode error names the store, the key, the chunk and its index entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import CorruptDataError
from .cache import EngineCache
from .cache_keys import CacheToken, ChunkKey
from .counters import ReadCounters
from .inflight import COMPLETE, InFlight
from .metadata import ArrayMeta
from .pools import LATER, decode_pool
from .progressive import MAX_PREFIX_SHARE, Prefix, decode_prefix, progressive_codecs
from .slab import Slab

Coords = tuple[int, ...]
#: ``(store key, index entry (-1: unsharded), stored bytes)`` of one inner chunk.
Source = tuple[str, int, memoryview]


class _Fill:
    """Marker for a chunk that is not stored: it reads as the fill value."""

    nbytes = 0

    def __repr__(self) -> str:
        return "FILL"


FILL = _Fill()


class ChunkDecoder:
    """Decodes the chunks of one array (``where``: its store's URL, for error messages) into
    ``cache`` under ``token``, counting into ``counters``; ``progressive``: decode a prefix
    first when a read needs only the top of a chunk and the codecs allow it."""

    def __init__(self, where: str, meta: ArrayMeta, cache: EngineCache, token: CacheToken,
                 counters: ReadCounters, *, progressive: bool = True):
        self.where, self.meta, self.cache, self.token = where, meta, cache, token
        self.counters = counters
        self.chunk_nbytes = math.prod(meta.chunk_shape) * meta.dtype.itemsize
        # the codecs when chunks can be decoded front to back (engine/progressive.py)
        self.progressive = (progressive_codecs(meta.chunk_codecs, meta.dtype) if progressive
                             else None)

    def prefix_pays(self, need: int) -> bool:
        """Whether a read that needs the first ``need`` bytes of a chunk is served sooner by
        decoding that prefix first."""
        return (self.progressive is not None
                and need <= MAX_PREFIX_SHARE * self.chunk_nbytes)

    def fill(self, unit: InFlight[ChunkKey], coords: Coords) -> None:
        """The chunk is not stored: it reads as the fill value."""
        key = (self.token, coords)
        unit.publish(key, FILL)
        self.cache.chunks.fulfil(key, FILL, 64)

    def fail(self, coords: list[Coords], error: BaseException) -> None:
        """The fetch of ``coords`` failed: their claims and waiters say so."""
        self.cache.chunks.fail([(self.token, c) for c in coords], error)

    def decode(self, unit: InFlight[ChunkKey], coords: Coords, src: Source,
               slab: Slab | None = None, *, decode: Callable[[], np.ndarray] | None = None,
               count: bool = True) -> None:
        """Decode the chunk whole (into its slot of ``slab``, if any) into the cache and the
        unit, or fail it there. ``decode``: how, instead of the codec chain's one-shot decode."""
        key, entry, data = src
        meta = self.meta
        try:
            arr = (meta.chunk_codecs.decode(data, meta.chunk_shape, meta.dtype,
                                            out=None if slab is None else slab.slot(coords))
                   if decode is None else decode())
        except BaseException as e:
            error = e
            if isinstance(e, CorruptDataError):  # name the store, key, chunk and index entry
                where = f" (index entry {entry})" if entry >= 0 else ""
                error = type(e)(f"{self.where}/{key}: inner chunk {coords}{where}: {e}")
                error.__cause__ = e
            self.fail([coords], error)
            return
        arr.flags.writeable = False
        if count:
            self.counters.add(chunks_decoded=1, decoded_bytes=arr.nbytes)
        # a chain that decoded into an array of its own leaves its slot empty: not in the group
        group = slab if slab is not None and slab.holds(coords, arr) else None
        ckey = (self.token, coords)
        unit.publish(ckey, arr)
        self.cache.chunks.fulfil(ckey, arr, arr.nbytes, group)

    def decode_prefix_first(self, unit: InFlight[ChunkKey], coords: Coords, src: Source, need: int,
                            slab: Slab | None = None) -> None:
        """Decode the first ``need`` bytes of a chunk for the read waiting on them; the rest
        later, at low priority (a failure is reported by then, at once)."""
        meta = self.meta
        codecs = self.progressive
        assert codecs is not None  # only posted when prefix_pays(), which needs them
        out = None if slab is None else slab.slot(coords)
        try:
            prefix = decode_prefix(codecs, src[2], meta.chunk_shape, meta.dtype,
                                   need, out=out)
        except Exception:  # decoded whole instead, which reports the error with its location
            self.decode(unit, coords, src, slab)
            return
        self.counters.add(chunks_decoded=1, decoded_bytes=prefix.done)
        unit.publish((self.token, coords), prefix.array, prefix.done)
        decode_pool().post(self._finish, unit, coords, src, prefix, slab, priority=LATER)

    def _finish(self, unit: InFlight[ChunkKey], coords: Coords, src: Source, prefix: Prefix,
                slab: Slab | None) -> None:
        """Decode the rest of a chunk whose prefix was decoded first, into the same array."""
        meta, before = self.meta, prefix.done

        def rest() -> np.ndarray:
            whole = prefix.finish()
            if whole is not None:
                self.counters.add(decoded_bytes=self.chunk_nbytes - before)
                return whole
            # bytes after the stream: the one-shot decoder judges them (crc32c already checked)
            self.counters.add(decoded_bytes=self.chunk_nbytes)
            return meta.chunk_codecs.decode(src[2], meta.chunk_shape, meta.dtype,
                                            out=prefix.array, checksum_verified=True)

        self.decode(unit, coords, src, slab, decode=rest, count=False)


__all__ = ["COMPLETE", "FILL", "ChunkDecoder", "Source"]
