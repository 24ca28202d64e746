"""Where a save writes so that a cancelled or crashed one never leaves a store that claims to be
complete: a locked hidden sibling folder renamed into place (local), or the target itself with
its root ``zarr.json`` written last (object stores); interrupted local saves are swept.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..engine import default_cache
from ..errors import StoreError
from ..store import FullRequest, Store, open_store
from ..store.url import protocol_of

if TYPE_CHECKING:
    from .write import WriteOptions

try:
    import fcntl
except ImportError:  # Windows: interrupted saves are not swept
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


#: What makes a location a Zarr store (one that overwrite may replace).
_ZARR_MARKERS = ("zarr.json", ".zattrs", ".zarray", ".zgroup")
_SAVE_LOCK = ".zshard-save.lock"


def _holds_zarr(store: Store) -> bool:
    return any(r.data is not None for r in store.read_many([FullRequest(k)
                                                             for k in _ZARR_MARKERS]))


def holds_zarr_store(url: str | os.PathLike,
                     storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``url`` holds a Zarr store (the only kind of thing a save may replace)."""
    return _holds_zarr(open_store(url, storage_options))


def _sweep_interrupted(root: Path) -> None:
    """Remove the staging folders of earlier saves to ``root`` whose process died (killed,
    crashed, power cut): their lock file is no longer locked by anyone."""
    if fcntl is None:
        return
    for staging in root.parent.glob(f".{root.name}.partial-*"):
        try:
            fd = os.open(staging / _SAVE_LOCK, os.O_RDWR)
        except OSError:  # no lock yet (a save starting this instant) or not ours: leave it
            continue
        try:  # (flock: closing this descriptor never releases another save's lock)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a save in progress
        finally:
            os.close(fd)  # (releases the lock if it was taken)
        log.info("removing %s, left behind by an interrupted save", staging)
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _local_staging(root: Path, exists: bool, options: WriteOptions,
                   storage_options: dict[str, Any] | None) -> Iterator[Store]:
    """A hidden sibling folder, locked while the save runs, renamed into place on success and
    removed on failure. A killed save leaves only the hidden folder, which the next save to
    the same place removes."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file: choose another name")
    if root.is_dir() and not exists and any(root.iterdir()):
        raise StoreError(f"{root} is a folder that does not hold a Zarr store: choose another "
                         "name (overwrite only ever replaces a Zarr store)")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        _sweep_interrupted(root)
        staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    except OSError as e:
        raise StoreError(f"cannot write to {root.parent}: {e.strerror or e}") from e
    lock_fd = None
    try:
        if fcntl is not None:
            lock_fd = os.open(staging / _SAVE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield open_store(staging, storage_options)
        if options.overwrite and root.exists():
            if exchange(staging, root):  # one step: readers see the old store or the new
                shutil.rmtree(staging, ignore_errors=True)  # (now holding the old store)
            else:  # two renames: for a moment there is no store at all
                trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(root, trash)
                try:
                    os.replace(staging, root)
                except BaseException:
                    os.replace(trash, root)  # the old store goes back where it was
                    raise
                shutil.rmtree(trash, ignore_errors=True)
        else:
            try:  # fails if another save (or anything else) took the name meanwhile
                os.rename(staging, root)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise StoreError(f"{root} already exists: it was created while this save "
                                     "ran; choose another name or allow overwriting") from e
                raise
        if lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(root / _SAVE_LOCK)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), so that ``b`` is never missing. False, with nothing changed, where
    the system or file system has no such call (the caller then renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # C library older than glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def _object_cleanup(target: Store) -> None:
    """Best effort: remove what a failed save wrote to a fresh object-store location (its
    level arrays and labels; the root ``zarr.json`` is never written before success)."""
    try:
        keys = [k for k, _ in target.list_prefix("")
                if k.split("/", 1)[0].isdigit() or k.startswith("labels/")]
        for key in keys:
            target.delete(key)
    except Exception as e:  # the save's own error is what the user must see
        log.warning("could not remove the partial save at %s: %s", target.url, e)


def check_destination(url: str | os.PathLike) -> None:
    """Refuse, before any request, a destination no save can write: ``http(s)://`` is read
    only (a web server takes no writes through plain HTTP)."""
    text = os.fspath(url)
    if protocol_of(text) in ("http", "https"):
        parts = urlsplit(text)  # shown without credentials or query tokens
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        shown = urlunsplit((parts.scheme, host or "", parts.path, "", ""))
        raise StoreError(f"cannot save to {shown}: http(s):// locations are "
                         "read-only. Save to a local folder, or to an s3:// or gs:// URL "
                         "(file:// works too)")


def _forget_old_metadata(target: Store) -> None:
    """Delete the metadata of the old store's levels and labels before overwriting it in
    place: a level of an interrupted overwrite must not open as the old array over a mix of
    old and new shards. (The new metadata is written when the save is done.)"""
    try:
        keys = [k for k, _ in target.list_prefix("") if k.rsplit("/", 1)[-1] in _ZARR_MARKERS]
    except (StoreError, OSError, NotImplementedError) as e:
        log.warning("could not list %s to remove its old metadata: %s", target.url, e)
        return
    for key in keys:
        target.delete(key)


@contextlib.contextmanager
def staged_target(url: str | os.PathLike, options: WriteOptions,
                   storage_options: dict[str, Any] | None) -> Iterator[Store]:
    """Where to write: a hidden sibling folder for local targets (renamed into place on
    success, removed on failure), the target itself on object stores (the root ``zarr.json``
    written last; removed first when overwriting)."""
    check_destination(url)
    target = open_store(url, storage_options)
    root = getattr(target, "root", None)
    exists = _holds_zarr(target)
    if exists and not options.overwrite:
        where = root if isinstance(root, Path) else target.url
        raise StoreError(f"{where} already exists; choose another name or allow overwriting")
    if isinstance(root, Path):
        with _local_staging(root, exists, options, storage_options) as store:
            yield store
    else:
        if exists:
            target.delete("zarr.json")  # from now on the old store no longer claims to be whole
            _forget_old_metadata(target)
        try:
            yield target
        except BaseException:
            if not exists:
                _object_cleanup(target)
            raise
    default_cache().forget(target.url)


def disk_full(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False
