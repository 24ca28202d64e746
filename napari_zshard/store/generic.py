"""Any other fsspec file system (``memory://``, ``gs://`` through gcsfs, ...)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import RemoteReadError, ShortReadError, UnsupportedURLError
from .base import Store
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

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else key

    def _read_one(self, req: ByteRequest) -> ByteResult:
        path = self._path(req.key)
        try:
            if isinstance(req, FullRequest):
                data = self.fs.cat_file(path)
                size = len(data)
            else:
                size = self.fs.size(path)
                if isinstance(req, SuffixRequest):
                    start = max(0, size - req.length)
                    end = size
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
                f", but the object has only {size} bytes",
                key=req.key, start=req.start, requested=req.length, received=len(data),
            )
        self.stats.record(len(data))
        return ByteResult(data, object_size=size)

    def read_many(self, requests: Sequence[ByteRequest]) -> list[ByteResult]:
        if len(requests) <= 1:
            return [self._read_one(r) for r in requests]
        return list(io_pool().map(self._read_one, requests))

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

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
