"""The shard index: ``(offset, nbytes)`` per inner chunk, validated before any entry is used."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import CorruptShardError
from .codecs import Crc32cCodec
from .metadata import ShardingSpec

EMPTY = np.uint64(2**64 - 1)
_EMPTY_INT = 2**64 - 1


@dataclass(frozen=True)
class ShardIndex:
    """Validated index of one shard. ``entries`` has shape (n_chunks, 2), C order of chunks."""

    key: str
    entries: np.ndarray  # uint64 (offset, nbytes); EMPTY rows are missing chunks
    object_size: int | None
    # ``entries`` flat, as a memoryview (set by __post_init__; not compared nor shown)
    _items: memoryview = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The same numbers as Python ints on indexing: a plane looks up hundreds of entries, and
        # a memoryview item costs a tenth of a numpy row unpacked into ints.
        flat = np.ascontiguousarray(self.entries, dtype=np.uint64).reshape(-1)
        object.__setattr__(self, "_items", flat.data)

    def __reduce__(self):
        return (type(self), (self.key, self.entries, self.object_size))

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes + 64

    def chunk_slice(self, flat: int) -> tuple[int, int] | None:
        """``(offset, nbytes)`` of inner chunk ``flat`` (C order in the shard), or None if empty."""
        items = self._items
        offset = items[2 * flat]
        if offset == _EMPTY_INT:
            return None
        return offset, items[2 * flat + 1]


def decode_index(raw: bytes | memoryview, *, spec: ShardingSpec, n_chunks: int, key: str,
                 where: str, object_size: int | None) -> ShardIndex:
    """Parse and validate a shard index read from ``key``.

    Checks: the index has its exact size (a shorter shard is truncated, a 0-byte shard corrupt),
    the crc32c matches, the empty marker is both-or-neither, every entry lies inside the object
    and none overlaps the index itself. Errors name the key and the entry.
    """
    expected = n_chunks * 16 + (4 if spec.index_checksum else 0)
    if object_size == 0 or len(raw) == 0:
        raise CorruptShardError(f"{where}/{key}: shard is 0 bytes (a missing shard has no file; "
                                "an empty file is corrupt)")
    if len(raw) != expected:
        raise CorruptShardError(f"{where}/{key}: shard has {len(raw)} bytes where its index "
                                f"needs {expected}: truncated")
    body = raw
    if spec.index_checksum:
        try:
            body = Crc32cCodec().decode(raw, n_chunks * 16)
        except Exception as e:
            raise CorruptShardError(f"{where}/{key}: shard index checksum mismatch") from e
    dt = np.dtype("<u8" if spec.index_endian == "little" else ">u8")
    entries = np.frombuffer(body, dtype=dt, count=n_chunks * 2).reshape(n_chunks, 2)
    entries = entries.astype(np.uint64, copy=False)
    off, length = entries[:, 0], entries[:, 1]
    empty_off, empty_len = off == EMPTY, length == EMPTY
    bad = np.flatnonzero(empty_off != empty_len)
    if bad.size:
        raise CorruptShardError(f"{where}/{key}: index entry {int(bad[0])} has only one half of "
                                "the empty marker (2^64-1)")
    used = ~empty_off
    # Work in Python ints / float-safe comparisons: offset + nbytes may overflow uint64.
    limit = np.uint64(2**62)
    big = np.flatnonzero(used & ((off >= limit) | (length >= limit)))
    if big.size:
        i = int(big[0])
        raise CorruptShardError(f"{where}/{key}: index entry {i} (offset {int(off[i])}, "
                                f"{int(length[i])} bytes) is out of range")
    end = off + length
    index_bytes = np.uint64(expected)
    # Past the end first: such an entry also "overlaps" an index stored at the end, but the
    # file being too short is what the user must hear about.
    if object_size is not None:
        past = np.flatnonzero(used & (end > np.uint64(object_size)))
        if past.size:
            i = int(past[0])
            raise CorruptShardError(f"{where}/{key}: index entry {i} points past the end of the "
                                    f"file (offset {int(off[i])} + {int(length[i])} bytes > "
                                    f"{object_size})")
    if spec.index_location == "start":
        overlap = np.flatnonzero(used & (off < index_bytes))
    else:
        data_end = None if object_size is None else object_size - expected
        overlap = (np.flatnonzero(used & (end > np.uint64(data_end))) if data_end is not None
                   and data_end >= 0 else np.array([], dtype=np.intp))
    if overlap.size:
        i = int(overlap[0])
        raise CorruptShardError(f"{where}/{key}: index entry {i} (offset {int(off[i])}, "
                                f"{int(length[i])} bytes) overlaps the shard index")
    return ShardIndex(key=key, entries=np.ascontiguousarray(entries), object_size=object_size)


def encode_index(entries: np.ndarray, spec: ShardingSpec) -> bytes:
    """Serialise ``entries`` (n_chunks, 2) uint64 with the spec's endianness and checksum."""
    dt = "<u8" if spec.index_endian == "little" else ">u8"
    body = np.ascontiguousarray(entries, dtype=dt).tobytes()
    return Crc32cCodec().encode(body) if spec.index_checksum else body
