"""Turning the fetched bytes of an inner chunk into its cached array, on the decode pool.

:class:`ChunkDecoder` serves one :class:`~.reader.RegionReader`: a chunk's bytes are decoded
whole (:meth:`ChunkDecoder.decode_into`), or, for a read that needs only its top, that prefix
first and the rest later by the same decoder (:meth:`ChunkDecoder.decode_prefix_first`,
:mod:`.progressive`). Either way the chunk's promise is settled, the decoded-chunk cache filled
or failed, and a decode error names the store, the key, the chunk and its index entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CorruptDataError
from ..store.pool import LATER, decode_pool
from .progressive import Prefix, decode_prefix
from .promise import Promise
from .slab import Slab

if TYPE_CHECKING:
    from .reader import RegionReader

Coords = tuple[int, ...]
#: ``(store key, index entry (-1: unsharded), stored bytes)`` of one inner chunk.
Source = tuple[str, int, memoryview]


class _Fill:
    """Marker for a chunk that is not stored: it reads as the fill value."""

    nbytes = 0

    def __repr__(self) -> str:
        return "FILL"


FILL = _Fill()


class NotProgressive(Exception):
    """A chunk that is not decoded front to back after all (fill value, or its fetch failed):
    readers wait for the chunk's own future instead."""


class ChunkDecoder:
    """The decoding of one :class:`~.reader.RegionReader`'s chunks: its layout, caches and
    counters."""

    def __init__(self, reader: RegionReader):
        self.url = reader.store.url
        self.meta = reader.meta
        self.cache = reader.cache
        self.token = reader.token
        self.counters = reader.counters
        self.progressive = reader._progressive
        self.chunk_nbytes = reader._chunk_nbytes

    def fail(self, coords: Coords, fut: Promise, error: BaseException,
             partials: dict[Coords, Promise] | None = None) -> None:
        """The chunk's fetch failed: its promise, cache entry and prefix entry say so."""
        if not fut.done():
            self.cache.chunks.fail([(self.token, coords)], error)
            fut.set_exception(error)
        if partials:
            self.close_partial(coords, partials.get(coords), error)

    def close_partial(self, coords: Coords, partial: Promise | None,
                      error: BaseException | None = None) -> None:
        """Readers of this chunk wait for its own future from now on (unless its prefix was
        set, it never will be: fill value, failed fetch, or decoded whole)."""
        if partial is not None:
            partial.set_exception(error or NotProgressive())
            self.cache.partials.close((self.token, coords), partial)

    def decode_into(self, coords: Coords, src: Source, fut: Promise, slab: Slab | None = None,
                    *, count: bool = True, decode: Callable[[], np.ndarray] | None = None
                    ) -> None:
        """Decode the chunk whole into the cache (into its slot of ``slab``, if any) and settle
        ``fut`` with it (or its error)."""
        if fut.done():  # the batch already failed
            return
        try:
            fut.set_result(self.decode_one(coords, src, count=count, decode=decode, slab=slab))
        except BaseException as e:
            fut.set_exception(e)

    def decode_prefix_first(self, coords: Coords, src: Source, fut: Promise, partial: Promise,
                            need: int, slab: Slab | None = None) -> None:
        """Decode the first ``need`` bytes of a chunk for the read waiting on them; the rest
        later, at low priority, by the same decoder (a failure is reported by then, at once)."""
        if fut.done():  # the batch already failed
            self.close_partial(coords, partial)
            return
        meta = self.meta
        try:
            prefix = decode_prefix(self.progressive, src[2], meta.chunk_shape, meta.dtype, need,
                                   out=None if slab is None else slab.slot(coords))
        except Exception:  # decoded whole instead, which reports the error with its location
            try:
                self.decode_into(coords, src, fut, slab)
            finally:
                self.close_partial(coords, partial)
            return
        self.counters.add(chunks_decoded=1, decoded_bytes=prefix.done)
        if slab is not None:  # decoded into its slot
            slab.decoded(coords, prefix.done)
        partial.set_result((prefix.array, prefix.done))
        decode_pool().post(self._finish, coords, src, fut, partial, prefix, slab, priority=LATER)

    def _finish(self, coords: Coords, src: Source, fut: Promise, partial: Promise,
                prefix: Prefix, slab: Slab | None) -> None:
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

        try:
            self.decode_into(coords, src, fut, slab, count=False, decode=rest)
        finally:
            self.close_partial(coords, partial)

    def decode_one(self, coords: Coords, src: Source, *, count: bool = True,
                   verified: bool = False, decode: Callable[[], np.ndarray] | None = None,
                   slab: Slab | None = None) -> np.ndarray:
        """Decode a chunk whole into the cache (``verified``: its crc32c was already checked;
        ``decode``: how, instead of the chain's one-shot decode; ``slab``: whose slot it is
        decoded into, and whose chunks the cache evicts together)."""
        key, entry, data = src
        meta = self.meta
        try:
            arr = (meta.chunk_codecs.decode(data, meta.chunk_shape, meta.dtype,
                                            out=None if slab is None else slab.slot(coords),
                                            checksum_verified=verified)
                   if decode is None else decode())
        except BaseException as e:
            if slab is not None:
                slab.failed()
            error = e
            if isinstance(e, CorruptDataError):  # name the store, key, chunk and index entry
                where = f" (index entry {entry})" if entry >= 0 else ""
                error = type(e)(f"{self.url}/{key}: inner chunk {coords}{where}: {e}")
            self.cache.chunks.fail([(self.token, coords)], error)
            if error is e:
                raise
            raise error from e
        arr.flags.writeable = False
        if count:
            self.counters.add(chunks_decoded=1, decoded_bytes=arr.nbytes)
        # a chain that decoded into an array of its own leaves its slot empty: not in the group
        group = slab if slab is not None and slab.holds(coords, arr) else None
        if group is not None:
            group.decoded(coords, arr.nbytes)
        self.cache.chunks.fulfil((self.token, coords), arr, arr.nbytes, group)
        return arr
