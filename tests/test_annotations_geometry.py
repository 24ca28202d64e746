"""Points and shapes placed over an image by several people, exported with who and when."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_zshard.annotations.geometry import (
    export_geometry,
    geometry_layers,
    load_geometry,
)
from napari_zshard.errors import ReadOnlyStoreError
from napari_zshard.sample import make_sample


@pytest.fixture
def image(tmp_path):
    return str(make_sample(tmp_path / "cells.zarr", shape=(16, 64, 64)))


def test_two_annotators_points_come_back_with_features_authors_and_the_world_transform(image):
    a = export_geometry(image, name="nuclei", kind="points", annotator="alice",
                        data=[[1, 2, 3], [4, 5, 6]], features={"kind": ["dividing", "dead"]},
                        scale=(2.0, 0.5, 0.5), translate=(0, 10, 10), message="first pass")
    b = export_geometry(image, name="nuclei", kind="points", annotator="bob",
                        data=[[7, 8, 9]], features={"kind": ["dead"]})

    g = load_geometry(image, name="nuclei")
    assert geometry_layers(image) == ["nuclei"]
    assert np.array_equal(g.data, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert g.features["kind"] == ["dividing", "dead", "dead"]
    assert g.features["author"] == ["alice", "alice", "bob"]
    assert g.ids == [*a.ids, *b.ids] and len(set(g.ids)) == 3
    assert g.scale == (2.0, 0.5, 0.5) and g.translate == (0.0, 10.0, 10.0)
    assert (a.added, b.added) == (2, 1) and a.bytes_written > 0


def test_an_unchanged_reexport_writes_nothing(image):
    export_geometry(image, name="p", kind="points", annotator="alice", data=[[1, 1, 1]])
    g = load_geometry(image, name="p")
    again = export_geometry(image, name="p", kind="points", annotator="alice", data=g.data,
                            features=g.features, base=g)
    assert again.commit_id is None and again.bytes_written == 0


def test_moves_and_deletes_apply_and_a_concurrent_move_of_the_same_point_is_a_conflict(image):
    export_geometry(image, name="p", kind="points", annotator="alice",
                    data=[[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    seen_by_alice = load_geometry(image, name="p")
    seen_by_bob = load_geometry(image, name="p")

    moved = seen_by_alice.data.copy()
    moved[0] = [9, 9, 9]
    keep = [0, 2]  # alice deletes the second point
    alice = export_geometry(image, name="p", kind="points", annotator="alice",
                            data=moved[keep], base=seen_by_alice,
                            features={"zshard_id": [seen_by_alice.ids[i] for i in keep]})
    assert (alice.modified, alice.deleted, alice.conflicts) == (1, 1, [])

    bob_moves = seen_by_bob.data.copy()
    bob_moves[0] = [5, 5, 5]
    bob = export_geometry(image, name="p", kind="points", annotator="bob", data=bob_moves,
                          base=seen_by_bob, features={"zshard_id": seen_by_bob.ids})
    assert [c.zshard_id for c in bob.conflicts] == [seen_by_bob.ids[0], seen_by_bob.ids[1]]

    final = load_geometry(image, name="p")
    assert np.array_equal(final.data, [[9, 9, 9], [3, 3, 3]])  # alice's move stands
    assert final.features["modified_by"] == ["alice", "alice"]
    assert final.features["author"] == ["alice", "alice"]


def test_shapes_round_trip_with_their_types_and_vertices(image):
    square = np.array([[5, 0, 0], [5, 0, 10], [5, 10, 10], [5, 10, 0]], float)
    line = np.array([[6, 1, 1], [6, 20, 30]], float)
    export_geometry(image, name="outlines", kind="shapes", annotator="carol",
                    data=[square, line], shape_types=["rectangle", "line"],
                    features={"note": ["a cell", "an axon"]})
    g = load_geometry(image, name="outlines")
    assert g.kind == "shapes" and g.shape_types == ["rectangle", "line"]
    assert np.array_equal(g.data[0], square) and np.array_equal(g.data[1], line)
    assert g.features["note"] == ["a cell", "an axon"]


def test_eight_annotators_exporting_at_once_lose_nothing(image):
    errors = []

    def place(i):
        try:
            export_geometry(image, name="p", kind="points", annotator=f"user{i}",
                            data=[[i, i, i], [i, i, i + 1]])
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=place, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    g = load_geometry(image, name="p")
    assert len(g.ids) == len(set(g.ids)) == 16
    assert sorted(map(tuple, g.data.tolist())) == sorted(
        (i, i, i + d) for i in range(8) for d in (0, 1))


def test_napari_takes_the_loaded_layer_with_its_features(image):
    from napari.layers import Points, Shapes

    export_geometry(image, name="p", kind="points", annotator="alice", data=[[1, 2, 3]],
                    features={"score": [0.5]}, scale=(2, 1, 1))
    g = load_geometry(image, name="p")
    layer = Points(g.data, features=g.features, scale=g.scale, translate=g.translate)
    assert layer.features["score"].tolist() == [0.5]
    assert layer.features["author"].tolist() == ["alice"]

    export_geometry(image, name="s", kind="shapes", annotator="bob",
                    data=[np.array([[1, 1, 1], [1, 5, 5]])], shape_types=["line"])
    s = load_geometry(image, name="s")
    assert Shapes(s.data, shape_type=s.shape_types, features=s.features).nshapes == 1


def test_bad_input_is_refused_with_a_message(image, http_server, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        export_geometry(image, name="p", kind="lines", annotator="a", data=[[1, 2, 3]])
    with pytest.raises(ValueError, match="one value per point"):
        export_geometry(image, name="p", kind="points", annotator="a", data=[[1, 2, 3]],
                        features={"x": [1, 2]})
    with pytest.raises(ValueError, match="shape type"):
        export_geometry(image, name="s", kind="shapes", annotator="a",
                        data=[np.zeros((2, 3))])
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        export_geometry(f"{http_server.url}/cells.zarr", name="p", kind="points",
                        annotator="a", data=[[1, 2, 3]])
    with pytest.raises(KeyError, match="no geometry layer"):
        load_geometry(image, name="missing")


def test_points_of_several_annotators_merge_into_consensus_points_with_counts(image):
    from napari_zshard import annotations as ann

    truth = np.array([[2, 10, 10], [5, 30, 30], [8, 50, 12]], float)
    rng = np.random.default_rng(1)
    for who, keep in (("alice", [0, 1, 2]), ("bob", [0, 1]), ("carol", [0, 2])):
        jitter = rng.uniform(-1, 1, size=(len(keep), 3))
        export_geometry(image, name="nuclei", kind="points", annotator=who,
                        data=truth[keep] + jitter, scale=(1, 1, 1))
    export_geometry(image, name="nuclei", kind="points", annotator="dave",
                    data=[[14, 60, 60]])  # alone: unmatched

    merged = ann.merge_points(image, name="nuclei", tolerance=4.0)

    assert merged.quorum == 3  # of 4 annotators
    assert merged.annotators == [3]  # only the first point was placed by 3 of them
    assert np.abs(merged.data[0] - truth[0]).max() < 1
    assert len(merged.unmatched) == 8 - 3  # 8 points placed in all
    again = ann.merge_points(image, name="nuclei", tolerance=4.0, quorum=2)
    assert sorted(again.annotators) == [2, 2, 3] and len(again.unmatched) == 1
    assert np.allclose(sorted(again.data[:, 0]), [2, 5, 8], atol=1)
    with pytest.raises(ValueError, match="tolerance"):
        ann.merge_points(image, name="nuclei", tolerance=0)


def test_a_compacted_history_loads_the_same_and_later_exports_build_on_it(image, monkeypatch):
    from napari_zshard.annotations import geometry

    export_geometry(image, name="p", kind="points", annotator="alice",
                    data=[[1, 1, 1], [2, 2, 2], [3, 3, 3]], features={"kind": ["a", "b", "c"]})
    g = load_geometry(image, name="p")
    moved = g.data.copy()
    moved[0] = [9, 9, 9]
    export_geometry(image, name="p", kind="points", annotator="bob", data=moved[[0, 2]],
                    base=g, features={"zshard_id": [g.ids[0], g.ids[2]], "kind": ["a", "c"]})
    before = load_geometry(image, name="p")

    assert geometry.compact_geometry(image, name="p") == 2
    after = load_geometry(image, name="p")
    assert np.array_equal(after.data, before.data) and after.features == before.features
    assert after.versions == before.versions

    monkeypatch.setattr(geometry, "COMPACT_EVERY", 1)  # every export compacts from now on
    again = export_geometry(image, name="p", kind="points", annotator="carol",
                            data=[[7, 7, 7]])
    late = export_geometry(image, name="p", kind="points", annotator="bob",
                           data=after.data, base=before,  # bob's view: before carol's point
                           features={"zshard_id": after.ids, "kind": ["a", "c"]})
    final = load_geometry(image, name="p")
    assert final.ids == [*after.ids, *again.ids] and late.commit_id is None
    assert final.features["author"] == ["alice", "alice", "carol"]
