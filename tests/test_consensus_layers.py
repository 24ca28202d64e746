"""A merged store opened in napari: the conflicts on top and shown, each annotator's labels and
the consensus listed but hidden, the merge's tables as the layers' features (hover text)."""

from __future__ import annotations

import numpy as np
import pytest
from test_annotations_region import make_image

from napari_zshard import annotations as ann
from napari_zshard.annotations.consensus import CONFLICT_VALUE

napari = pytest.importorskip("napari")

BOX = (slice(0, 16), slice(0, 64), slice(0, 64))  # whole inner chunks: every annotator covers it
#: where they disagree (each inside one 16³ inner chunk, so each is one semantic conflict):
#: a big one, three different values, and a small one, where carol left background
BIG = (slice(2, 10), slice(36, 46), slice(20, 30))
SMALL = (slice(4, 6), slice(4, 8), slice(50, 54))
NAMES = ("alice", "bob", "carol")


def merged_store(tmp_path, *, merge: bool = True) -> str:
    """Three annotators in their own label images: they agree on a cell (3, carol says 4),
    disagree on BIG (5/6/7) and SMALL (8/9/0); merged (semantic) when ``merge``."""
    url = make_image(tmp_path)
    for name, agree, big, small in (("alice", 3, 5, 8), ("bob", 3, 6, 9), ("carol", 4, 7, 0)):
        edit = ann.checkout(url, own=True, annotator=name, region=BOX)
        edit.data[2:10, 8:30, 40:60] = agree
        edit.data[BIG] = big
        edit.data[SMALL] = small
        edit.commit(message=f"{name}'s pass")
    if merge:
        ann.merge(url, mode="semantic", workers=1)
    return url


@pytest.fixture
def viewer_model(npe2pm):
    from napari.components import ViewerModel

    with npe2pm.tmp_plugin(package="napari-zshard"):
        yield ViewerModel()


def test_a_merged_store_opens_with_the_conflicts_on_top_and_the_tables_as_features(
        tmp_path, viewer_model):
    url = merged_store(tmp_path)
    viewer_model.open(url, plugin="napari-zshard")
    slugs = [ann.annotator_slug(n) for n in NAMES]
    names = [layer.name for layer in viewer_model.layers]
    assert names[0] == "img" and names[-1] == "conflicts"  # on top
    assert sorted(names[1:-1]) == sorted([*slugs, "consensus"])
    visible = {layer.name: layer.visible for layer in viewer_model.layers}
    assert visible == {"img": True, "conflicts": True, "consensus": False,
                       **dict.fromkeys(slugs, False)}

    conflicts = viewer_model.layers["conflicts"]
    table = conflicts.features
    assert len(table) == 2
    big = table.loc[table["voxels"].idxmax()]
    assert big["voxels"] == 8 * 10 * 10 and big["kind"] == "tie"
    assert big["annotators"].split() == sorted(slugs)
    assert big["centroid"] == "5.5 40.5 24.5"  # world coordinates (scale 1 here)
    # napari's hover text: the row of the conflict under the cursor
    data = np.asarray(conflicts.data[0])
    assert int(data[5, 40, 24]) == int(big["index"])
    assert conflicts.get_status((5, 40, 24))["coordinates"].count("tie") == 1

    consensus = viewer_model.layers["consensus"]
    rows = dict(zip(consensus.features["index"], consensus.features["voxels"], strict=True))
    assert rows[3] == int((np.asarray(consensus.data[0]) == 3).sum()) > 0
    assert rows[int(CONFLICT_VALUE)] == 8 * 10 * 10 + 2 * 4 * 4


def test_a_store_without_a_merge_opens_as_before(tmp_path, viewer_model):
    url = merged_store(tmp_path, merge=False)
    viewer_model.open(url, plugin="napari-zshard")
    slugs = sorted(ann.annotator_slug(n) for n in NAMES)
    assert [layer.name for layer in viewer_model.layers][1:] == slugs  # listed order
    assert all(layer.visible for layer in viewer_model.layers)
    assert all("consensus_role" not in layer.metadata["napari_zshard"]
               for layer in viewer_model.layers)


def test_an_instance_merge_shows_each_consensus_objects_sources_on_hover(tmp_path, viewer_model):
    url = merged_store(tmp_path, merge=False)
    report = ann.merge(url, mode="instance", workers=1)
    viewer_model.open(url, plugin="napari-zshard")
    consensus = viewer_model.layers["consensus"]
    table = consensus.features
    assert len(table) == report.consensus_objects > 0
    data = np.asarray(consensus.data[0])
    for cid, voxels, sources in zip(table["index"], table["voxels"], table["sources"],
                                    strict=True):
        assert int((data == cid).sum()) == voxels
        assert all(s.split(":")[0] in [ann.annotator_slug(n) for n in NAMES]
                   for s in sources.split())
    assert len(viewer_model.layers["conflicts"].features) == report.conflicts
    assert viewer_model.layers[-1].name == "conflicts"
