"""The files behind a local store's writes: a temporary file per write, locked from creation
until it is renamed over its object, and the sweeping of those whose writer died."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import StoreError
from .base import ObjectWriter

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (not on Windows)
#: :func:`abandoned_files` leaves a file a writer has only just created (not yet locked,
#: ``*.new``) alone for this long (seconds). A ``*.tmp`` is locked from birth to commit, so an
#: unlocked one is a dead writer's, whatever its age.
TEMP_MIN_AGE = 30.0


def abandoned_files(base: Path, min_age: float, *, remove: bool) -> tuple[int, int]:
    """The temporary files below ``base`` whose writer died (see
    :meth:`~napari_zshard.store.local.LocalStore.sweep_temporaries`): how many and their
    bytes, removed when ``remove``. Needs ``fcntl``."""
    assert fcntl is not None
    found = size = 0
    now = time.time()
    for dirpath, _dirs, files in os.walk(base):
        for name in files:
            if not (name.startswith(".") and name.endswith((".tmp", ".new"))):
                continue
            path = os.path.join(dirpath, name)
            try:
                fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW)
            except OSError:  # renamed or removed meanwhile
                continue
            try:
                info = os.fstat(fd)
                if name.endswith(".new") and now - info.st_mtime < min_age:
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


class FileWriter(ObjectWriter):
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
            self._fd, self._tmp = new_temp(path)
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
            fd, self._fd = self._fd, -1
            commit_temp(fd, self._tmp, self.path)
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):  # the target is a folder, ...
                raise StoreError(f"cannot write {self.path}: {e.strerror or e}") from e
            raise
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def new_temp(path: Path) -> tuple[int, str]:
    """A hidden temporary file beside ``path`` (``.<name>.<random>.tmp``), open for writing
    and ``flock``-ed for as long as this process keeps it open: the mark of a live write.

    Made as ``….new``, locked, then renamed: no sweeper ever sees an unlocked ``.tmp`` of a
    live writer (see :meth:`LocalStore.sweep_temporaries`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, new = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".new")
    if fcntl is None:
        return fd, new
    try:
        with contextlib.suppress(OSError):  # (a file system without locks: never swept)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp = new[:-len(".new")] + ".tmp"
        os.rename(new, tmp)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(new)
        raise
    return fd, tmp


def commit_temp(fd: int, tmp: str, path: Path) -> None:
    """fsync ``fd`` (open on ``tmp``), rename ``tmp`` over ``path``, then close ``fd``: the
    lock is held until the file no longer has its temporary name (where fcntl exists: Windows
    cannot rename an open file)."""
    try:
        os.fsync(fd)
        if fcntl is not None:
            os.replace(tmp, path)
    finally:
        os.close(fd)  # (always, and only here)
    if fcntl is None:
        os.replace(tmp, path)


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


def fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Threads reading local files at once: pread releases the GIL, and a cluster file system has
#: latency worth overlapping.
IO_THREADS = max(8, 4 * (os.cpu_count() or 1))
_io_pool: ThreadPoolExecutor | None = None
_io_lock = threading.Lock()


def io_pool() -> ThreadPoolExecutor:
    """The process's local-file reading threads (made anew in a forked child)."""
    global _io_pool
    if _io_pool is None:
        with _io_lock:
            if _io_pool is None:
                _io_pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="zshard-io")
    return _io_pool


def _forget_pool_after_fork() -> None:
    global _io_pool, _io_lock
    _io_pool, _io_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
