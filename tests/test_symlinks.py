"""Symbolic links in a local store (README, "Integrity"): reads follow a link only where it
ends inside the store root; writes never create or change anything outside the root; fsck
reports a link that leads out."""

from __future__ import annotations

import json
import os

import pytest

from napari_zshard.cli import main
from napari_zshard.engine import EngineCache, open_array
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_update import write_region
from napari_zshard.errors import UnsafeKeyError
from napari_zshard.store import open_store

SHAPE, CHUNKS, SHARDS = (16, 16, 16), (8, 8, 8), (8, 16, 16)


@pytest.fixture
def array(tmp_path):
    """A two-shard uint16 array at store.zarr (shard c/0/0/0 holds 1s, c/1/0/0 2s), and a
    folder ``outside`` next to it."""
    store, meta = create_array(tmp_path / "store.zarr", shape=SHAPE, dtype="uint16",
                               chunks=CHUNKS, shards=SHARDS)
    write_region(store, meta, (slice(0, 8), slice(None), slice(None)), 1)
    write_region(store, meta, (slice(8, 16), slice(None), slice(None)), 2)
    (tmp_path / "outside").mkdir()
    return tmp_path / "store.zarr", store, meta


def link_shard_outside(root, outside):
    """Move shard c/0/0/0 out of the store and leave a symbolic link to it in its place."""
    target = outside / "secret-shard"
    os.replace(root / "c/0/0/0", target)
    os.symlink(target, root / "c/0/0/0")
    return target


def test_a_read_does_not_follow_a_link_out_of_the_store(array, tmp_path):
    root, _, _ = array
    link_shard_outside(root, tmp_path / "outside")
    arr = open_array(root, cache=EngineCache())
    with pytest.raises(UnsafeKeyError, match=r"symbolic link .*outside the store root"):
        arr[0]
    assert (arr[8:] == 2).all()  # the rest of the store reads on


def test_a_read_does_not_follow_a_linked_folder_out_of_the_store(array, tmp_path):
    root, _, _ = array
    os.replace(root / "c/1", tmp_path / "outside" / "c1")
    os.symlink(tmp_path / "outside" / "c1", root / "c/1")
    with pytest.raises(UnsafeKeyError, match="outside the store root"):
        open_array(root, cache=EngineCache())[9]


def test_a_link_that_stays_inside_the_store_is_followed(array):
    root, _, _ = array
    os.replace(root / "c/0/0/0", root / "c/0/0/moved")
    os.symlink("moved", root / "c/0/0/0")  # relative, inside
    assert (open_array(root, cache=EngineCache())[0:8] == 1).all()


def test_a_store_whose_root_is_a_link_reads(array, tmp_path):
    root, _, _ = array
    os.symlink(root, tmp_path / "alias.zarr")
    assert (open_array(tmp_path / "alias.zarr", cache=EngineCache())[8:] == 2).all()


def test_write_region_does_not_copy_outside_data_into_the_store(array, tmp_path):
    root, store, meta = array
    target = link_shard_outside(root, tmp_path / "outside")
    outside_bytes = target.read_bytes()
    with pytest.raises(UnsafeKeyError):
        write_region(store, meta, (slice(0, 1), slice(0, 1), slice(0, 1)), 9)
    assert target.read_bytes() == outside_bytes
    assert os.path.islink(root / "c/0/0/0")  # not replaced by a copy of the outside data


def test_a_write_into_a_linked_folder_creates_nothing_outside(array, tmp_path):
    root, store, _ = array
    os.symlink(tmp_path / "outside", root / "c/7")
    with pytest.raises(UnsafeKeyError):
        store.write("c/7/0/0", b"x")
    with pytest.raises(UnsafeKeyError):
        store.writer("c/7/new/0")
    with pytest.raises(UnsafeKeyError):
        store.delete("c/7/0/0")
    assert os.listdir(tmp_path / "outside") == []


def test_a_linked_lock_file_creates_nothing_outside(array, tmp_path):
    root, store, meta = array
    planted = tmp_path / "outside" / "created-by-lock"
    os.remove(root / "c/0/0/.0.lock")  # (left by the writes that made the array)
    os.symlink(planted, root / "c/0/0/.0.lock")
    with pytest.raises(UnsafeKeyError, match=r"lock file .*symbolic link"):
        write_region(store, meta, (slice(0, 1), slice(0, 1), slice(0, 1)), 9)
    assert not planted.exists()
    assert (open_array(root, cache=EngineCache())[0] == 1).all()


def test_fsck_reports_a_link_out_of_the_store(array, tmp_path, capsys):
    root, _, _ = array
    link_shard_outside(root, tmp_path / "outside")
    assert main(["fsck", str(root), "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out)
    (problem,) = report["problems"]
    assert problem["key"] == "c/0/0/0" and "symbolic link" in problem["message"]


def test_open_store_of_a_root_outside_is_still_allowed(tmp_path):
    """The policy is about what a store reaches *below* its root: a user may open any path."""
    store = open_store(tmp_path / "anywhere.zarr")
    store.write("a/b", b"1")
    assert store.read("a/b") == b"1"


def test_fsck_reports_a_linked_folder_out_of_the_store(array, tmp_path, capsys):
    root, _, _ = array
    os.replace(root / "c/1", tmp_path / "outside" / "c1")
    os.symlink(tmp_path / "outside" / "c1", root / "c/1")
    assert main(["fsck", str(root), "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(p["key"], p["kind"]) for p in report["problems"]] == [("c/1", "unsafe")]
