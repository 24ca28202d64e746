"""Local folders (and fsspec's in-memory file system): byte reads, atomic writes, safe keys."""

from __future__ import annotations

import os
import pickle
import threading
import uuid

import pytest

from napari_zshard.errors import ShortReadError, StoreError, UnsafeKeyError
from napari_zshard.store import FullRequest, RangeRequest, SuffixRequest, open_store
from napari_zshard.store.local import LocalStore

PAYLOAD = bytes(range(256)) * 4  # 1 KiB, every byte value at a known position


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    """A writable store: a local folder, or a folder of fsspec's memory file system."""
    if request.param == "local":
        return open_store(tmp_path / "vol.zarr")
    return open_store(f"memory://zshard-tests/{uuid.uuid4().hex}/vol.zarr")


def test_open_store_gives_a_local_store_for_paths_and_file_urls(tmp_path):
    by_path = open_store(tmp_path / "vol.zarr")
    by_url = open_store((tmp_path / "vol.zarr").as_uri())
    assert isinstance(by_path, LocalStore) and isinstance(by_url, LocalStore)
    assert by_path.root == by_url.root == tmp_path / "vol.zarr"
    assert repr(by_path) == f"LocalStore({(tmp_path / 'vol.zarr').as_uri()!r})"


def test_ranged_suffix_and_full_reads_return_the_bytes_and_the_object_size(store):
    store.write("c/0/0", PAYLOAD)

    ranged, suffix, full = store.read_many([
        RangeRequest("c/0/0", 100, 50), SuffixRequest("c/0/0", 16), FullRequest("c/0/0"),
    ])

    assert ranged.data == PAYLOAD[100:150]
    assert suffix.data == PAYLOAD[-16:]
    assert full.data == PAYLOAD
    assert ranged.object_size == suffix.object_size == full.object_size == len(PAYLOAD)
    assert store.read("c/0/0") == PAYLOAD


def test_a_batch_over_many_objects_comes_back_in_request_order(store):
    for i in range(8):
        store.write(f"c/{i}", bytes([i]) * 64)

    results = store.read_many([RangeRequest(f"c/{i}", i, 4) for i in reversed(range(8))])

    assert [r.data for r in results] == [bytes([i]) * 4 for i in reversed(range(8))]


def test_a_suffix_longer_than_the_object_returns_the_whole_object(store):
    store.write("small", b"abc")

    (result,) = store.read_many([SuffixRequest("small", 1024)])

    assert result.data == b"abc"
    assert result.object_size == 3


def test_a_missing_key_reads_as_none(store):
    store.write("zarr.json", b"{}")

    results = store.read_many([FullRequest("c/9/9"), RangeRequest("c/9/9", 0, 10),
                               SuffixRequest("c/9/9", 10), FullRequest("zarr.json")])

    assert [r.data for r in results[:3]] == [None, None, None]
    assert results[3].data == b"{}"
    assert store.read("nothing/here") is None


def test_a_range_past_the_end_of_an_object_is_a_short_read(store):
    store.write("shard", PAYLOAD)

    with pytest.raises(ShortReadError) as partly_past:
        store.read_many([RangeRequest("shard", len(PAYLOAD) - 10, 20)])
    with pytest.raises(ShortReadError) as wholly_past:
        store.read_many([RangeRequest("shard", len(PAYLOAD) + 5, 20)])

    assert partly_past.value.key == "shard"
    assert (partly_past.value.requested, partly_past.value.received) == (20, 10)
    assert wholly_past.value.received == 0
    assert "shard" in str(partly_past.value)


def test_big_ranges_read_back_exactly_and_cannot_be_written_through(store):
    big = bytes(range(256)) * 8192  # 2 MiB: read into a buffer of its own on a local disk
    store.write("c/1", big)
    ranged, suffix, full = store.read_many([
        RangeRequest("c/1", 3, len(big) - 10), SuffixRequest("c/1", len(big) - 1),
        FullRequest("c/1")])
    assert bytes(ranged.data) == big[3:-7] and bytes(suffix.data) == big[1:]
    assert isinstance(full.data, bytes) and full.data == big
    for data in (ranged.data, suffix.data):
        with pytest.raises(TypeError):
            memoryview(data)[0] = 1
    with pytest.raises(ShortReadError):
        store.read_many([RangeRequest("c/1", 1 << 20, 2 << 20)])


@pytest.mark.parametrize("key", ["../outside", "/etc/passwd", "c//0", "c/./0", "a\x00b", "c\\0"])
def test_keys_that_could_escape_the_store_are_refused(store, key):
    with pytest.raises(UnsafeKeyError):
        store.read_many([FullRequest(key)])
    with pytest.raises(UnsafeKeyError):
        store.write(key, b"x")


def test_list_prefix_finds_written_objects_with_their_sizes(store):
    store.write("zarr.json", b"{}")
    store.write("c/0/0", b"x" * 10)
    store.write("c/0/1", b"y" * 20)

    assert sorted(store.list_prefix("c")) == [("c/0/0", 10), ("c/0/1", 20)]
    assert sorted(k for k, _ in store.list_prefix("")) == ["c/0/0", "c/0/1", "zarr.json"]
    assert list(store.list_prefix("nothing")) == []


def test_delete_removes_an_object_and_ignores_a_missing_one(store):
    store.write("c/0/0", b"x")

    store.delete("c/0/0")
    store.delete("c/0/0")

    assert store.read("c/0/0") is None


def test_a_store_pickles_to_the_same_place(store):
    store.write("zarr.json", b"{}")

    clone = pickle.loads(pickle.dumps(store))

    assert type(clone) is type(store) and clone.url == store.url
    assert clone.read("zarr.json") == b"{}"


# -- atomic writes to a local folder ----------------------------------------------------------
def test_a_write_replaces_the_object_and_leaves_no_temporary_file(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")

    store.write("c/0/0", b"old")
    store.write("c/0/0", b"new")

    assert store.read("c/0/0") == b"new"
    assert os.listdir(tmp_path / "vol.zarr" / "c" / "0") == ["0"]


def test_readers_see_the_old_or_the_new_bytes_never_a_mix(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")
    versions = [bytes([v]) * 256 * 1024 for v in (1, 2)]
    store.write("shard", versions[0])
    seen: list[bytes | None] = []
    done = threading.Event()

    def reader():
        while not done.is_set():
            seen.append(store.read("shard"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            store.write("shard", versions[i % 2])
    finally:
        done.set()
        thread.join()

    assert seen and all(data in versions for data in seen)


def test_a_failed_write_keeps_the_old_state_and_names_the_path(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")
    (tmp_path / "vol.zarr" / "c" / "0").mkdir(parents=True)  # a folder where a shard should go

    with pytest.raises(StoreError, match="c/0"):
        store.write("c/0", b"shard bytes")

    assert (tmp_path / "vol.zarr" / "c" / "0").is_dir()
    assert os.listdir(tmp_path / "vol.zarr" / "c") == ["0"]  # no temporary file left behind


def test_writing_below_a_file_is_a_store_error_naming_the_path(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")
    store.write("c", b"a file, not a folder")

    with pytest.raises(StoreError, match=r"vol\.zarr/c/0/0"):
        store.write("c/0/0", b"x")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders anyway; covered by the tests "
                           "above, which fail the same code path without permissions")
def test_writing_into_a_read_only_folder_is_a_store_error_naming_the_path(tmp_path):
    folder = tmp_path / "vol.zarr"
    folder.mkdir()
    store = LocalStore(folder)
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=r"vol\.zarr/zarr\.json"):
            store.write("zarr.json", b"{}")
    finally:
        folder.chmod(0o755)
    assert os.listdir(folder) == []


# -- objects written piece by piece (a shard streamed as it is encoded) -----------------------
def test_a_streamed_object_appears_whole_at_commit_and_not_before(store):
    store.write("c/0/0", b"old")
    pieces = [bytes([i % 251]) * (i % 7 + 1) for i in range(3000)]  # more than one writev takes
    out = store.writer("c/0/0")
    out.write(pieces[:10])
    out.write([memoryview(b"".join(pieces[10:20]))])
    out.write(pieces[20:])
    assert store.read("c/0/0") == b"old"  # nothing shows before the commit
    assert out.size == sum(map(len, pieces))

    out.commit()

    assert store.read("c/0/0") == b"".join(pieces)
    assert [key for key, _ in store.list_prefix("")] == ["c/0/0"]


def test_an_aborted_stream_leaves_the_object_as_it_was(store):
    store.write("c/0/0", b"old")
    out = store.writer("c/0/0")
    out.write([b"new bytes"])
    out.abort()
    out.abort()  # (twice is harmless)

    assert store.read("c/0/0") == b"old"
    fresh = store.writer("c/0/1")
    fresh.write([b"x"])
    fresh.abort()
    assert store.read("c/0/1") is None
    assert [key for key, _ in store.list_prefix("")] == ["c/0/0"]


def test_a_local_stream_leaves_no_temporary_file_and_survives_short_writes(tmp_path,
                                                                           monkeypatch):
    import napari_zshard.store.local_files as local

    real = local._writev or (lambda fd, views: os.write(fd, views[0]))
    monkeypatch.setattr(local, "_writev", lambda fd, views: real(fd, [views[0][:1000]]))
    store = LocalStore(tmp_path / "vol.zarr")
    data = os.urandom(10_000)
    out = store.writer("c/0/0")
    out.write([data[:4321], data[4321:]])
    assert [p.name.startswith(".0.") for p in (tmp_path / "vol.zarr/c/0").iterdir()] == [True]
    out.commit()

    assert (tmp_path / "vol.zarr/c/0/0").read_bytes() == data
    assert os.listdir(tmp_path / "vol.zarr" / "c" / "0") == ["0"]


def test_a_failed_stream_is_a_store_error_naming_the_path_and_leaves_nothing(tmp_path,
                                                                            monkeypatch):
    import errno

    import napari_zshard.store.local_files as local

    def full(fd, views):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(local, "_writev", full)
    store = LocalStore(tmp_path / "vol.zarr")
    out = store.writer("c/0/0")
    with pytest.raises(StoreError, match=r"vol\.zarr/c/0/0.*No space"):
        out.write([b"shard bytes"])
    out.abort()
    assert os.listdir(tmp_path / "vol.zarr" / "c" / "0") == []


def test_a_store_opened_read_only_refuses_writes(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")
    store.read_only = True

    with pytest.raises(StoreError, match="read-only"):
        store.write("zarr.json", b"{}")
    with pytest.raises(StoreError, match="read-only"):
        store.writer("zarr.json")
    assert not (tmp_path / "vol.zarr" / "zarr.json").exists()


WRITER = """
import sys
from napari_zshard.store.local import LocalStore
w = LocalStore(sys.argv[1]).writer("c/0/1")
w.write([bytes(1 << 20)])
print("writing", flush=True)
sys.stdin.read()  # the writer stays open until killed
"""


def partial_files(root) -> list:
    return sorted(p for p in root.rglob(".*.tmp"))


def age(paths, seconds: float = 3600) -> None:
    import time

    for p in paths:
        os.utime(p, (time.time() - seconds,) * 2)


def test_a_killed_writers_partial_file_is_swept_a_live_writers_is_not(tmp_path):
    import signal
    import subprocess
    import sys

    store = LocalStore(tmp_path / "vol.zarr")
    store.write("c/0/0", b"kept")
    job = subprocess.Popen([sys.executable, "-c", WRITER, str(store.root)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline() == "writing\n"
        (partial,) = partial_files(store.root)
        age([partial])  # however old it looks, a live writer holds it
        assert store.sweep_temporaries() == (0, 0)
        assert partial.exists()
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(10)
    # the writer died with its lock: what it left is swept, and nothing else
    assert store.sweep_temporaries() == (1, 1 << 20)
    assert partial_files(store.root) == []
    assert store.read("c/0/0") == b"kept" and store.read("c/0/1") is None


def test_a_just_created_file_is_left_alone_for_its_first_seconds(tmp_path):
    store = LocalStore(tmp_path / "vol.zarr")
    store.write("c/0/0", b"kept")
    # what a writer holds for an instant between creating its file and locking it (a .tmp
    # is locked from birth: an unlocked one is a dead writer's, however young)
    fresh = store.root / "c" / "0" / ".1.abc123.new"
    fresh.write_bytes(b"x" * 10)

    assert store.sweep_temporaries() == (0, 0)
    age([fresh])
    assert store.sweep_temporaries() == (1, 10)
    assert [k for k, _ in store.list_prefix("")] == ["c/0/0"]
