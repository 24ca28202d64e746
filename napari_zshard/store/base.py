"""The store contract: batched byte reads, atomic writes, a credential-free identity."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

from .requests import ByteRequest, ByteResult, FullRequest
from .stats import RequestStats

# Option names whose values are secrets: never in reprs, logs, pickles or dask graphs.
_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "auth", "headers",
                 "connection_string")
# "session": a botocore/aiobotocore session object carries resolved credentials.
_SECRET_NAMES = {"aws_access_key_id", "session", "sas_token"}


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return (lowered in _SECRET_NAMES or lowered.endswith("key")  # key, access_key, private_key
            or any(word in lowered for word in _SECRET_WORDS))


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without anything that could be a credential (recursively)."""
    out: dict[str, Any] = {}
    for name, value in options.items():
        if _is_secret(name):
            continue
        out[name] = public_options(value) if isinstance(value, dict) else value
    return out


class Store(ABC):
    """A place holding keyed objects (a folder, a bucket prefix, a URL prefix).

    Subclasses implement :meth:`read_many`, which fetches a whole batch concurrently, and the
    write primitives. ``url`` is the canonical address without credentials.
    """

    url: str
    read_only: bool = False

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url
        self.options = dict(options or {})
        self.stats = RequestStats()

    # -- reading ---------------------------------------------------------------------------
    @abstractmethod
    def read_many(self, requests: Sequence[ByteRequest]) -> list[ByteResult]:
        """Fetch every request concurrently; results in request order.

        A missing object gives ``ByteResult(None)``. A range that runs past the end of the
        object raises :class:`~napari_zshard.errors.ShortReadError`.
        """

    def read(self, key: str) -> bytes | None:
        """The whole object ``key``, or None when it does not exist."""
        return self.read_many([FullRequest(key)])[0].data

    # -- writing ---------------------------------------------------------------------------
    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Replace ``key`` with ``data`` atomically: readers see the old or the new bytes."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object below ``prefix`` (for fsck and info)."""

    # -- identity --------------------------------------------------------------------------
    def child(self, path: str) -> Store:
        """The store rooted at ``path`` below this one (same transport and options)."""
        from .url import open_store

        return open_store(f"{self.url.rstrip('/')}/{path.strip('/')}", self.options)

    def __reduce__(self):
        # A pickled store (dask graphs, worker processes) carries the address and the
        # non-secret options only; the receiving process resolves credentials itself.
        from .url import open_store

        return (open_store, (self.url, public_options(self.options)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
