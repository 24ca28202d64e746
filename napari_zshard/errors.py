"""Exception classes. Every message names the store and key it is about and says what to do."""

from __future__ import annotations


class ZShardError(Exception):
    """Base class of every error napari-zshard raises on purpose."""


class StoreError(ZShardError):
    """A store could not be reached or read."""


class UnsupportedURLError(StoreError, ValueError):
    """The URL's protocol is unknown or its backend is not installed."""


class ConcurrentUpdateError(StoreError):
    """A read-modify-write of one object met a concurrent writer on every try and gave up.

    Nothing of this update was committed; the object holds what the other writers wrote.
    """

    def __init__(self, message: str, *, key: str, tries: int):
        super().__init__(message)
        self.key = key
        self.tries = tries


class UpdateNotSupportedError(StoreError, NotImplementedError):
    """This store (protocol or platform) cannot do a concurrency-safe read-modify-write."""


class RemoteReadError(StoreError, OSError):
    """A remote read still failed after every retry."""


class RangeNotSupportedError(StoreError):
    """The server answered a byte-range request with something other than that range."""


class ShortReadError(StoreError):
    """A byte range came back shorter than requested (the object ends early)."""

    def __init__(self, message: str, *, key: str, start: int, requested: int, received: int):
        super().__init__(message)
        self.key = key
        self.start = start
        self.requested = requested
        self.received = received


class UnsafeKeyError(ZShardError, ValueError):
    """A store key taken from metadata would escape the store (``..``, absolute path, NUL)."""


class MetadataError(ZShardError, ValueError):
    """``zarr.json`` / ``.zarray`` is missing, not valid JSON, or describes something impossible."""


class UnsupportedCodecError(ZShardError):
    """The engine does not implement this codec chain (the caller falls back to zarr-python)."""


class CorruptDataError(ZShardError):
    """Stored bytes are inconsistent: a corrupt shard index, bad checksum, undecodable chunk."""


class CorruptShardError(CorruptDataError):
    """A shard's index is invalid, or the shard is truncated or empty."""


class ChecksumError(CorruptDataError):
    """A crc32c checksum did not match: the bytes were changed after they were written."""


class DecompressionBombError(CorruptDataError):
    """A compressed chunk expands to more bytes than the chunk can hold."""


class ChunkSizeMismatchError(CorruptDataError):
    """A chunk's stored data is a few times larger or smaller than its shape and data type
    allow: the metadata (``data_type``, chunk shape) does not describe what was written.

    Not a :class:`DecompressionBombError`: the frame's header says so before anything is
    allocated, and the usual cause is a ``zarr.json`` edited or written for other data.
    """


class AnnotationError(ZShardError):
    """An annotation checkout or commit cannot go ahead (the message says why and what to do)."""


class ReadOnlyStoreError(AnnotationError, StoreError):
    """The store cannot take annotations: read-only (HTTP) or without safe concurrent writes."""


class UnsupportedLabelImageError(AnnotationError):
    """The label image is unsharded or Zarr v2: annotations write sharded Zarr v3 only."""


class LabelValueError(AnnotationError, ValueError):
    """A label value does not fit the label image's data type."""
