"""A coarsest level too big for napari's 3D view (issue 3): the reader appends one small virtual
level, a strided preview of the coarsest stored level or, when even that would take minutes to
read, a blank one, and tells the user how to build a pyramid. The limits are patched down so a
1 MiB volume counts as "too big"."""

import re
import shlex

import dask
import numpy as np
import pytest
from screen_checks import left_right_volume, screen_halves, shows_plane

import napari_zshard.plugin.layer_data as layer_data_module
from napari_zshard import cli
from napari_zshard.multiscale import open_nodes
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.plugin.layer_data import layer_data

napari = pytest.importorskip("napari")

STEP = 4  # (64, 128, 128) uint8 is 1 MiB: one voxel in 4 is (16, 32, 32), 16 KiB <= 64 KiB


@pytest.fixture
def small_3d_limit(monkeypatch):
    monkeypatch.setattr(layer_data_module, "MAX_3D_BYTES", 64 * 1024)


@pytest.fixture
def no_preview(small_3d_limit, monkeypatch):
    """Even a strided preview of 1 MiB counts as too long to read: the virtual level is blank."""
    monkeypatch.setattr(layer_data_module, "MAX_PREVIEW_BYTES", 512 * 1024)


def write_one_level(path, vol, labels=None, **spec):
    label_images = {"cells": ([labels], ImageSpec(name="cells", kind="labels"))} \
        if labels is not None else None
    save_image(str(path), [vol], ImageSpec(name="vol", contrast_limits=(0, 255), **spec),
               labels=label_images,
               options=WriteOptions(levels=1, chunks=(1,) * (vol.ndim - 3) + (16, 32, 32),
                                    shards=(1,) * (vol.ndim - 3) + (32, 64, 64)))
    return path


@pytest.fixture
def one_level_store(tmp_path):
    """An OME-Zarr image with a single level, and a label image with a single level."""
    vol = left_right_volume()  # (64, 128, 128) uint8
    labels = np.random.default_rng(3).integers(0, 1000, vol.shape, dtype=np.uint32)
    return write_one_level(tmp_path / "flat.zarr", vol, labels), vol, labels


@pytest.fixture
def notifications():
    """Every napari notification emitted during the test, as text."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def requests(arr) -> int:
    return arr.store.stats.snapshot()["requests"] + sum(arr.counters.values())


def test_strided_preview_level_is_appended_below_a_level_too_big_for_3d(one_level_store,
                                                                        small_3d_limit):
    path, vol, labels = one_level_store
    (image, image_meta, _), (seg, seg_meta, kind) = layer_data(open_nodes(str(path)))
    assert kind == "labels"
    for data, meta, stored in ((image, image_meta, vol), (seg, seg_meta, labels)):
        assert meta["multiscale"] and len(data) == 2
        assert [d.shape for d in data] == [(64, 128, 128), (16, 32, 32)]
        info = meta["metadata"]["napari_zshard"]
        assert info["levels"] == [[64, 128, 128]]  # the stored levels only
        (virtual,) = info["virtual_levels"]
        assert virtual["level"] == 1 and virtual["kind"] == "strided"
        assert virtual["strides"] == [STEP] * 3 and "64.0 KiB" in virtual["reason"]
        with dask.config.set({"optimization.fuse.active": False}):  # as napari computes
            preview = np.asarray(data[1])
        # a real, aliased picture: for labels, the stored label values (never an average)
        np.testing.assert_array_equal(preview, stored[::STEP, ::STEP, ::STEP])
        np.testing.assert_array_equal(np.asarray(data[0][7]), stored[7])


def test_blank_level_when_even_a_preview_is_too_long_to_read(one_level_store, no_preview):
    path, vol, _ = one_level_store
    nodes = open_nodes(str(path))
    (image, meta, _), (seg, _, _) = layer_data(nodes)
    stored = [nodes[0].arrays[0], nodes[0].labels[0].arrays[0]]
    for arr in stored:
        arr.reset_counters()
    assert meta["metadata"]["napari_zshard"]["virtual_levels"][0]["kind"] == "blank"
    for data, arr in zip((image, seg), stored, strict=True):
        assert [d.shape for d in data] == [(64, 128, 128), (16, 32, 32)]
        blank = np.asarray(data[1])
        assert blank.dtype == arr.dtype and (blank == arr.fill_value).all()
    assert [requests(arr) for arr in stored] == [0, 0]  # no I/O at all
    # the counters do count: a plane of level 0 costs requests
    np.testing.assert_array_equal(np.asarray(image[0][5]), vol[5])
    assert requests(stored[0]) > 0


def test_small_enough_coarsest_level_gets_no_virtual_level(one_level_store, notifications):
    path, vol, _ = one_level_store
    from napari_zshard.plugin.reader import read_zarr

    for data, meta, _ in read_zarr(str(path)):
        assert not meta["multiscale"] and data.shape == vol.shape
        assert "virtual_levels" not in meta["metadata"]["napari_zshard"]
    assert notifications == []


@pytest.mark.parametrize("first_axis", ["t", "c"])
def test_only_spatial_axes_are_subsampled(tmp_path, small_3d_limit, npe2pm, first_axis):
    from napari.components import ViewerModel

    from napari_zshard.ome import Axis

    vol = np.stack([left_right_volume(), 255 - left_right_volume()])  # t or c, z, y, x
    axes = [Axis(first_axis, {"t": "time", "c": "channel"}[first_axis])] + [
        Axis(n, "space") for n in "zyx"]
    path = write_one_level(tmp_path / "4d.zarr", vol, axes=axes)
    with npe2pm.tmp_plugin(package="napari-zshard"):
        viewer = ViewerModel()
        viewer.open(str(path), plugin="napari-zshard")
    if first_axis == "t":  # one layer, every time point subsampled alike
        (layer,) = viewer.layers
        assert layer.level_shapes.tolist() == [[2, 64, 128, 128], [2, 16, 32, 32]]
        np.testing.assert_array_equal(np.asarray(layer.data[1]), vol[:, ::STEP, ::STEP, ::STEP])
        return
    assert len(viewer.layers) == 2  # one layer per channel, each with its virtual level
    for c, layer in enumerate(viewer.layers):
        assert layer.level_shapes.tolist() == [[64, 128, 128], [16, 32, 32]]
        np.testing.assert_array_equal(np.asarray(layer.data[1]), vol[c, ::STEP, ::STEP, ::STEP])


def test_warning_names_the_layer_and_a_command_that_builds_the_pyramid(tmp_path, small_3d_limit,
                                                                       notifications):
    from napari_zshard.plugin.reader import read_zarr

    # x is longer than a 3D-viewable edge (256): the preview halves every axis twice
    vol = np.random.default_rng(0).integers(0, 255, (16, 32, 600), dtype=np.uint8)
    path = write_one_level(tmp_path / "long.zarr", vol)
    ((data, meta, _),) = read_zarr(str(path))
    assert [d.shape for d in data] == [(16, 32, 600), (4, 8, 150)]
    (text,) = notifications
    assert text.startswith("vol: the coarsest stored level (16, 32, 600) is 300.0 KiB")
    assert "3D view shows a strided preview (one voxel in 4 along z, y, x" in text
    assert "File ▸ IO Utilities ▸ Save as sharded zarr" in text
    # the command it quotes works, and its result needs no virtual level
    command = re.search(r"zshard convert .* DST\.zarr --rebuild-pyramid", text).group(0)
    argv = [str(tmp_path / "pyramid.zarr") if a == "DST.zarr" else a
            for a in shlex.split(command)[1:]]
    assert cli.main(argv) == 0
    ((data, meta, _),) = read_zarr(str(tmp_path / "pyramid.zarr"))
    assert [d.shape for d in data] == [(16, 32, 600), (8, 16, 300), (4, 8, 150)]
    assert "virtual_levels" not in meta["metadata"]["napari_zshard"]
    assert len(notifications) == 1


def test_saving_a_layer_with_a_virtual_level_builds_a_real_pyramid(one_level_store, no_preview,
                                                                  tmp_path, npe2pm):
    from napari.components import ViewerModel

    from napari_zshard.plugin.writer import write_layers

    path, vol, _ = one_level_store
    with npe2pm.tmp_plugin(package="napari-zshard"):
        viewer = ViewerModel()
        viewer.open(str(path), plugin="napari-zshard")
    image = viewer.layers["vol"]
    assert len(image.data) == 2  # level 0 and the blank virtual level
    (saved,) = write_layers(str(tmp_path / "saved.zarr"), [image.as_layer_data_tuple()])
    (node,) = open_nodes(saved)
    # the blank level is not saved: the pyramid is rebuilt from level 0
    assert [a.shape for a in node.arrays] == [(64, 128, 128)]
    np.testing.assert_array_equal(np.asarray(node.arrays[0]), vol)


# -- on screen (Xvfb) -------------------------------------------------------------------------
def open_in_viewer(make_napari_viewer, path, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-zshard")
    layer = viewer.layers["vol"]
    viewer.dims.set_current_step(0, 32)
    return viewer, layer


@pytest.mark.gui
def test_3d_view_shows_the_strided_preview_and_2d_keeps_level_0(make_napari_viewer, tmp_path,
                                                                small_3d_limit, notifications,
                                                                qtbot):
    vol = left_right_volume()
    path = write_one_level(tmp_path / "flat.zarr", vol)
    viewer, layer = open_in_viewer(make_napari_viewer, path, qtbot)
    assert any(t.startswith("vol: the coarsest stored level (64, 128, 128)") for t in notifications)
    # 2D: the stored level, the right plane
    qtbot.waitUntil(lambda: shows_plane(viewer, vol, 32), timeout=5000)
    assert layer.data_level == 0
    # 3D: the virtual level, rendered (a maximum projection along z of the preview)
    viewer.dims.ndisplay = 3
    left, right = vol[::STEP, 0, 0].max(), vol[::STEP, 0, -1].max()

    def shows_preview():
        halves = screen_halves(viewer)
        return halves is not None and all(abs(h - want) <= 3
                                          for h, want in zip(halves, (left, right), strict=True))

    qtbot.waitUntil(shows_preview, timeout=5000)
    assert layer.data_level == 1
    # back to 2D: level 0 again
    viewer.dims.ndisplay = 2
    qtbot.waitUntil(lambda: layer.data_level == 0 and shows_plane(viewer, vol, 32), timeout=5000)


@pytest.mark.gui
def test_3d_view_of_a_volume_too_big_to_preview_is_blank(make_napari_viewer, tmp_path,
                                                         no_preview, notifications, qtbot):
    vol = left_right_volume()
    path = write_one_level(tmp_path / "flat.zarr", vol)
    viewer, layer = open_in_viewer(make_napari_viewer, path, qtbot)
    assert any("3D view stays blank" in t for t in notifications)
    qtbot.waitUntil(lambda: shows_plane(viewer, vol, 32), timeout=5000)
    viewer.dims.ndisplay = 3
    qtbot.waitUntil(lambda: layer.data_level == 1, timeout=5000)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3]
    assert shot.max() == 0  # the fill value (0) at contrast limits (0, 255): black
