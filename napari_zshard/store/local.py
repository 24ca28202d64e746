"""Local file system store: concurrent ``os.pread`` from a thread pool, atomic commits, and
read-modify-writes under a per-object lock file."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import ShortReadError, StoreError, UnsafeKeyError, UpdateNotSupportedError
from ..keys import validate_key
from .base import (
    Modify,
    ObjectWriter,
    ProgressCallback,
    ResultCallback,
    Store,
    process_key_locks,
)
from .local_files import (
    IO_THREADS,
    TEMP_MIN_AGE,
    FileWriter,
    abandoned_files,
    commit_temp,
    fsync_dir,
    io_pool,
    new_temp,
)
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_O_READ = os.O_RDONLY | getattr(os, "O_BINARY", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (not on Windows)
_S_IFMT, _S_IFDIR = 0o170000, stat.S_IFDIR


#: Ranges from this size on are read into an uninitialised numpy buffer (numpy backs 4 MiB and
#: more with huge pages) and handed out as a read-only memoryview; smaller ones as ``bytes``.
#: The 16 ranges (4.4 MiB each) of a cold 1024² plane took 18-22 ms instead of 30-37 ms.
BIG_READ = 1 << 20


def _pread(fd: int, length: int, start: int, big: bool) -> bytes | memoryview:
    if not length:
        return b""
    if not big or length < BIG_READ or not hasattr(os, "preadv"):
        return os.pread(fd, length, start)
    # ndarray.data is memoryview(array) (numpy types an ndarray as a buffer from Python 3.12)
    buffer = np.empty(length, np.uint8).data
    got = os.preadv(fd, [buffer], start)
    return buffer.toreadonly()[:got]


def file_identity(info: os.stat_result) -> str:
    """Which file a read saw, as an ETag would say it: inode, size and ``mtime_ns``.

    A commit (temp file + rename) always gives a new inode; an in-place rewrite changes the
    modification time. File systems with coarse timestamps (FAT: 2 s; NFS: the server's
    granularity, and attributes cached for up to ``acregmax``) can miss an in-place rewrite of
    the same size within one tick; inode numbers synthesised per mount (FAT, some FUSE file
    systems) can repeat. Writers of this package always rename, which these catch.
    """
    return f"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"


class LocalStore(Store):
    """A folder on a local or cluster file system."""

    def __init__(self, root: str | os.PathLike, options: dict | None = None):
        self.root = Path(root).expanduser().absolute()
        self._root = str(self.root)
        self._real_dirs: dict[str, bool] = {}  # folder -> lies inside the root (symlinks)
        super().__init__(self.root.as_uri(), options)

    def child(self, path: str) -> LocalStore:
        # a path, not a URL: nothing percent-decodes it on the way (see validate_key)
        return LocalStore(self.root / validate_key(path.strip("/"), what="child path"),
                          self.options)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _file(self, key: str) -> str:
        """:meth:`_path` as a string, made without pathlib, which costs more than reading a
        small object from the page cache (an unsharded array has one object per chunk)."""
        return os.path.join(self._root, validate_key(key))

    # -- symbolic links (README "Integrity"): followed only where they stay inside the root --
    @property
    def _real_root(self) -> str:
        return os.path.realpath(self._root)

    def resolves_inside(self, path: str) -> bool:
        """Whether ``path``, its symbolic links resolved, lies in (or is) the store root."""
        real, root = os.path.realpath(path), self._real_root
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def _check_folder(self, folder: str, key: str) -> None:
        """Raise :class:`UnsafeKeyError` when ``folder`` (the folder of ``key``, or its
        deepest existing ancestor) resolves outside the root through a symbolic link."""
        inside = self._real_dirs.get(folder)
        if inside is None:
            probe = folder
            while not os.path.lexists(probe) and len(probe) > len(self._root):
                probe = os.path.dirname(probe)
            if len(probe) <= len(self._root):
                return  # nothing of the key's folder exists yet below the root
            inside = self.resolves_inside(probe)
            if os.path.isdir(folder):
                if len(self._real_dirs) > 4096:
                    self._real_dirs.clear()
                self._real_dirs[folder] = inside
        if not inside:
            raise UnsafeKeyError(
                f"{self.url}/{key}: its folder is a symbolic link to "
                f"{os.path.realpath(folder)}, outside the store root: refused (a store never "
                "reads or writes outside its root; see the README, Integrity)")

    def _open_inside(self, path: str, key: str) -> int:
        """``os.open`` of an object for reading, following a symbolic link only when it ends
        inside the root. (A missing object costs no check: nothing is read.)"""
        try:
            fd = os.open(path, _O_READ | _O_NOFOLLOW)
        except OSError as e:
            if e.errno != errno.ELOOP or not _O_NOFOLLOW:
                raise
        else:
            folder = path.rpartition(os.sep)[0]
            if self._real_dirs.get(folder) is not True:  # (the common case: known inside)
                try:
                    self._check_folder(folder, key)
                except BaseException:
                    os.close(fd)
                    raise
            return fd
        if not self.resolves_inside(path):
            raise UnsafeKeyError(
                f"{self.url}/{key} is a symbolic link to {os.path.realpath(path)}, outside "
                "the store root: refused (a store never reads or writes outside its root; "
                "see the README, Integrity)")
        return os.open(os.path.realpath(path), _O_READ)

    def _read_key(self, key: str, requests: list[tuple[int, ByteRequest]]):
        try:
            fd = self._open_inside(self._file(key), key)
        except (FileNotFoundError, NotADirectoryError):
            return [(i, ByteResult(None)) for i, _ in requests]
        except PermissionError as e:
            raise StoreError(f"permission denied reading {self._path(key)}: {e.strerror}") from e
        except OSError as e:
            raise StoreError(f"cannot read {self._path(key)}: {e.strerror or e}") from e
        out = []
        try:
            info = os.fstat(fd)
            if info.st_mode & _S_IFMT == _S_IFDIR:
                raise StoreError(f"cannot read {self._path(key)}: a folder stands where this "
                                 "object belongs (remove or rename it)")
            size, identity = info.st_size, file_identity(info)
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
                out.append((i, ByteResult(data, object_size=size, etag=identity)))
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
            per = -(-len(items) // min(len(items), IO_THREADS))
            done = [d for part in pool.map(read_keys, [items[j:j + per] for j in range(
                0, len(items), per)]) for d in part]
        for i, res in done:
            results[i] = res
        return results  # type: ignore[return-value]  # every request's slot is filled now

    def _temp_for(self, key: str) -> tuple[Path, int, str]:
        """Where ``key`` goes, and a new temporary file beside it (checked to be inside the
        store, open for writing): the start of every write."""
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        self._check_folder(str(path.parent), key)
        try:
            fd, tmp = new_temp(path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
        return path, fd, tmp

    def write(self, key: str, data: bytes | bytearray) -> None:
        path, fd, tmp = self._temp_for(key)
        try:
            try:
                with open(fd, "wb", closefd=False) as f:
                    f.write(data)
            except BaseException:
                os.close(fd)
                raise
            commit_temp(fd, tmp, path)  # (closes fd)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError):  # disk full, target is a folder, ...
                raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
            raise
        fsync_dir(path.parent)

    def writer(self, key: str) -> ObjectWriter:
        """The object streamed into a temporary file beside ``key`` (see :meth:`write`), so a
        shard of hundreds of MiB is never held in memory whole; committed with an fsync and
        an atomic rename, like :meth:`write`."""
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        self._check_folder(str(path.parent), key)
        return FileWriter(path, key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_folder(str(path.parent), key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # (a symbolic link: the link, never what it points to)

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
        self._check_folder(str(path.parent), key)
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
        path, fd, tmp = self._temp_for(key)
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
        fsync_dir(path.parent)
        return True

    def overwrite(self, key: str, data: bytes | None) -> None:
        if self.read_only:
            raise StoreError(f"{self.url} is opened read-only")
        path = self._path(key)
        self._check_folder(str(path.parent), key)
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
                # O_NOFOLLOW: a lock file that is a symbolic link must not create its target
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _O_NOFOLLOW
                             | getattr(os, "O_CLOEXEC", 0), 0o666)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UnsafeKeyError(
                        f"the lock file {lock_path} is a symbolic link: refused (a store never "
                        "writes outside its root; remove the link)") from e
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
        fsync_dir(path.parent)

    def sweep_temporaries(self, prefix: str = "", *,
                          min_age: float = TEMP_MIN_AGE) -> tuple[int, int]:
        """Remove the temporary files of writes whose process died (killed, crashed, power
        cut) below ``prefix``; returns how many and their bytes.

        A writer creates its file as ``.<name>.<random>.new``, locks it (``flock``) and only
        then renames it to ``….tmp``; it holds the lock until the file has been renamed over
        the object. The lock dies with its process: an unlocked ``.tmp`` is abandoned,
        however young (a resumed reshard removes what the killed run left a second ago). A
        ``.new`` is removed only once ``min_age`` seconds old (its writer may be between
        creating and locking it). Without ``fcntl``: nothing.
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
        return abandoned_files(self.root / prefix if prefix else self.root, min_age,
                               remove=remove)

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith((".tmp", ".new", ".lock")):
                    continue  # commits in progress, update locks: not objects
                full = Path(dirpath) / name
                try:
                    size = full.stat().st_size
                except OSError:  # a dangling symbolic link: listed, its read will say why
                    size = 0
                yield full.relative_to(self.root).as_posix(), size
