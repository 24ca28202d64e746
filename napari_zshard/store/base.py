"""The store contract: batched byte reads, atomic writes, concurrency-safe read-modify-writes,
a credential-free identity."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConcurrentUpdateError, StoreError, UpdateNotSupportedError
from ..keys import validate_key
from .requests import ByteRequest, ByteResult, FullRequest
from .stats import RequestStats

ResultCallback = Callable[[int, ByteResult], None]
#: ``on_progress(i, body, available)``: the first ``available`` bytes of request ``i``'s body
#: have arrived in ``body`` (a read-only view of the whole body's buffer) and will not change.
ProgressCallback = Callable[[int, memoryview, int], None]

log = logging.getLogger(__name__)

#: ``modify(current) -> new`` of :meth:`Store.update`; None stands for an absent object.
Modify = Callable[[bytes | None], bytes | None]

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
    def read_many(self, requests: Sequence[ByteRequest], *,
                  on_result: ResultCallback | None = None,
                  on_progress: ProgressCallback | None = None) -> list[ByteResult]:
        """Fetch every request concurrently; results in request order.

        A missing object gives ``ByteResult(None)``. A range that runs past the end of the
        object raises :class:`~napari_zshard.errors.ShortReadError`. ``on_result(i, result)``
        is called as each request completes (from an I/O thread; keep it short), so a caller
        can start decoding what arrived while the rest is still in flight. Stores that receive
        a body into its buffer as it arrives also call ``on_progress`` (same thread rules) as
        it fills: a caller can decode the front of a big range before its end arrived. A
        request that is retried starts again from its first byte, into a new buffer.
        """

    def read(self, key: str) -> bytes | None:
        """The whole object ``key``, or None when it does not exist."""
        return self.read_many([FullRequest(key)])[0].whole

    # -- writing ---------------------------------------------------------------------------
    @abstractmethod
    def write(self, key: str, data: bytes | bytearray) -> None:
        """Replace ``key`` with ``data`` atomically: readers see the old or the new bytes.
        (A bytearray too: :class:`BufferedWriter` hands over the one it gathered, uncopied.)"""

    def writer(self, key: str) -> ObjectWriter:
        """A new object for ``key``, written piece by piece and committed atomically as
        :meth:`write` commits (nothing shows at ``key`` before :meth:`ObjectWriter.commit`).

        This default gathers the pieces in memory and passes them to :meth:`write` at the
        commit (one PUT on an object store); a local folder streams them into a temporary file.
        """
        validate_key(key)
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        return BufferedWriter(self, key)

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if it exists."""

    @abstractmethod
    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object below ``prefix`` (for fsck and info)."""

    # -- what interrupted writes leave ----------------------------------------------------
    def abandoned_temporaries(self, prefix: str = "") -> tuple[int, int]:
        """Temporary files below ``prefix`` of writes whose process died: how many, and their
        bytes. None here: an object store never shows a partial object (a local store does)."""
        return 0, 0

    def sweep_temporaries(self, prefix: str = "") -> tuple[int, int]:
        """Remove what :meth:`abandoned_temporaries` counts; returns the same figures."""
        return 0, 0

    # -- concurrent writers ----------------------------------------------------------------
    def update(self, key: str, modify: Modify, *, tries: int = 10) -> bytes | None:
        """Replace ``key`` with ``modify(current)``, atomically with respect to other writers.

        The result is committed only if nobody else committed to ``key`` since it was read;
        otherwise the object is read again and ``modify`` called again (after a randomised,
        growing pause). No concurrent update is ever silently lost.

        Parameters
        ----------
        key
            The object to update.
        modify
            Gets the object's current bytes (None when it does not exist) and returns the new
            bytes, or None to delete the object (or leave it absent). It may be called several
            times, so it must be a pure function of its argument; and since a commit whose
            answer was lost is retried from a fresh read, applying it to its own result must
            change nothing more (merging a region into a shard is such a function).
        tries
            Attempts before giving up. Stores that lock (local, ``memory://``) never conflict.

        Returns
        -------
        bytes or None
            What ``key`` now holds (None: absent).

        Raises
        ------
        ConcurrentUpdateError
            Another writer committed between read and commit on every one of ``tries``
            attempts; nothing of this update was written.
        UpdateNotSupportedError
            This store cannot update safely (a protocol or platform without a primitive for it).
        """
        validate_key(key)
        if tries < 1:
            raise ValueError(f"tries must be at least 1, got {tries}")
        if self.read_only:
            raise StoreError(f"{self.url} is read-only: cannot update {key}")
        for attempt in range(tries):
            began = time.perf_counter()
            result = self._update_once(key, modify)
            if not isinstance(result, _Conflict):
                return result
            log.debug("%s/%s: another writer committed first (try %d of %d)", self.url, key,
                      attempt + 1, tries)
            if attempt + 1 < tries:
                self.stats.record_retry()
                time.sleep(conflict_backoff(attempt, time.perf_counter() - began))
        raise ConcurrentUpdateError(
            f"{self.url}/{key}: another writer committed to this object between read and write "
            f"on each of {tries} tries; this update was not written. Try again, or pass a "
            "larger tries= when many writers share a shard.", key=key, tries=tries)

    def _update_once(self, key: str, modify: Modify) -> bytes | _Conflict | None:
        """One attempt of :meth:`update`: read, modify, commit unless someone committed in
        between. Returns what was committed, or :data:`CONFLICT`."""
        raise UpdateNotSupportedError(
            f"{self.url}: {type(self).__name__} has no concurrency-safe read-modify-write; "
            "write whole objects instead")

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists (write-once objects: commit records).

        True when this call created it; False when it already existed (left unchanged). Of
        concurrent creators exactly one gets True: it goes through :meth:`update`, which is a
        put with ``If-None-Match: *`` on S3 and a locked create locally.
        """
        created = False

        def create(current: bytes | None) -> bytes | None:
            nonlocal created
            created = current is None
            return data if current is None else current

        self.update(key, create)
        return created

    def overwrite(self, key: str, data: bytes | None) -> None:
        """Replace (``data`` None: delete) ``key`` whole without reading it, ordered with
        concurrent :meth:`update` calls so that neither loses the other's write.

        Stores whose updates are compare-and-swap write blindly (an updater in flight sees the
        change and retries); stores that lock write under the same lock. This default goes
        through :meth:`update`: correct wherever updates are, at the cost of a read.
        """
        self.update(key, lambda _current: data)

    # -- identity --------------------------------------------------------------------------
    def child(self, path: str) -> Store:
        """The store rooted at ``path`` below this one (same transport and options).
        ``path`` comes from metadata: checked as a key (see :func:`validate_key`)."""
        from .url import open_store

        path = validate_key(path.strip("/"), what="child path")
        return open_store(f"{self.url.rstrip('/')}/{path}", self.options)

    def __reduce__(self):
        # A pickled store (dask graphs, worker processes) carries the address and the
        # non-secret options only; the receiving process resolves credentials itself.
        from .url import open_store

        return (open_store, (self.url, public_options(self.options)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class ObjectWriter(ABC):
    """An object being written (:meth:`Store.writer`): append, then commit or abort."""

    key: str
    size: int = 0  # bytes appended so far

    @abstractmethod
    def write(self, buffers: Sequence[Any]) -> None:
        """Append ``buffers`` (bytes-like objects), in order."""

    @abstractmethod
    def commit(self) -> None:
        """Replace the object at ``key`` with what was appended, atomically."""

    @abstractmethod
    def abort(self) -> None:
        """Discard what was appended; ``key`` stays as it was. Safe to call more than once."""


class BufferedWriter(ObjectWriter):
    """:meth:`Store.writer`'s default: the object gathered in one buffer, written at commit."""

    def __init__(self, store: Store, key: str):
        self.store, self.key = store, key
        self._data = bytearray()

    def write(self, buffers: Sequence[Any]) -> None:
        for buf in buffers:
            self._data += buf
        self.size = len(self._data)

    def commit(self) -> None:
        data, self._data = self._data, bytearray()
        self.store.write(self.key, data)

    def abort(self) -> None:
        self._data = bytearray()


class _Conflict:
    def __repr__(self) -> str:
        return "CONFLICT"


#: Returned by :meth:`Store._update_once` when another writer committed first.
CONFLICT = _Conflict()


def conflict_backoff(attempt: int, duration: float) -> float:
    """Seconds to wait after conflict number ``attempt + 1`` of an update whose read-modify-
    write took ``duration`` seconds.

    "Full jitter" (uniform up to an exponentially growing bound) spreads writers who collided
    instead of sending them back in lockstep; the bound starts at the duration of one attempt,
    because that is the window in which another writer's commit makes ours fail: a 100 MiB
    shard backs off in seconds, a small one in milliseconds.
    """
    base = max(0.01, duration)
    return random.uniform(0, min(max(1.0, 8 * base), base * 2**attempt))


class KeyLocks:
    """One :class:`threading.Lock` per name, process-wide; a lock nobody refers to is dropped."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

    def get(self, name: str) -> threading.Lock:
        """The lock for ``name`` (hold a reference while using it: that keeps it alive)."""
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = threading.Lock()
                self._locks[name] = lock
            return lock

    def _after_fork(self) -> None:
        # A lock held by another thread at fork time would stay held forever in the child.
        self._guard = threading.Lock()
        self._locks = weakref.WeakValueDictionary()


#: Per-object locks of the stores that serialise updates inside this process.
process_key_locks = KeyLocks()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=process_key_locks._after_fork)
