"""zarr-python's own read path, for codec chains the engine does not implement.

Correct but slower: it never gives wrong data, and it is logged at debug level so a user who
wonders why a store is slow can find out.

Bounded like the engine: zarr-python decompresses whatever a frame asks for (a 16³ uint16 chunk
whose zstd frame declares 2 GiB took 8 GiB of memory), so the fallback reads through
:class:`BoundedZarrStore`, which checks every chunk's bytes before zarr-python sees them: a
zstd frame may not declare (or, without a declared size, stream) more than the chunk holds,
nor a gzip/zlib stream expand past it. Otherwise :class:`DecompressionBombError`, as the
engine raises. Other compressors behind the fallback are not checked (their headers are not
known here); the engine implements the common ones itself.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import CorruptDataError, DecompressionBombError
from ..store import Store
from ..store.url import redact_url
from .codecs import declared_size_error, zstd_frame_content_size

log = logging.getLogger(__name__)

_ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
#: Decoded bytes allowed per element of a variable-length dtype (strings), whose chunks have
#: no fixed size: generous, but finite.
VARIABLE_ITEM_BOUND = 1024
#: How much more than the array's dtype a chunk may decompress to when filters come first.
FILTER_GROWTH = 8
_EMPTY = 2**64 - 1
_METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def zarr_store_for(store: Store, *, read_only: bool = True):
    """A zarr-python store over the same location (and options) as ``store``."""
    import zarr.storage

    from ..store.local import LocalStore

    if isinstance(store, LocalStore):
        return zarr.storage.LocalStore(str(store.root), read_only=read_only)
    options = dict(store.options)
    if store.url.startswith("s3://") and hasattr(store, "fs"):
        options.setdefault("anon", getattr(store.fs, "anon", False))
    return zarr.storage.FsspecStore.from_url(store.url, storage_options=options or None,
                                             read_only=read_only)


def check_chunk_bytes(data: Any, bound: int, where: str) -> None:
    """Raise :class:`DecompressionBombError` when ``data`` (one encoded chunk) is a zstd frame
    or gzip/zlib stream that decodes to more than ``bound`` bytes. Costs a header read, or a
    bounded trial decode when the frame does not declare its size."""
    mv = memoryview(data).cast("B")
    if bytes(mv[:4]) == _ZSTD_MAGIC:
        try:
            declared = zstd_frame_content_size(mv)
        except CorruptDataError as e:
            raise CorruptDataError(f"{where}: {e}") from e
        if declared is not None:
            if declared > bound:
                error = declared_size_error("zstd frame", declared, bound)
                raise type(error)(f"{where}: {error}")
            return
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(mv, read_across_frames=True) as r:
            try:
                produced = len(r.read(bound + 1))
            except zstandard.ZstdError:
                return  # corrupt, not a bomb: zarr-python reports it
        if produced > bound:
            raise DecompressionBombError(
                f"{where}: zstd frame expands beyond the {bound} bytes the chunk holds")
    elif len(mv) >= 2 and (bytes(mv[:2]) == b"\x1f\x8b" or (
            mv[0] & 0x0F == 8 and (mv[0] << 8 | mv[1]) % 31 == 0)):
        try:  # gzip or zlib header, whichever it is
            produced = len(zlib.decompressobj(47).decompress(mv, bound + 1))
        except zlib.error:
            return  # not a stream after all, or corrupt: zarr-python reports it
        if produced > bound:
            raise DecompressionBombError(
                f"{where}: compressed stream expands beyond the {bound} bytes the chunk holds")


def _layout(array) -> tuple[int, dict[str, Any] | None]:
    """(decoded bytes one chunk may hold, the shard layout or None) of a zarr-python array."""
    codecs = getattr(array.metadata, "codecs", ())
    sharding = next((c for c in codecs if type(c).__name__ == "ShardingCodec"), None)
    chunk = tuple(sharding.chunk_shape) if sharding is not None else tuple(array.chunks)
    dtype = np.dtype(array.dtype)
    per_item = dtype.itemsize if dtype.kind not in "OT" and dtype.itemsize else \
        VARIABLE_ITEM_BOUND
    bound = math.prod(chunk) * per_item
    if _has_filters(array, sharding):
        # filters may store a wider type than the array's (numcodecs' AsType: uint8 as f8)
        bound *= FILTER_GROWTH
    if sharding is None:
        return bound, None
    n = math.prod(s // c for s, c in zip(array.shards, chunk, strict=True))
    crc = sum(4 for c in sharding.index_codecs if "crc32c" in type(c).__name__.lower())
    location = getattr(sharding.index_location, "value", sharding.index_location)
    return bound, {"entries": n, "index_size": 16 * n + crc, "start": location == "start"}


def _has_filters(array, sharding) -> bool:
    """Whether ``array``'s chunks pass array→array codecs (v3) or filters (v2)."""
    from zarr.abc.codec import ArrayArrayCodec

    if getattr(array.metadata, "filters", None):  # Zarr v2
        return True
    codecs = sharding.codecs if sharding is not None else getattr(array.metadata, "codecs", ())
    return any(isinstance(c, ArrayArrayCodec) for c in codecs)


def _bounded_store_class():
    from zarr.abc.store import RangeByteRequest, SuffixByteRequest
    from zarr.storage import WrapperStore

    class BoundedZarrStore(WrapperStore):
        """A zarr-python store whose chunk reads are checked by :func:`check_chunk_bytes`."""

        def __init__(self, store, *, bound: int, shard: dict[str, Any] | None, where: str):
            super().__init__(store)
            self.bound, self.shard, self.where = bound, shard, where
            # offset -> index entry, of the shards whose index went by lately (for messages)
            self._entries: dict[str, dict[int, int]] = {}

        def _remember_index(self, key: str, index, n_entries: int) -> None:
            entries = np.frombuffer(bytes(index[:16 * n_entries]), "<u8")
            if len(self._entries) >= 64:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = {int(o): i for i, o in enumerate(entries[0::2]) if o != _EMPTY}

        def _with_store(self, store):
            return type(self)(store, bound=self.bound, shard=self.shard, where=self.where)

        async def get(self, key, prototype, byte_range=None):
            buf = await self._store.get(key, prototype, byte_range)
            if buf is None or key.rsplit("/", 1)[-1] in _METADATA:
                return buf
            data = buf.as_numpy_array().view(np.uint8).reshape(-1)
            where = f"{self.where}/{key}"
            if self.shard is None:
                check_chunk_bytes(data, self.bound, f"{where} (read through zarr-python)")
                return buf
            size = self.shard["index_size"]
            if byte_range is None:  # a whole shard: every chunk its index names
                index = data[:size] if self.shard["start"] else data[len(data) - size:]
                entries = np.frombuffer(index[:16 * self.shard["entries"]].tobytes(), "<u8")
                for i, (offset, length) in enumerate(entries.reshape(-1, 2)):
                    if offset == _EMPTY or offset + length > len(data):
                        continue  # (empty; a bad entry is zarr-python's to report)
                    check_chunk_bytes(data[offset:offset + length], self.bound,
                                      f"{where}: inner chunk at index entry {i} (read through "
                                      "zarr-python)")
            elif ((isinstance(byte_range, SuffixByteRequest) and byte_range.suffix == size)
                  or (isinstance(byte_range, RangeByteRequest) and self.shard["start"]
                      and (byte_range.start, byte_range.end) == (0, size))):
                # the index: nothing to decompress
                self._remember_index(key, data, self.shard["entries"])
            else:
                start = getattr(byte_range, "start", None)
                entry = None if start is None else self._entries.get(key, {}).get(start)
                which = f"index entry {entry}" if entry is not None else f"bytes {start}-"
                check_chunk_bytes(data, self.bound, f"{where}: inner chunk at {which} (read "
                                  "through zarr-python)")
            return buf

    return BoundedZarrStore


def open_bounded(store: Store):
    """``zarr.open_array`` of ``store`` reading through a :class:`BoundedZarrStore`."""
    import zarr

    plain = zarr.open_array(store=zarr_store_for(store), mode="r")
    bound, shard = _layout(plain)
    bounded = _bounded_store_class()(zarr_store_for(store), bound=bound, shard=shard,
                                     where=redact_url(store.url))
    return zarr.open_array(store=bounded, mode="r")


class ZarrFallbackReader:
    """Reads regions with ``zarr.open_array`` for arrays the engine cannot decode itself."""

    def __init__(self, store: Store, reason: str):
        log.debug("reading %s through zarr-python: %s", redact_url(store.url), reason)
        self.reason = reason
        self.store = store
        self.array = open_bounded(store)

    def read(self, region: Sequence[slice], out: np.ndarray | None = None) -> np.ndarray:
        data = np.asarray(self.array[tuple(region)])
        if out is not None:
            out[...] = data
            return out
        return data

    def refresh(self) -> None:
        self.array = open_bounded(self.store)
