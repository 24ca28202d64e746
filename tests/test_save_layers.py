"""File ▸ Save Layers ▸ sharded zarr: a napari user saves images and labels and opens them again.

The Save dialog passes the name as typed; the writer adds ``.zarr`` and returns what it wrote.
Everything the layers show comes back: pixels, placement, units, names, display window and
color, label colors and features; multiscale layers keep their own levels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from ome_checks import assert_peers_accept

from napari_zshard import MetadataError, StoreError
from napari_zshard.plugin.writer import write_layers

pytest.importorskip("napari")


@pytest.fixture
def viewer_model(npe2pm):
    from napari.components import ViewerModel

    with npe2pm.tmp_plugin(package="napari-zshard"):
        yield ViewerModel()


def new_viewer():
    from napari.components import ViewerModel

    return ViewerModel()


def cells(shape=(20, 64, 80), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, size=shape, dtype=np.uint16)


def nuclei(shape=(20, 64, 80)) -> np.ndarray:
    labels = np.zeros(shape, np.uint32)
    labels[2:8, 5:20, 5:30] = 3
    labels[10:15, 30:60, 40:70] = 7
    return labels


def add_cells_and_nuclei(viewer):
    placement = {"scale": (2.0, 0.5, 0.5), "translate": (10.0, 1.0, 2.0),
                 "units": ("micrometer",) * 3, "axis_labels": ("z", "y", "x")}
    viewer.add_image(cells(), name="cells", contrast_limits=(100, 3000), colormap="magenta",
                     **placement)
    labels = viewer.add_labels(nuclei(), name="nuclei", features=pd.DataFrame(
        {"index": [3, 7], "area": [1.5, 2.5], "kind": ["round", "long"]}), **placement)
    labels.colormap = {3: "red", 7: "blue", None: "transparent"}


def assert_same_layers(saved, opened):
    assert [(type(a).__name__, a.name) for a in opened] == \
        [(type(a).__name__, a.name) for a in saved]
    for a, b in zip(saved, opened, strict=True):
        assert b.multiscale == a.multiscale
        levels_a = list(a.data) if a.multiscale else [a.data]
        levels_b = list(b.data) if b.multiscale else [b.data]
        assert [lv.shape for lv in levels_b] == [lv.shape for lv in levels_a]
        for x, y in zip(levels_a, levels_b, strict=True):
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
        np.testing.assert_allclose(b.scale, a.scale)
        np.testing.assert_allclose(b.translate, a.translate)
        assert tuple(b.units) == tuple(a.units)
        assert tuple(b.axis_labels) == tuple(a.axis_labels)
        if type(a).__name__ == "Image":
            assert tuple(b.contrast_limits) == tuple(a.contrast_limits)
            np.testing.assert_allclose(b.colormap.colors[-1], a.colormap.colors[-1])
        else:
            values = np.array([0, 3, 7])
            np.testing.assert_allclose(b.colormap.map(values), a.colormap.map(values))
            pd.testing.assert_frame_equal(b.features, a.features, check_dtype=False)


@pytest.mark.parametrize("typed", ["cells", "cells.zarr"])
def test_save_dialog_writes_one_store_and_reopening_gives_the_same_layers(
        viewer_model, tmp_path, typed):
    add_cells_and_nuclei(viewer_model)

    written = viewer_model.layers.save(str(tmp_path / typed), plugin="napari-zshard")

    assert written == [str(tmp_path / "cells.zarr")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.zarr"]
    peer = assert_peers_accept(written[0], channels=1, labels=1)
    ((_, meta),) = peer.images  # the display window and color reach napari-ome-zarr too
    assert meta["contrast_limits"] == [100, 3000] and meta["colormap"].name == "magenta"
    opened = new_viewer()
    opened.open(written[0], plugin="napari-zshard")
    assert_same_layers(viewer_model.layers, opened.layers)


def test_open_save_open_gives_the_same_layers(viewer_model, tmp_path):
    add_cells_and_nuclei(viewer_model)
    (first,) = viewer_model.layers.save(str(tmp_path / "first"), plugin="napari-zshard")
    assert_peers_accept(first, channels=1, labels=1)
    reopened = new_viewer()
    reopened.open(first, plugin="napari-zshard")

    (second,) = reopened.layers.save(str(tmp_path / "second"), plugin="napari-zshard")
    assert_peers_accept(second, channels=1, labels=1)

    again = new_viewer()
    again.open(second, plugin="napari-zshard")
    assert_same_layers(viewer_model.layers, again.layers)


def test_a_multiscale_layer_is_saved_as_its_own_levels(viewer_model, tmp_path):
    base = cells((24, 96, 128), seed=1)
    pyramid = [base, base[::2, ::2, ::2].copy(), base[::4, ::4, ::4].copy()]
    viewer_model.add_image(pyramid, multiscale=True, name="pyr", contrast_limits=(0, 4000))
    assert viewer_model.layers[0].axis_labels == ("-3", "-2", "-1")  # napari's placeholders

    (path,) = viewer_model.layers.save(str(tmp_path / "pyr"), plugin="napari-zshard")

    group = zarr.open_group(path, mode="r")
    for i, level in enumerate(pyramid):
        np.testing.assert_array_equal(group[str(i)][...], level)
    assert_peers_accept(path, channels=1)
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    assert opened.layers[0].axis_labels == ("z", "y", "x")  # named as OME-Zarr wants
    opened.layers[0].axis_labels = viewer_model.layers[0].axis_labels
    assert_same_layers(viewer_model.layers, opened.layers)


def test_a_labels_layer_alone_is_saved_and_reopened_as_labels(viewer_model, tmp_path):
    viewer_model.add_labels(np.zeros((20, 64, 80), np.uint8), name="nothing yet")
    (path,) = viewer_model.layers.save(str(tmp_path / "empty"), plugin="napari-zshard")
    viewer_model.layers.clear()
    viewer_model.add_labels(nuclei(), name="nuclei")
    (nuclei_path,) = viewer_model.layers.save(str(tmp_path / "seg"), plugin="napari-zshard")
    assert_peers_accept(path, labels=1)
    assert_peers_accept(nuclei_path, labels=1)

    opened = new_viewer()
    opened.open(nuclei_path, plugin="napari-zshard")
    opened.open(path, plugin="napari-zshard")
    assert [(type(a).__name__, a.name) for a in opened.layers] == [
        ("Labels", "nuclei"), ("Labels", "nothing yet")]
    np.testing.assert_array_equal(np.asarray(opened.layers[0].data), nuclei())
    assert not np.asarray(opened.layers[1].data).any()  # all background: no shard stored


def test_labels_without_their_image_are_saved_one_at_a_time(tmp_path):
    layers = [(nuclei(), {"name": "a"}, "labels"), (nuclei(), {"name": "b"}, "labels")]
    with pytest.raises(MetadataError, match="together with the image they belong to"):
        write_layers(str(tmp_path / "x"), layers)
    assert list(tmp_path.iterdir()) == []


def test_label_colors_and_features_for_different_labels_still_make_valid_metadata(
        viewer_model, tmp_path):
    from ome_zarr_models.v05 import ImageLabel

    labels = viewer_model.add_labels(nuclei(), name="nuclei", features=pd.DataFrame(
        {"index": [3], "area": [1.5]}))
    labels.colormap = {7: "blue", None: "transparent"}  # a color for 7, features for 3

    (path,) = viewer_model.layers.save(str(tmp_path / "seg"), plugin="napari-zshard")

    ImageLabel.from_zarr(zarr.open_group(path, mode="r"))
    assert_peers_accept(path, labels=1)
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    (back,) = opened.layers
    values = np.array([3, 7])
    np.testing.assert_allclose(back.colormap.map(values), labels.colormap.map(values))
    assert back.features.set_index("index").loc[3, "area"] == 1.5


def test_2d_images_and_time_series_save_and_reopen(viewer_model, tmp_path):
    viewer_model.add_image(cells((64, 80)), name="plane", contrast_limits=(0, 4000))
    (path,) = viewer_model.layers.save(str(tmp_path / "plane"), plugin="napari-zshard")
    assert len(zarr.open_array(f"{path}/0", mode="r").chunks) == 2
    assert_peers_accept(path, channels=1)

    viewer_model.layers.clear()
    viewer_model.add_image(cells((3, 8, 64, 80)), name="movie", contrast_limits=(0, 4000),
                           scale=(60.0, 2.0, 0.5, 0.5),
                           units=("second", "micrometer", "micrometer", "micrometer"))
    (movie,) = viewer_model.layers.save(str(tmp_path / "movie"), plugin="napari-zshard")
    assert_peers_accept(movie, channels=1)
    opened = new_viewer()
    opened.open(movie, plugin="napari-zshard")
    (back,) = opened.layers
    assert tuple(back.axis_labels) == ("t", "z", "y", "x")
    assert [str(u) for u in back.units] == ["second", "micrometer", "micrometer", "micrometer"]
    np.testing.assert_allclose(back.scale, (60.0, 2.0, 0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(back.data), viewer_model.layers[0].data)

    plane = new_viewer()
    plane.open(path, plugin="napari-zshard")
    np.testing.assert_array_equal(np.asarray(plane.layers[0].data), cells((64, 80)))


def test_a_5d_layer_comes_back_as_one_layer_per_channel(viewer_model, tmp_path):
    data = cells((2, 3, 8, 32, 40))  # t, c, z, y, x
    viewer_model.add_image(data, name="multi", contrast_limits=(0, 4000))

    (path,) = viewer_model.layers.save(str(tmp_path / "multi"), plugin="napari-zshard")

    peer = assert_peers_accept(path, channels=3)  # one omero channel per channel index
    assert peer.image_names() == ["multi: multi c0", "multi: multi c1", "multi: multi c2"]
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    assert [layer.name for layer in opened.layers] == ["multi c0", "multi c1", "multi c2"]
    for c, layer in enumerate(opened.layers):
        assert layer.data.shape == (2, 8, 32, 40)
        np.testing.assert_array_equal(np.asarray(layer.data), data[:, c])


def test_an_rgb_image_is_saved_as_red_green_and_blue_channels(viewer_model, tmp_path):
    from ome_zarr_models.v05 import Image

    photo = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    viewer_model.add_image(photo, name="slide", rgb=True, scale=(0.25, 0.25))

    (path,) = viewer_model.layers.save(str(tmp_path / "slide"), plugin="napari-zshard")

    Image.from_zarr(zarr.open_group(path, mode="r"))  # (c, y, x): valid OME-Zarr
    peer = assert_peers_accept(path, channels=3)
    assert [c.name for c in peer.images[0][1]["colormap"]] == ["red", "green", "blue"]
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    assert [(a.name, a.colormap.name) for a in opened.layers] == [
        ("slide R", "red"), ("slide G", "green"), ("slide B", "blue")]
    for c, layer in enumerate(opened.layers):
        np.testing.assert_array_equal(np.asarray(layer.data), photo[..., c])
        np.testing.assert_allclose(layer.scale, (0.25, 0.25))


def test_shapes_and_points_are_refused_before_anything_is_written(tmp_path):
    image = (cells(), {"name": "cells"}, "image")
    for other in [(np.zeros((2, 3)), {"name": "dots"}, "points"),
                  ([np.zeros((4, 3))], {"name": "outlines"}, "shapes")]:
        with pytest.raises(MetadataError, match=f"is a {other[2]} layer"):
            write_layers(str(tmp_path / "x"), [image, other])
    assert list(tmp_path.iterdir()) == []


def test_layers_that_cannot_be_stored_are_refused_before_anything_is_written(tmp_path):
    for data, problem in [(np.zeros((4, 8, 8), np.complex64), "complex64"),
                          (np.zeros((0, 8, 8), np.uint16), "empty")]:
        with pytest.raises(MetadataError, match=problem):
            write_layers(str(tmp_path / "x"), [(data, {"name": "bad"}, "image")])
    with pytest.raises(MetadataError, match="one image"):
        write_layers(str(tmp_path / "x"), [(cells(), {"name": "a"}, "image"),
                                           (cells(), {"name": "b"}, "image")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("meta", "color", "window"), [
    pytest.param({"contrast_limits": (10, 900)}, "FFFFFF", (10, 900), id="contrast-limits"),
    pytest.param({"contrast_limits": (10, 900), "colormap": "magenta"}, "FF00FF", (10, 900),
                 id="colormap-by-name"),
    pytest.param({"contrast_limits": (0.5, 2.5), "colormap": "green"}, "00FF00", (0.5, 2.5),
                 id="float"),
])
def test_npe2_write_from_a_script_makes_complete_omero_channels(viewer_model, tmp_path, meta,
                                                                 color, window):
    """A script hands the writer layer tuples of its own: a colormap by name, or none."""
    import npe2

    data = cells() if meta["contrast_limits"][0] >= 1 else cells().astype(np.float32) / 1000
    (path,) = npe2.write(str(tmp_path / "scripted.zarr"), [(data, {"name": "c", **meta},
                                                            "image"),
                                                           (nuclei(), {"name": "n"}, "labels")],
                         plugin_name="napari-zshard")

    peer = assert_peers_accept(path, channels=1, labels=1)
    (channel,) = zarr.open_group(path, mode="r").attrs["ome"]["omero"]["channels"]
    assert channel["color"] == color and channel["label"] == "c" and channel["active"]
    assert (channel["window"]["start"], channel["window"]["end"]) == window
    assert peer.images[0][1]["contrast_limits"] == list(window)


@pytest.mark.parametrize("how", ["viewer.layers.save", "npe2.write"])
def test_a_script_saving_over_a_store_is_refused_and_told_how_to_overwrite(viewer_model,
                                                                           tmp_path, how):
    import npe2

    viewer_model.add_image(cells(), name="cells", contrast_limits=(0, 4000))
    (path,) = viewer_model.layers.save(str(tmp_path / "cells"), plugin="napari-zshard")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    viewer_model.layers[0].data = cells(seed=1)

    with pytest.raises(StoreError, match="already exists") as refused:
        if how == "npe2.write":
            npe2.write(path, [viewer_model.layers[0]], plugin_name="napari-zshard")
        else:
            viewer_model.layers.save(path, plugin="napari-zshard")

    for way in ("Save Layers in the napari window asks", "overwrite", "zshard convert",
                "WriteOptions(overwrite=True)"):
        assert way in str(refused.value)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(zarr.open_array(f"{path}/0", mode="r")[...], cells())


def test_labels_named_after_their_image_keep_their_name_through_a_save(viewer_model, tmp_path):
    from napari_zshard.sample import make_sample

    sample = make_sample(tmp_path / "cells.zarr", shape=(16, 64, 64))
    viewer_model.open(str(sample), plugin="napari-zshard")
    assert [layer.name for layer in viewer_model.layers] == ["cells", "cells (labels)"]

    (path,) = viewer_model.layers.save(str(tmp_path / "again"), plugin="napari-zshard")

    assert zarr.open_group(f"{path}/labels", mode="r").attrs["ome"]["labels"] == ["cells"]
    assert_peers_accept(path, channels=1, labels=1)
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    assert [layer.name for layer in opened.layers] == ["cells", "cells (labels)"]


def test_a_hidden_layer_is_saved_as_an_inactive_channel(viewer_model, tmp_path):
    viewer_model.add_image(cells(), name="hidden", contrast_limits=(0, 4000), visible=False)

    (path,) = viewer_model.layers.save(str(tmp_path / "hidden"), plugin="napari-zshard")

    (channel,) = zarr.open_group(path, mode="r").attrs["ome"]["omero"]["channels"]
    assert channel["active"] is False
    peer = assert_peers_accept(path, channels=1)
    assert peer.images[0][1]["visible"] is False  # napari-ome-zarr shows it hidden too
    opened = new_viewer()
    opened.open(path, plugin="napari-zshard")
    assert opened.layers[0].visible is False
