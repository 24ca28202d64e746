"""Byte requests: what the engine asks a store for, as tiny value objects."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """``length`` bytes of ``key`` starting at ``start``."""

    key: str
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class SuffixRequest:
    """The last ``length`` bytes of ``key`` (a shard index at the end)."""

    key: str
    length: int


@dataclass(frozen=True, slots=True)
class FullRequest:
    """The whole object ``key``."""

    key: str


ByteRequest = RangeRequest | SuffixRequest | FullRequest


@dataclass(frozen=True, slots=True)
class ByteResult:
    """The bytes a request returned, plus what the response told about the whole object.

    ``data`` is ``None`` when the object does not exist; else ``bytes``, or, for a big ranged
    read that a transport received straight into a buffer, a read-only ``memoryview`` (index
    it, ``memoryview()`` it or ``bytes()`` it; whole-object reads are always ``bytes``).
    ``object_size`` is the object's full size when the transport reported it (a local
    ``fstat``, HTTP ``Content-Range``), else None. ``etag`` is the object's identity: its
    ETag remotely, inode-size-mtime locally (:func:`~napari_zshard.store.local.file_identity`);
    None when the transport cannot tell. Cached shard indexes and chunks are only trusted
    for the object identity they were read from (engine/fetch_plan.py).
    """

    data: bytes | memoryview | None
    object_size: int | None = None
    etag: str | None = None

    @property
    def whole(self) -> bytes | None:
        """``data`` of a whole-object read (:class:`FullRequest`), which stores give as
        ``bytes`` (or None): what JSON parsers and ``.decode()`` take. A view, which no store
        returns for a whole object, would be copied rather than passed on."""
        data = self.data
        return bytes(data) if isinstance(data, memoryview) else data
