"""Committing edits: only changed voxels, three-way merge, conflicts, pulls, the pyramid,
ids, the log and the object table — locally and on moto S3."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_zshard import annotations as ann
from napari_zshard.engine import open_array
from napari_zshard.multiscale.downsample import downsample
from tests.test_annotations_region import make_image

REGION = (slice(0, 32), slice(0, 80), slice(40, 128))


def levels(url: str, name: str = "cells", storage_options=None) -> list[np.ndarray]:
    store = zarr.storage.FsspecStore.from_url(url, storage_options=storage_options) \
        if url.startswith("s3://") else url
    group = zarr.open_group(store, mode="r")
    return [group[f"labels/{name}/{p}"][:] for p in ("0", "1", "2")]


def assert_pyramid_true(url: str, storage_options=None) -> None:
    lv = levels(url, storage_options=storage_options)
    for fine, coarse in itertools.pairwise(lv):
        np.testing.assert_array_equal(downsample(fine, (2, 2, 2), "mode"), coarse)


def shard_files(url: str) -> dict[str, tuple[int, bytes]]:
    out = {}
    root = os.path.join(url, "labels", "cells")
    for dirpath, _, files in os.walk(root):
        for f in files:
            if "/c/" in dirpath + "/" and not f.startswith("."):
                p = os.path.join(dirpath, f)
                out[p] = (os.stat(p).st_mtime_ns, Path(p).read_bytes())
    return out


@pytest.fixture
def url(tmp_path) -> str:
    url = make_image(tmp_path)
    ann.checkout(url, labels="cells", create=True, annotator="setup", region=REGION)
    return url


def test_commit_writes_only_what_changed_and_keeps_the_pyramid_true(url):
    edit = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    edit.data[0:8, 8:24, 8:24] = 5
    edit.data[3, 12, 12] = 0  # painted and erased again: not a change
    report = edit.commit("first")
    assert report.voxels_written == 8 * 16 * 16 - 1
    assert report.shards_written == 3  # one shard at each level
    assert report.changed_region == (slice(0, 8), slice(8, 24), slice(48, 64))
    l0 = levels(url)[0]
    assert (l0 == 5).sum() == 8 * 16 * 16 - 1 and l0[3, 12, 52] == 0
    assert (levels(url)[2] == 5).sum() == 2 * 4 * 4
    assert_pyramid_true(url)
    before = shard_files(url)
    again = edit.commit("nothing")
    assert (again.voxels_written, again.bytes_written, again.shards_written) == (0, 0, 0)
    assert shard_files(url) == before  # not even rewritten with the same bytes


def test_disjoint_voxels_in_one_chunk_merge_without_conflict(url):
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    b = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    a.data[3, 10, 10:14] = 1
    b.data[3, 11, 10:14] = 2  # same inner chunk, other voxels
    assert not a.commit().conflicts
    rb = b.commit()
    assert not rb.conflicts and rb.voxels_written == 4
    l0 = levels(url)[0]
    assert (l0[3, 10, 50:54] == 1).all() and (l0[3, 11, 50:54] == 2).all()
    # a pulled nothing yet; its next commit writes nothing and pulls b's voxels
    assert (a.data[3][11, 10:14] == 0).all()
    assert a.commit().voxels_written == 0
    assert (a.data[3][11, 10:14] == 2).all()
    assert_pyramid_true(url)


def test_conflict_is_reported_not_overwritten_and_resolved(url):
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    b = ann.checkout(url, labels="cells", annotator="Bob Smith", region=REGION)
    b.data[3, 10:12, 10:20] = 9
    rb = b.commit("bob's")
    carol = ann.checkout(url, labels="cells", annotator="carol", region=REGION)
    carol.data[20, 20, 20] = 2  # same shard, later: the conflict is still bob's
    carol.commit()
    a.data[3, 10, 10:20] = 7  # conflicts with bob
    a.data[4, 10, 10:20] = 7  # does not
    ra = a.commit("alice's")
    assert ra.voxels_written == 10
    (c,) = ra.conflicts
    assert (c.voxels, c.ours, c.theirs) == (10, 7, 9)
    assert c.bbox == (slice(3, 4), slice(10, 11), slice(50, 60))
    assert c.centroid == (3.0, 10.0, 54.5)
    assert (c.their_commit, c.their_annotator) == (rb.commit_id, "Bob Smith")
    l0 = levels(url)[0]
    assert (l0[3, 10, 50:60] == 9).all() and (l0[4, 10, 50:60] == 7).all()
    # pending: neither re-reported nor written by the next commit
    assert a.pending_conflicts == [c]
    again = a.commit()
    assert again.voxels_written == 0 and not again.conflicts
    # bob's non-conflicting row was pulled in; our conflicting one is still ours
    assert (a.data[3][11, 10:20] == 9).all() and (a.data[3][10, 10:20] == 7).all()
    a.resolve(keep="mine")
    assert not a.pending_conflicts
    override = a.commit("keep mine")
    assert override.voxels_written == 10 and not override.conflicts
    assert (levels(url)[0][3, 10, 50:60] == 7).all()
    record = ann.log(url)[-1]
    assert record.commit_id == override.commit_id
    # the override is logged with the commit
    raw = Path(url, "labels/cells/zshard/commits", record.commit_id,
               "record.json").read_text()
    assert '"overrides"' in raw and '"theirs": 9' in raw
    # take theirs
    b2 = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    b2.data[5, 0:2, 0:2] = 4
    b2.commit()
    a.data[5, 0:2, 0:2] = 6
    (c2,) = a.commit().conflicts
    a.resolve([c2], keep="theirs")
    assert (a.data[5][0:2, 0:2] == 4).all()
    assert a.commit().voxels_written == 0
    assert_pyramid_true(url)


def test_painting_during_a_commit_is_kept_and_committed_next(url):
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    b = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    b.data[6, 0, 0:4] = 3
    b.commit()
    a.data[2, 0, 0] = 1
    steps = a.commit_steps("while painting")
    first = next(steps)
    assert first.cancellable
    a.data[2, 0, 1] = 2  # after the snapshot
    a.data[6, 0, 0] = 8  # over a colleague's change the commit is about to pull
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        report = stop.value
    assert report.voxels_written == 1
    assert a.data[2][0, 1] == 2 and a.data[6][0, 0] == 8 and (a.data[6][0, 1:4] == 3).all()
    # the later paint over bob's voxel is a conflict, not a silent overwrite
    nxt = a.commit()
    assert nxt.voxels_written == 1 and [(c.ours, c.theirs) for c in nxt.conflicts] == [(8, 3)]
    assert levels(url)[0][2, 0, 41] == 2


def test_cancel_before_the_first_shard_writes_nothing(url):
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    a.data[1, 1, 1] = 1
    before = shard_files(url)
    steps = a.commit_steps()
    assert next(steps).cancellable
    steps.close()
    assert shard_files(url) == before
    assert ann.log(url) == []
    assert a.commit().voxels_written == 1  # still dirty


def test_engine_readers_see_the_commit(url):
    arr = open_array(os.path.join(url, "labels/cells/0"))
    assert arr[3, 10, 50] == 0  # cached now
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    a.data[3, 10, 10] = 12
    a.commit()
    assert open_array(os.path.join(url, "labels/cells/0"))[3, 10, 50] == 12


def test_label_ids_are_reserved_in_disjoint_blocks(tmp_path):
    url = make_image(tmp_path)
    seed = ann.checkout(url, labels="cells", create=True, annotator="x", region=REGION)
    seed.data[0, 0, 0] = 4000  # an id stored before any reservation object existed
    seed.commit()
    import shutil

    shutil.rmtree(os.path.join(url, "labels/cells/zshard"), ignore_errors=True)
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    b = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    ids_a = [a.new_label_id() for _ in range(1500)]
    ids_b = [b.new_label_id() for _ in range(10)]
    assert min(ids_a + ids_b) > 4000  # the bounded scan found the stored id
    assert len(set(ids_a) | set(ids_b)) == 1510
    # an id typed in by hand above every block: reported, and no later block contains it
    typed = max(ids_a + ids_b) + 5000
    a.data[1, 1, 1] = typed
    assert a.commit().unreserved_ids == [typed]
    c = ann.checkout(url, labels="cells", annotator="carol", region=REGION)
    assert c.new_label_id() > typed


def test_log_and_object_table(url):
    a = ann.checkout(url, labels="cells", annotator="alice", region=REGION)
    a.data[0, 0:2, 0:3] = 11
    r1 = a.commit("one")
    b = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    b.data[0, 0, 0:3] = 12
    r2 = b.commit("two")
    records = ann.log(url)
    assert [r.commit_id for r in records] == [r1.commit_id, r2.commit_id]
    assert [(r.annotator, r.message, r.status) for r in records] == [
        ("alice", "one", "committed"), ("bob", "two", "committed")]
    rows = {r["id"]: r for r in ann.object_table(url, labels="cells")}
    assert rows[11]["author"] == "alice" and rows[11]["voxels"] == 3
    assert rows[11]["modified_by"] == "bob"
    assert rows[11]["bbox"] == "0:1;0:2;40:43"  # what it gained; it lost its first row since
    assert rows[12]["voxels"] == 3 and rows[12]["bbox"] == "0:1;0:1;40:43"
    from napari_zshard.annotations.labelimage import open_label_image
    from napari_zshard.annotations.provenance import compact_objects
    from napari_zshard.store import open_store

    li = open_label_image(open_store(url), "cells")
    assert compact_objects(li) == 2
    compacted = {r["id"]: r for r in ann.object_table(url, labels="cells")}
    assert {v: r["voxels"] for v, r in compacted.items()} == {11: 3, 12: 3}
    assert compacted[11]["bbox"] == "0:1;1:2;40:43"  # recomputed: the box shrank
    import pandas as pd

    table = pd.read_csv(os.path.join(url, "labels/cells/zshard/objects/table.csv"),
                        comment="#")
    assert list(table["id"]) == [11, 12]
    # the compaction lists the objects in image-label.properties, our fields namespaced
    from ome_zarr_models.v05 import ImageLabel

    labels = zarr.open_group(url, mode="r")["labels/cells"]
    props = labels.attrs["ome"]["image-label"]["properties"]
    assert [(p["label-value"], p["zshard"]["author"]) for p in props] == [(11, "alice"),
                                                                          (12, "bob")]
    ImageLabel.from_zarr(labels)


def test_commit_and_conflict_on_s3(tmp_path, s3_bucket, s3_options, put_on_s3):
    local = make_image(tmp_path)
    s3_url = f"{s3_bucket}/img.zarr"
    put_on_s3(local, s3_url, s3_options["endpoint_url"])
    a = ann.checkout(s3_url, labels="cells", create=True, annotator="alice", region=REGION,
                     storage_options=s3_options)
    b = ann.checkout(s3_url, labels="cells", annotator="bob", region=REGION,
                     storage_options=s3_options)
    assert ann.label_images(s3_url, storage_options=s3_options) == ["cells"]
    a.data[3, 10, 10:20] = 7
    b.data[3, 10, 15:25] = 9
    b.data[3, 11, 10:20] = 9
    assert b.commit().voxels_written == 20
    ra = a.commit()
    assert ra.voxels_written == 5 and [(c.voxels, c.ours, c.theirs) for c in ra.conflicts] == [
        (5, 7, 9)]
    l0 = levels(s3_url, storage_options=s3_options)[0]
    assert (l0[3, 10, 50:55] == 7).all() and (l0[3, 10, 55:65] == 9).all()
    assert_pyramid_true(s3_url, storage_options=s3_options)
    assert len(ann.log(s3_url, storage_options=s3_options)) == 2


def test_anisotropic_pyramid_uses_the_metadata_factors(tmp_path):
    url = str(tmp_path / "aniso.zarr")
    img = np.zeros((16, 128, 128), np.uint8)
    from napari_zshard.multiscale.write import ImageSpec, WriteOptions, write_image

    for _ in write_image(url, img, ImageSpec(name="img", scale=(4.0, 1.0, 1.0)),
                         options=WriteOptions(chunks=(8, 16, 16), shards=(16, 64, 64),
                                              levels=3)):
        pass
    edit = ann.checkout(url, labels="cells", create=True, annotator="a")
    edit.data[0:6, 10:40, 20:60] = 3
    edit.data[9, 100:120, 0:30] = 4
    assert edit.commit().voxels_written == 6 * 30 * 40 + 20 * 30
    group = zarr.open_group(url, mode="r")
    lv = [group[f"labels/cells/{p}"][:] for p in ("0", "1", "2")]
    assert [a.shape for a in lv] == [group[p].shape for p in ("0", "1", "2")]
    for fine, coarse in itertools.pairwise(lv):
        factors = tuple(f // c for f, c in zip(fine.shape, coarse.shape, strict=True))
        assert factors[1:] == (2, 2)
        np.testing.assert_array_equal(downsample(fine, factors, "mode"), coarse)
    assert (lv[2] == 3).any()
