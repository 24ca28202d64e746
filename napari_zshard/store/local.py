"""Local file system store: concurrent ``os.pread`` from a thread pool, atomic commits."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import ShortReadError, StoreError
from .base import Store
from .keys import validate_key
from .pool import io_pool
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest


class LocalStore(Store):
    """A folder on a local or cluster file system."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None):
        self.root = Path(root).expanduser().absolute()
        super().__init__(self.root.as_uri(), options)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _read_key(self, key: str, requests: list[tuple[int, ByteRequest]]):
        try:
            fd = os.open(self._path(key), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except (FileNotFoundError, NotADirectoryError):
            return [(i, ByteResult(None)) for i, _ in requests]
        except IsADirectoryError:
            return [(i, ByteResult(None)) for i, _ in requests]
        except PermissionError as e:
            raise StoreError(f"permission denied reading {self._path(key)}: {e.strerror}") from e
        except OSError as e:
            raise StoreError(f"cannot read {self._path(key)}: {e.strerror or e}") from e
        out = []
        try:
            size = os.fstat(fd).st_size
            for i, req in requests:
                if isinstance(req, FullRequest):
                    start, length = 0, size
                elif isinstance(req, SuffixRequest):
                    length = min(req.length, size)
                    start = size - length
                else:
                    start, length = req.start, req.length
                try:
                    data = os.pread(fd, length, start) if length else b""
                except OSError as e:  # EIO on a failing disk or a cluster file system
                    raise StoreError(f"cannot read {self._path(key)}: {e.strerror or e}") from e
                if isinstance(req, RangeRequest) and len(data) != length:
                    raise ShortReadError(
                        f"{self.url}/{key}: asked for bytes {start}..{start + length - 1}, "
                        f"but the file has only {size} bytes",
                        key=key, start=start, requested=length, received=len(data),
                    )
                self.stats.record(len(data))
                out.append((i, ByteResult(data, object_size=size)))
        finally:
            os.close(fd)
        return out

    def read_many(self, requests: Sequence[ByteRequest]) -> list[ByteResult]:
        by_key: dict[str, list[tuple[int, ByteRequest]]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_key[req.key].append((i, req))
        results: list[ByteResult | None] = [None] * len(requests)
        if len(by_key) == 1:
            ((key, reqs),) = by_key.items()
            done = [self._read_key(key, reqs)]
        else:
            done = io_pool().map(lambda kv: self._read_key(*kv), by_key.items())
        for part in done:
            for i, res in part:
                results[i] = res
        return results  # type: ignore[return-value]

    def write(self, key: str, data: bytes) -> None:
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError):  # disk full, target is a folder, ...
                raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
            raise
        _fsync_dir(path.parent)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                full = Path(dirpath) / name
                yield full.relative_to(self.root).as_posix(), full.stat().st_size


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
