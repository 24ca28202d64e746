"""Read-modify-write of one object with ``Store.update``: a local folder, ``memory://`` and moto's
S3 — creating, changing and deleting objects, and what happens when another writer gets there
first."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from napari_zshard.errors import ConcurrentUpdateError, StoreError, UpdateNotSupportedError
from napari_zshard.store import FullRequest, open_store
from napari_zshard.store.generic import FsspecStore

KEY = "c/0/0/0"
STORES = ["local", "memory", "s3"]
LOCKING = ["local", "memory"]


@pytest.fixture
def store(request, tmp_path):
    kind = request.param
    if kind == "local":
        return open_store(tmp_path / "vol.zarr")
    if kind == "memory":
        return open_store(f"memory://update-{uuid.uuid4().hex}/vol.zarr")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"{bucket}/vol.zarr", request.getfixturevalue("s3_options"))


def another_writer(store):
    """A second client of the same store (another person, process or machine)."""
    return open_store(store.url, store.options)


# -- what one writer sees ---------------------------------------------------------------------
@pytest.mark.parametrize("store", STORES, indirect=True)
def test_update_creates_an_object_that_does_not_exist_yet(store):
    seen = []

    def create(current):
        seen.append(current)
        return b"first annotation"

    assert store.update(KEY, create) == b"first annotation"
    assert seen == [None]
    assert store.read(KEY) == b"first annotation"


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_update_changes_what_is_there(store):
    store.write(KEY, b"cells")

    result = store.update(KEY, lambda current: current + b" and nuclei")

    assert result == store.read(KEY) == b"cells and nuclei"


@pytest.mark.parametrize("store", STORES, indirect=True)
def test_update_returning_none_deletes_the_object_or_leaves_it_absent(store):
    store.write(KEY, b"to be erased")

    assert store.update(KEY, lambda current: None) is None
    assert store.read(KEY) is None
    assert store.update("c/9/9/9", lambda current: None) is None
    assert store.read("c/9/9/9") is None


# -- optimistic stores: the other writer committed first ----------------------------------------
@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_write_that_lands_between_read_and_commit_is_merged_not_lost(store):
    store.write(KEY, b"base")
    other = another_writer(store)
    seen = []

    def append_mine(current):
        seen.append(current)
        if len(seen) == 1:  # someone commits while we are still merging
            other.update(KEY, lambda theirs: theirs + b"+theirs")
        return current + b"+mine"

    assert store.update(KEY, append_mine) == b"base+theirs+mine"
    assert seen == [b"base", b"base+theirs"]
    assert store.read(KEY) == b"base+theirs+mine"
    assert store.stats.snapshot()["retries"] == 1


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_creating_an_object_someone_else_just_created_merges_into_theirs(store):
    other = another_writer(store)
    seen = []

    def create(current):
        seen.append(current)
        if len(seen) == 1:
            other.overwrite(KEY, b"theirs")
        return (current or b"") + b"+mine"

    store.update(KEY, create)

    assert seen == [None, b"theirs"]
    assert store.read(KEY) == b"theirs+mine"


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_a_delete_decided_on_stale_bytes_is_refused_and_decided_again(store):
    store.write(KEY, b"old")
    other = another_writer(store)
    seen = []

    def erase_if_old(current):
        seen.append(current)
        if len(seen) == 1:
            other.overwrite(KEY, b"new work")
        return None if current == b"old" else current

    assert store.update(KEY, erase_if_old) == b"new work"
    assert seen == [b"old", b"new work"]
    assert store.read(KEY) == b"new work"


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_update_gives_up_with_a_clear_error_when_every_try_meets_another_writer(store):
    store.write(KEY, b"v0")
    other = another_writer(store)
    calls = []

    def always_overtaken(current):
        calls.append(current)
        other.overwrite(KEY, f"v{len(calls)}".encode())
        return current + b"+mine"

    with pytest.raises(ConcurrentUpdateError) as info:
        store.update(KEY, always_overtaken, tries=3)

    assert calls == [b"v0", b"v1", b"v2"]
    assert store.read(KEY) == b"v3"  # only the other writer's commits, nothing of ours
    assert (info.value.key, info.value.tries) == (KEY, 3)
    assert f"{store.url}/{KEY}" in str(info.value) and "3 tries" in str(info.value)


# -- locking stores: the other writer waits -----------------------------------------------------
@pytest.mark.parametrize("store", LOCKING, indirect=True)
@pytest.mark.parametrize("second", ["update", "overwrite"])
def test_a_second_writer_waits_for_an_update_in_progress(store, second):
    store.write(KEY, b"base")
    other = another_writer(store)
    started = threading.Event()

    def second_writer():
        started.set()
        if second == "update":
            other.update(KEY, lambda current: current + b"+second")
        else:
            other.overwrite(KEY, b"whole new shard")

    def slow_first(current):
        thread.start()
        started.wait()
        time.sleep(0.2)  # the second writer is blocked meanwhile
        assert store.read(KEY) == b"base"
        return current + b"+first"

    thread = threading.Thread(target=second_writer)
    store.update(KEY, slow_first)
    thread.join(10)

    expected = b"base+first+second" if second == "update" else b"whole new shard"
    assert store.read(KEY) == expected


@pytest.mark.parametrize("store", LOCKING, indirect=True)
def test_threads_of_one_process_never_lose_an_increment(store):
    store.write(KEY, b"0")

    def add_ten():
        for _ in range(10):
            store.update(KEY, lambda current: str(int(current) + 1).encode())

    threads = [threading.Thread(target=add_ten) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert store.read(KEY) == b"80"


def test_local_lock_files_are_hidden_left_in_place_and_not_listed(tmp_path):
    store = open_store(tmp_path / "vol.zarr")

    store.update(KEY, lambda current: b"x")
    store.update(KEY, lambda current: None)

    assert (tmp_path / "vol.zarr" / "c" / "0" / "0" / ".0.lock").is_file()
    assert list(store.list_prefix("")) == []


def test_without_fcntl_local_updates_refuse_instead_of_writing_unsafely(tmp_path, monkeypatch):
    import napari_zshard.store.local as local

    monkeypatch.setattr(local, "fcntl", None)  # as on Windows
    store = open_store(tmp_path / "vol.zarr")

    with pytest.raises(UpdateNotSupportedError, match="Windows"):
        store.update(KEY, lambda current: b"x")
    assert isinstance(UpdateNotSupportedError("x"), NotImplementedError)
    assert store.read(KEY) is None


# -- stores that cannot update safely -----------------------------------------------------------
def test_an_http_store_refuses_updates(tmp_path, http_server):
    (tmp_path / "vol.zarr").mkdir()
    store = open_store(f"{http_server.url}/vol.zarr")
    called = []

    with pytest.raises(StoreError, match="read-only"):
        store.update(KEY, lambda current: called.append(current) or b"x")
    assert called == []


def test_an_fsspec_protocol_without_conditional_writes_refuses_updates(tmp_path):
    store = FsspecStore(f"file://{tmp_path}/vol.zarr")

    with pytest.raises(UpdateNotSupportedError, match=r"file:// yet"):
        store.update(KEY, lambda current: b"x")
    assert store.read(KEY) is None


# -- S3: shards above s3fs's multipart threshold -------------------------------------------------
BIG = 101 * 2**20  # above 2 x s3fs's 50 MiB block size: s3fs would upload it in parts


@pytest.mark.slow
def test_a_stale_etag_put_above_the_multipart_threshold_is_rejected(s3_bucket, s3_options):
    store = open_store(f"{s3_bucket}/big.zarr", s3_options)
    store.write(KEY, b"a" * BIG)
    other = another_writer(store)
    seen = []

    def mark_last_byte(current):
        seen.append(current[:1])
        if len(seen) == 1:
            other.overwrite(KEY, b"b" * BIG)  # the ETag we read is now stale
        return current[:-1] + b"m"

    store.update(KEY, mark_last_byte)

    final = store.read(KEY)
    assert seen == [b"a", b"b"]
    assert len(final) == BIG and final[:1] == b"b" and final[-1:] == b"m"


@pytest.mark.slow
def test_s3fs_multipart_writes_drop_if_match_which_is_why_updates_never_use_them(
        s3_bucket, s3_options):
    # The hazard this store avoids (../shared/DESIGN.md): if this starts failing, s3fs began
    # honouring IfMatch on its multipart path.
    store = open_store(f"{s3_bucket}/big.zarr", s3_options)
    store.write(KEY, b"a" * BIG)
    stale = store.read_many([FullRequest(KEY)])[0].etag
    store.write(KEY, b"b" * BIG)
    path = f"{store.bucket}/{store.object_key(KEY)}"

    store.fs.pipe_file(path, b"c" * BIG, IfMatch=stale)

    assert store.read(KEY)[:1] == b"c"  # the stale conditional write went through
