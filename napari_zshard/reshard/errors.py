"""What can go wrong when resharding, each with a message that says what to do."""

from __future__ import annotations

from ..errors import CorruptDataError, ZShardError


class ReshardError(ZShardError):
    """Base class of the reshard errors."""


class LayoutError(ReshardError, ValueError):
    """The chunk or shard shapes asked for cannot describe the array (rank, multiples)."""


class DestinationError(ReshardError, ValueError):
    """The destination cannot receive this reshard: it is the source, lies inside it, holds
    other data, or holds a reshard (finished or not) with another layout."""


class SourceError(ReshardError):
    """The source cannot be reached or holds nothing to reshard."""


class CorruptSourceError(ReshardError, CorruptDataError):
    """A source shard (or chunk) is corrupt; nothing was written from it."""

    def __init__(self, message: str, *, array: str, shard_key: str):
        super().__init__(message)
        self.array = array
        self.shard_key = shard_key


class VerificationError(ReshardError):
    """The destination differs from the source after the reshard."""
