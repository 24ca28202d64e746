"""Local file system store: concurrent ``os.pread`` from a thread pool, atomic commits, and
read-modify-writes under a per-object lock file."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ShortReadError, StoreError, UpdateNotSupportedError
from .base import (
    Modify,
    ObjectWriter,
    ProgressCallback,
    ResultCallback,
    Store,
    process_key_locks,
)
from .keys import validate_key
from .pool import io_pool
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)
#: :meth:`LocalStore.sweep_temporaries` leaves temporary files younger than this (seconds).
TEMP_MIN_AGE = 30.0


#: Ranges from this size on are read into an uninitialised numpy buffer (numpy backs 4 MiB and
#: more with huge pages) and handed out as a read-only memoryview; smaller ones as ``bytes``.
#: The 16 ranges (4.4 MiB each) of a cold 1024² plane took 18-22 ms instead of 30-37 ms.
BIG_READ = 1 << 20


def _pread(fd: int, length: int, start: int, big: bool) -> bytes | memoryview:
    if not length:
        return b""
    if not big or length < BIG_READ or not hasattr(os, "preadv"):
        return os.pread(fd, length, start)
    buffer = np.empty(length, np.uint8)
    got = os.preadv(fd, [buffer], start)
    return memoryview(buffer).toreadonly()[:got]


class LocalStore(Store):
    """A folder on a local or cluster file system."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None):
        self.root = Path(root).expanduser().absolute()
        self._root = str(self.root)
        super().__init__(self.root.as_uri(), options)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _file(self, key: str) -> str:
        """:meth:`_path` as a string, made without pathlib, which costs more than reading a
        small object from the page cache (an unsharded array has one object per chunk)."""
        return os.path.join(self._root, validate_key(key))

    def _read_key(self, key: str, requests: list[tuple[int, ByteRequest]]):
        try:
            fd = os.open(self._file(key), _O_READ)
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
                    data = _pread(fd, length, start, big=not isinstance(req, FullRequest))
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

    def read_many(self, requests: Sequence[ByteRequest], *,
                  on_result: ResultCallback | None = None,
                  on_progress: ProgressCallback | None = None) -> list[ByteResult]:
        by_key: dict[str, list[tuple[int, ByteRequest]]] = defaultdict(list)
        for i, req in enumerate(requests):
            by_key[req.key].append((i, req))
        results: list[ByteResult | None] = [None] * len(requests)

        def read_key(item):
            part = self._read_key(*item)
            if on_result is not None:
                for i, res in part:
                    on_result(i, res)
            return part

        def read_keys(items):
            return [done for item in items for done in read_key(item)]

        items = list(by_key.items())
        if len(items) <= 1:
            done = read_keys(items)
        else:
            # As many tasks as the pool has threads, each reading its share of the objects in
            # turn: as concurrent as one task per object, which a file system with latency
            # needs, but without a thread hand-off per object, which for thousands of small
            # objects in the page cache cost more than the reads themselves.
            pool = io_pool()
            per = -(-len(items) // min(len(items), getattr(pool, "_max_workers", 8)))
            done = [d for part in pool.map(read_keys, [items[j:j + per] for j in range(
                0, len(items), per)]) for d in part]
        for i, res in done:
            results[i] = res
        return results  # type: ignore[return-value]

    def write(self, key: str, data: bytes) -> None:
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        try:
            fd, tmp = _new_temp(path)
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

    def writer(self, key: str) -> ObjectWriter:
        """The object streamed into a temporary file beside ``key`` (see :meth:`write`), so a
        shard of hundreds of MiB is never held in memory whole; committed with an fsync and
        an atomic rename, like :meth:`write`."""
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        return _FileWriter(self._path(key), key)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def update(self, key: str, modify: Modify, *, tries: int = 10) -> bytes | None:
        """Read-modify-write ``key`` under an exclusive lock (see :meth:`Store.update`).

        Writers take ``fcntl.flock(LOCK_EX)`` on a hidden sibling file ``.<name>.lock`` (made on
        first use and left in place), plus a lock per object inside this process, then read,
        call ``modify`` once, and commit atomically (temp file, fsync, rename, fsync of the
        folder). So ``modify`` always sees the last committed bytes and ``tries`` is unused.

        What is guaranteed:

        * processes and threads on one machine, any local file system: updates of one object
          are serialised, none is lost;
        * NFS: only where locks reach the server — NFSv4, or v3 with a lock manager (Linux
          turns ``flock`` into POSIX byte-range locks over NFS since 2.6.12); the data read
          after locking relies on NFS close-to-open consistency. A mount without locking
          (``nolock``; ``local_lock=flock``) protects one client only;
        * Lustre: only when mounted with ``-o flock``; ``-o localflock`` locks per client node
          (writers on different nodes are *not* excluded) and ``noflock`` makes the lock call
          fail, which raises here;
        * Windows has no ``fcntl``: :class:`UpdateNotSupportedError`, never an unsafe write.
        """
        return super().update(key, modify, tries=tries)

    def _update_once(self, key: str, modify: Modify) -> bytes | None:
        path = self._path(key)
        with self._locked(path):
            current = self.read(key)
            new = modify(current)
            if new is None:
                if current is not None:
                    self._remove(path)
            elif new != current:
                self.write(key, new)
        return new

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Create ``key`` unless it exists: the bytes go to a fsynced temporary file, which
        ``os.link`` puts at ``key`` only if no file is there (atomic, like ``O_EXCL``, and a
        reader never sees the object partly written). No lock file is involved."""
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        try:
            fd, tmp = _new_temp(path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as e:
                raise StoreError(f"cannot create {path}: {e.strerror or e}") from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        return True

    def overwrite(self, key: str, data: bytes | None) -> None:
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        if fcntl is None:
            # No update can be in flight where none is possible: a plain write is ordered.
            if data is None:
                self.delete(key)
            else:
                self.write(key, data)
            return
        with self._locked(path):
            if data is None:
                self._remove(path)
            else:
                self.write(key, data)

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        """Hold the object's lock: first the in-process one, then the lock file's."""
        if fcntl is None:
            raise UpdateNotSupportedError(
                f"{self.url}: concurrency-safe updates need fcntl.flock, which this platform "
                "(Windows) lacks. Update from Linux or macOS, or write whole shards only.")
        lock_path = path.with_name(f".{path.name}.lock")
        # flock excludes other open file descriptions, so threads that open the file each on
        # their own exclude each other on a local disk; but over NFS flock becomes a POSIX
        # lock, which belongs to the whole process: threads of one process must queue here.
        with process_key_locks.get(str(lock_path)):
            try:
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                # Read-write: a POSIX lock (flock over NFS) needs a descriptor open for writing.
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                             0o666)
            except OSError as e:
                raise StoreError(f"cannot create the lock file {lock_path}: "
                                 f"{e.strerror or e}") from e
            # The lock file is never deleted. flock locks an inode, not a name: were it
            # unlinked by a writer on its way out, a writer already waiting on the old inode
            # would go on holding that one while a newcomer creates and locks a new file
            # under the same name: two writers inside the read-modify-write at once.
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except OSError as e:  # ENOLCK (NFS without lockd), ENOSYS (Lustre noflock)
                    raise UpdateNotSupportedError(
                        f"{lock_path}: the file system refused a lock ({e.strerror or e}); "
                        "concurrency-safe updates need working flock (NFS with locking, "
                        "Lustre mounted with -o flock)") from e
                yield
            finally:
                os.close(fd)  # releases the lock

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror or e}") from e
        _fsync_dir(path.parent)

    def sweep_temporaries(self, prefix: str = "", *,
                          min_age: float = TEMP_MIN_AGE) -> tuple[int, int]:
        """Remove the temporary files of writes whose process died (killed, crashed, power
        cut) below ``prefix``; returns how many and their bytes.

        A writer holds an ``flock`` on its temporary file from creating it to its last write,
        and the lock dies with its process: an unlocked one is abandoned. Files touched in the
        last ``min_age`` seconds are left alone (the instants between creating the file and
        locking it, and between the last write and the rename). Without ``fcntl``: nothing.
        """
        return self._abandoned_temporaries(prefix, min_age, remove=True)

    def abandoned_temporaries(self, prefix: str = "", *,
                              min_age: float = TEMP_MIN_AGE) -> tuple[int, int]:
        """How many temporary files :meth:`sweep_temporaries` would remove, and their bytes."""
        return self._abandoned_temporaries(prefix, min_age, remove=False)

    def _abandoned_temporaries(self, prefix: str, min_age: float, *, remove: bool
                               ) -> tuple[int, int]:
        if fcntl is None or (remove and self.read_only):
            return 0, 0
        base = self.root / prefix if prefix else self.root
        found = size = 0
        now = time.time()
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if not (name.startswith(".") and name.endswith(".tmp")):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:  # renamed or removed meanwhile
                    continue
                try:
                    info = os.fstat(fd)
                    if now - info.st_mtime < min_age:
                        continue
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live writer holds it
                    continue
                else:  # (removed while locked: no writer can have taken it meanwhile)
                    if remove:
                        try:
                            os.unlink(path)
                        except FileNotFoundError:
                            continue
                    found, size = found + 1, size + info.st_size
                finally:
                    os.close(fd)
        return found, size

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith((".tmp", ".lock")):
                    continue  # commits in progress, update locks: not objects
                full = Path(dirpath) / name
                yield full.relative_to(self.root).as_posix(), full.stat().st_size


class _FileWriter(ObjectWriter):
    """:meth:`LocalStore.writer`: a temporary file in the object's folder, fsynced and renamed
    over the object at commit (then the folder is fsynced), unlinked at abort.

    Every :data:`_SYNC_BYTES` written, the data so far is flushed to the disk (``fdatasync``)
    by the writing thread, so that the commit waits for the last few MiB only, not for the
    whole object: a shard streamed while it is encoded reaches the disk while it is encoded.
    """

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        self._synced = 0
        try:
            self._fd, self._tmp = _new_temp(path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e

    def write(self, buffers: Sequence) -> None:
        views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
        first = 0  # views before this one are written
        try:
            while first < len(views):
                if _writev is None:
                    n = os.write(self._fd, views[first])
                else:
                    n = _writev(self._fd, views[first:first + _IOV_MAX])
                self.size += n
                while first < len(views) and n >= len(views[first]):
                    n -= len(views[first])
                    first += 1
                if n:  # a short write: go on where it stopped
                    views[first] = views[first][n:]
            if self.size - self._synced >= _SYNC_BYTES:
                _fdatasync(self._fd)
                self._synced = self.size
        except OSError as e:  # disk full, ...
            self.abort()
            raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from e

    def commit(self) -> None:
        try:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self.path)
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):  # the target is a folder, ...
                raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from e
            raise
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def _new_temp(path: Path) -> tuple[int, str]:
    """A hidden temporary file beside ``path`` (``.<name>.<random>.tmp``), open for writing
    and ``flock``-ed for as long as this process keeps it open: the mark of a live write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    if fcntl is not None:
        with contextlib.suppress(OSError):  # (a file system without locks: never swept)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, tmp


def _iov_max() -> int:
    try:
        return max(1, min(1024, os.sysconf("SC_IOV_MAX")))
    except (AttributeError, ValueError, OSError):
        return 16


_writev = getattr(os, "writev", None)  # (not on Windows: one write per buffer)
_IOV_MAX = _iov_max()  # buffers one writev takes
_fdatasync = getattr(os, "fdatasync", os.fsync)  # (not on macOS and Windows)
#: A streamed object is flushed to the disk each time this many more bytes were written.
_SYNC_BYTES = 32 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
