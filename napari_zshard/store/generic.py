"""Any other fsspec file system (``memory://``, ``gs://`` through gcsfs, ...)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import RemoteReadError, ShortReadError, UnsupportedURLError, UpdateNotSupportedError
from .base import Modify, ProgressCallback, ResultCallback, Store, process_key_locks
from .keys import validate_key
from .pool import io_pool
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest

_EXTRAS = {"gs": "gcs", "gcs": "gcs", "s3": "s3", "s3a": "s3"}


class FsspecStore(Store):
    """A store on any fsspec file system. Reads go through ``cat_file``, concurrently."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        super().__init__(url.rstrip("/"), options)
        import fsspec

        protocol, _, path = self.url.partition("://")
        try:
            self.fs = fsspec.filesystem(protocol, **self.options)
        except (ImportError, ValueError) as e:
            extra = _EXTRAS.get(protocol)
            hint = f": pip install 'napari-zshard[{extra}]'" if extra else ""
            raise UnsupportedURLError(f"cannot open {url}: {e}{hint}") from e
        self.root = path
        # an object store behind an async client (gcsfs...), where every lookup is a request
        self._remote = bool(getattr(self.fs, "async_impl", False))
        # where a suffix read (start=-n) is known to be one request ("bytes=-n"): gcsfs only
        self._suffix_request = protocol in ("gs", "gcs")

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else key

    def _read_one(self, req: ByteRequest) -> ByteResult:
        path = self._path(req.key)
        try:
            if isinstance(req, FullRequest):
                data = self.fs.cat_file(path)
                size = len(data)
            elif isinstance(req, RangeRequest) and self._remote:
                # one request, no size lookup first (gcsfs: a metadata GET and a listing); the
                # size matters only if the object is too short
                data = self.fs.cat_file(path, start=req.start, end=req.start + req.length)
                size = None
            elif isinstance(req, SuffixRequest) and self._suffix_request:
                data, size = self._read_suffix(path, req.length)
            else:  # the size first (free in process): it is what a suffix read is cut by
                size = self.fs.size(path)
                if isinstance(req, SuffixRequest):
                    start, end = max(0, size - req.length), size
                else:
                    start, end = req.start, req.start + req.length
                data = self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError:
            return ByteResult(None)
        except OSError as e:
            raise RemoteReadError(f"could not read {self.url}/{req.key}: {e}") from e
        if isinstance(req, RangeRequest) and len(data) != req.length:
            raise ShortReadError(
                f"{self.url}/{req.key}: asked for bytes {req.start}..{req.start + req.length - 1}"
                f", but the object ends after {req.start + len(data)} bytes",
                key=req.key, start=req.start, requested=req.length, received=len(data),
            )
        self.stats.record(len(data))
        return ByteResult(data, object_size=size)

    def _read_suffix(self, path: str, length: int) -> tuple[bytes, int | None]:
        """The last ``length`` bytes in one request ("bytes=-n"). A server that ignores suffix
        ranges sends everything; fewer bytes than asked for are the whole object. Either
        way the object's size is then known."""
        if not length:
            return b"", None
        data = self.fs.cat_file(path, start=-length)
        return data[-length:], (len(data) if len(data) != length else None)

    def read_many(self, requests: Sequence[ByteRequest], *,
                  on_result: ResultCallback | None = None,
                  on_progress: ProgressCallback | None = None) -> list[ByteResult]:
        def read(item: tuple[int, ByteRequest]) -> ByteResult:
            result = self._read_one(item[1])
            if on_result is not None:
                on_result(item[0], result)
            return result

        if len(requests) <= 1:
            return [read(item) for item in enumerate(requests)]
        return list(io_pool().map(read, enumerate(requests)))

    def write(self, key: str, data: bytes) -> None:
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
