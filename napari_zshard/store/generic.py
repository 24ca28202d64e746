"""Any other fsspec file system (``memory://``, ``gs://`` through gcsfs, ...).

Reads go through :class:`.remote.RemoteStore`: a batch runs concurrently on fsspec's I/O loop
(an async file system's coroutines directly; a synchronous one's calls in the loop's worker
threads), and a transient failure (a dropped connection, a timeout, HTTP 5xx/408/429 as the
file system reports it) is retried by the same policy as HTTP and S3 reads. gcsfs retries such
failures itself first (up to 6 times, about 30 s of backoff), so on GCS the engine's retries
come after those.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import aiohttp

from ..errors import RemoteReadError, ShortReadError, UnsupportedURLError, UpdateNotSupportedError
from ..keys import validate_key
from .base import Modify, process_key_locks
from .remote import RemoteStore
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest
from .retry import TRANSIENT_HTTP_STATUS, TransientError

_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


def is_transient(error: BaseException) -> bool:
    """Whether a file system's exception is worth another try: a dropped or refused
    connection, a timeout, or an HTTP status that says "later" (aiohttp's ``status``, gcsfs's
    ``code``). A missing object or a refusal is not."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
        return False
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if isinstance(status, int):
        return status in TRANSIENT_HTTP_STATUS
    return isinstance(error, (ConnectionError, TimeoutError, aiohttp.ClientConnectionError,
                              aiohttp.ClientPayloadError))


class FsspecStore(RemoteStore):
    """A store on any fsspec file system. Reads go through ``cat_file``, concurrently."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        super().__init__(url.rstrip("/"), options)
        import fsspec

        protocol, _, path = self.url.partition("://")
        try:
            self.fs = fsspec.filesystem(protocol, **self.fs_options)
        except (ImportError, ValueError) as e:
            extra = _EXTRAS.get(protocol)
            hint = f": pip install 'napari-zshard[{extra}]'" if extra else ""
            raise UnsupportedURLError(f"cannot open {url}: {e}{hint}") from e
        # fsspec's HTTP file system names objects by their whole URL
        self.root = self.url if protocol in ("http", "https") else path
        # an object store behind an async client (gcsfs...), where every lookup is a request
        self._remote = bool(getattr(self.fs, "async_impl", False))
        # where a suffix read (start=-n) is known to be one request ("bytes=-n"): gcsfs only
        self._suffix_request = protocol in ("gs", "gcs")

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else key

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<name>(...)``: an async file system's coroutine on this loop, else the
        synchronous call in one of the loop's worker threads."""
        if self._remote:
            return await getattr(self.fs, f"_{name}")(*args, **kwargs)
        call = functools.partial(getattr(self.fs, name), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def _fetch_once(self, req: ByteRequest, progress=None) -> ByteResult:
        path = self._path(req.key)
        try:
            if isinstance(req, FullRequest):
                data = await self._call("cat_file", path)
                size = len(data)
            elif isinstance(req, RangeRequest) and self._remote:
                # one request, no size lookup first (gcsfs: a metadata GET and a listing); the
                # size matters only if the object is too short
                data = await self._call("cat_file", path, start=req.start,
                                        end=req.start + req.length)
                size = None
            elif isinstance(req, SuffixRequest) and self._suffix_request:
                data, size = await self._read_suffix(path, req.length)
            else:  # the size first (free in process): it is what a suffix read is cut by
                size = await self._call("size", path)
                if isinstance(req, SuffixRequest):
                    start, end = max(0, size - req.length), size
                else:
                    start, end = req.start, req.start + req.length
                data = await self._call("cat_file", path, start=start, end=end)
        except FileNotFoundError:
            return ByteResult(None)
        except Exception as e:
            if is_transient(e):
                raise TransientError(f"{self.url}/{req.key}: {type(e).__name__}: {e}") from e
            if isinstance(e, OSError):
                raise RemoteReadError(f"could not read {self.url}/{req.key}: {e}") from e
            raise
        if isinstance(req, RangeRequest) and len(data) != req.length:
            raise ShortReadError(
                f"{self.url}/{req.key}: asked for bytes {req.start}..{req.start + req.length - 1}"
                f", but the object ends after {req.start + len(data)} bytes",
                key=req.key, start=req.start, requested=req.length, received=len(data),
            )
        return ByteResult(data, object_size=size)

    async def _read_suffix(self, path: str, length: int) -> tuple[bytes, int | None]:
        """The last ``length`` bytes in one request ("bytes=-n"). A server that ignores suffix
        ranges sends everything; fewer bytes than asked for are the whole object. Either
        way the object's size is then known."""
        if not length:
            return b"", None
        data = await self._call("cat_file", path, start=-length)
        return data[-length:], (len(data) if len(data) != length else None)

    def write(self, key: str, data: bytes | bytearray) -> None:
        path = self._path(key)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def update(self, key: str, modify: Modify, *, tries: int = 10) -> bytes | None:
        """Read-modify-write ``key`` (see :meth:`Store.update`).

        ``memory://``: under a lock per object held by this process — the memory file system
        lives inside one process, so that is every writer there is. Any other protocol
        (``gs://`` etc.) raises :class:`UpdateNotSupportedError`: conditional writes (GCS
        generation preconditions) are not implemented for it yet.
        """
        return super().update(key, modify, tries=tries)

    def _update_once(self, key: str, modify: Modify) -> bytes | None:
        if not self._in_memory:
            raise UpdateNotSupportedError(
                f"{self.url}: concurrency-safe updates are not implemented for "
                f"{self.url.partition('://')[0]}:// yet (they need the object store's "
                "conditional writes, e.g. GCS generation preconditions); write whole shards")
        with process_key_locks.get(self._lock_name(key)):
            current = self.read(key)
            new = modify(current)
            if new is None:
                self.delete(key)
            elif new != current:
                self.write(key, new)
        return new

    def overwrite(self, key: str, data: bytes | None) -> None:
        # Elsewhere no update can be in flight (there are none), so a plain write is ordered.
        with (process_key_locks.get(self._lock_name(key)) if self._in_memory
              else contextlib.nullcontext()):
            if data is None:
                self.delete(key)
            else:
                self.write(key, data)

    @property
    def _in_memory(self) -> bool:
        protocol = self.fs.protocol
        return "memory" in (protocol if isinstance(protocol, tuple) else (protocol,))

    def _lock_name(self, key: str) -> str:
        # memory://a/b and memory:///a/b are one object: name the lock by the normalised path
        return "memory:///" + self._path(key).lstrip("/")

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = f"{self.root}/{prefix}".rstrip("/") if self.root else prefix
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        root = self.root.rstrip("/")
        for path, info in found.items():
            rel = path.lstrip("/")[len(root.lstrip("/")):].lstrip("/") if root else path
            yield rel, int(info.get("size", 0))
