"""Each annotator labels the same volume in a label image of their own, then one merge."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from ome_checks import assert_peers_accept
from test_annotations_region import make_image

from napari_zshard import annotations as ann


def test_own_edits_go_to_each_annotators_label_image_and_their_commits_mark_coverage(tmp_path):
    url = make_image(tmp_path)
    box = (slice(0, 16), slice(0, 64), slice(0, 64))  # whole inner chunks
    for name, value in (("alice", 3), ("bob", 3), ("carol", 4)):
        edit = ann.checkout(url, own=True, annotator=name, region=box)
        assert edit.labels_name == ann.annotator_slug(name)
        edit.data[2:10, 8:40, 8:40] = value
        edit.commit(message=f"{name}'s pass")

    slugs = sorted(ann.annotator_slug(n) for n in ("alice", "bob", "carol"))
    assert sorted(ann.label_images(url)) == slugs
    coverage = ann.read_coverage(url, labels=ann.annotator_slug("alice")).reviewed
    assert coverage[0, :4, :4].all() and not coverage[1:].any() and not coverage[0, 4:].any()

    report = ann.merge(url, mode="semantic")
    assert sorted(report.inputs) == slugs
    consensus = ann.checkout(url, labels="consensus", annotator="reader", region=box).data
    assert (np.asarray(consensus)[2:10, 8:40, 8:40] == 3).all()  # 2 of 3 said 3

    # the store stays OME-Zarr 0.5 for every peer: 3 annotators + consensus + conflicts
    assert_peers_accept(url, labels=5)
    for name in [*slugs, "consensus", "conflicts"]:
        level0 = zarr.open_array(f"{url}/labels/{name}/0", mode="r")
        assert level0.shape == (32, 128, 128)


def test_own_and_a_named_label_image_are_one_or_the_other(tmp_path):
    url = make_image(tmp_path)
    with pytest.raises(ValueError, match="own label image"):
        ann.checkout(url, own=True, labels="cells", annotator="alice",
                     region=(slice(0, 16), slice(0, 16), slice(0, 16)))
    with pytest.raises(TypeError, match="labels="):
        ann.checkout(url, annotator="alice", region=(slice(0, 16), slice(0, 16), slice(0, 16)))


def test_objects_carry_the_class_or_name_their_annotator_gave_them(tmp_path):
    url = make_image(tmp_path)
    box = (slice(0, 16), slice(0, 32), slice(0, 32))
    edit = ann.checkout(url, labels="cells", create=True, annotator="alice", region=box)
    edit.data[1:3, 4:8, 4:8] = 7
    edit.names[7] = "nucleus"
    edit.commit(message="first")
    later = ann.checkout(url, labels="cells", annotator="bob", region=box)
    later.data[5, 5, 5] = 7
    later.names[7] = "dividing nucleus"
    later.commit(message="renamed")

    (row,) = [r for r in ann.object_table(url, labels="cells") if r["id"] == 7]
    assert row["name"] == "dividing nucleus" and row["author"] == "alice"
    assert row["modified_by"] == "bob" and row["voxels"] == 2 * 4 * 4 + 1


def test_a_commit_makes_open_arrays_of_this_process_read_again_only_the_shards_it_wrote(
        tmp_path):
    import napari_zshard as nz
    from napari_zshard import EngineCache

    url = make_image(tmp_path)  # 32 x 128 x 128 in 32 x 64 x 64 shards: 4 per level-0 plane
    edit = ann.checkout(url, labels="cells", create=True, annotator="alice",
                        region=(slice(0, 8), slice(0, 32), slice(0, 32)))
    arr = nz.open_array(f"{url}/labels/cells/0", cache=EngineCache())
    assert not arr[4].any()
    arr.reset_counters()

    edit.data[4, 0:8, 0:8] = 5
    edit.commit()

    plane = arr[4]
    assert (plane[0:8, 0:8] == 5).all() and plane.sum() == 5 * 64
    assert arr.counters["index_requests"] == 1  # shard (0, 0, 0) only; the 3 others stay cached
