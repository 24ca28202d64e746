"""Reshard a store… in a real viewer: the form is prefilled with the suggested layout, Preview
shows the plan, Run reshards in the background and opens the result, Cancel leaves a
destination that is not marked complete and that the next run resumes."""

from __future__ import annotations

import numpy as np
import pytest

import napari_zshard as nz
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.reshard import JOURNAL, plan_reshard

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


def volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 500, shape) + np.arange(shape[-1])).astype(np.uint16)


@pytest.fixture
def source(tmp_path):
    data = volume((48, 128, 128))
    save_image(tmp_path / "src.zarr", data, ImageSpec(name="vol"),
               options=WriteOptions(chunks=(16, 32, 32), shards=(16, 64, 64), levels=2))
    return tmp_path / "src.zarr", data


@pytest.fixture
def widget(make_napari_viewer, source, qtbot):
    from napari_zshard.plugin.reshard_widget import ReshardWidget

    widget = ReshardWidget(make_napari_viewer(), source=str(source[0]))
    # the suggested layout arrives from a worker thread
    qtbot.waitUntil(lambda: widget.chunks.value != "auto", timeout=10000)
    return widget


def test_the_form_is_prefilled_and_preview_shows_the_plan(widget, source, qtbot):
    assert widget.destination.value == str(source[0].parent / "src-resharded.zarr")
    assert (widget.chunks.value, widget.shards.value) == ("48,64,64", "48,128,128")
    widget.chunks.value, widget.shards.value = "8,32,32", "16,128,128"
    widget.preview_button.native.click()
    qtbot.waitUntil(lambda: widget.plan is not None, timeout=20000)
    assert "8x32x32 in 16x128x128" in widget.table.value
    assert "16x32x32 in 16x64x64" in widget.table.value  # the source, side by side
    assert "plane z=24: requests" in widget.table.value
    assert not (source[0].parent / "src-resharded.zarr").exists()  # a preview writes nothing


def test_run_reshards_in_the_background_and_opens_the_result(widget, source, qtbot):
    widget.chunks.value, widget.shards.value = "8,32,32", "16,128,128"
    widget.run_button.native.click()
    assert widget.worker is not None  # running off the Qt thread
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    dst = source[0].parent / "src-resharded.zarr"
    assert widget.summary is not None and widget.summary.complete, widget.status.value
    node = nz.open_image(dst)
    np.testing.assert_array_equal(node.arrays[0][:], source[1])
    assert node.arrays[0].chunks == (8, 32, 32)
    layer = widget.viewer.layers[-1]  # opened by napari-zshard
    assert layer.source.reader_plugin == "napari-zshard" and layer.data[0].shape == (48, 128,
                                                                                     128)


def test_a_level_can_get_its_own_layout_and_a_wrong_one_is_explained(widget, source, qtbot):
    widget.chunks.value, widget.shards.value = "8,32,32", "16,128,128"
    widget.levels.value = "32,64"  # no shard shape: nothing starts, the form says why
    widget.run_button.native.click()
    assert widget.worker is None
    assert "level 0: give CHUNKS/SHARDS" in widget.status.value
    widget.levels.value = "- 8,16,16/24,64,64"  # level 0 as above, level 1 its own
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.summary is not None and widget.summary.complete, widget.status.value
    node = nz.open_image(source[0].parent / "src-resharded.zarr")
    assert [(a.chunks, a.shards) for a in node.arrays] == [((8, 32, 32), (16, 128, 128)),
                                                           ((8, 16, 16), (24, 64, 64))]
    np.testing.assert_array_equal(node.arrays[1][:], nz.open_image(source[0]).arrays[1][:])


def test_cancel_leaves_a_resumable_destination_not_marked_complete(make_napari_viewer,
                                                                   tmp_path, qtbot):
    from napari_zshard.plugin.reshard_widget import ReshardWidget

    data = volume((32, 256, 256), seed=1)
    save_image(tmp_path / "big.zarr", data, ImageSpec(name="big"),
               options=WriteOptions(chunks=(16, 64, 64), shards=(16, 256, 256), levels=1))
    widget = ReshardWidget(make_napari_viewer())
    widget.source.value, widget.destination.value = str(tmp_path / "big.zarr"), str(
        tmp_path / "out.zarr")
    widget.chunks.value = widget.shards.value = "8,32,32"  # 256 small shards
    widget.run_button.native.click()
    journal = tmp_path / "out.zarr" / JOURNAL / "done"
    qtbot.waitUntil(lambda: journal.exists() and any(journal.rglob("*@*")), timeout=30000)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.status.value.startswith("cancelled")
    assert not (tmp_path / "out.zarr" / "zarr.json").exists()  # not marked complete
    plan = plan_reshard(tmp_path / "big.zarr", tmp_path / "out.zarr", chunks=(8, 32, 32),
                        shards=(8, 32, 32), measure=False)
    assert plan.state.kind == "resume" and 0 < plan.state.journaled < plan.n_shards
    summary = list(plan.run())[-1].summary
    assert summary.resumed >= plan.state.journaled - 2 and summary.complete
    np.testing.assert_array_equal(nz.open_image(tmp_path / "out.zarr").arrays[0][:], data)


def test_file_io_utilities_offers_the_widget(make_napari_viewer, source):
    viewer = make_napari_viewer()
    viewer.open(str(source[0]), plugin="napari-zshard")
    file_menu = next(a.menu() for a in viewer.window.main_menu.actions() if a.text() == "&File")
    io = next(a.menu() for a in file_menu.actions() if a.text() == "IO Utilities")
    (action,) = [a for a in io.actions() if a.text().startswith("Reshard a store…")]
    action.trigger()
    widget = viewer.window.dock_widgets["Reshard a store"]
    assert widget.source.value == str(source[0])  # the selected layer's store, prefilled
    assert widget.destination.value.endswith("src-resharded.zarr")


def test_the_source_follows_the_selected_layer_until_the_user_types_one(make_napari_viewer,
                                                                         source, tmp_path,
                                                                         qtbot):
    from napari_zshard.plugin.reshard_widget import ReshardWidget
    from napari_zshard.sample import make_sample

    cells = make_sample(tmp_path / "cells.zarr", shape=(16, 64, 64))
    viewer = make_napari_viewer()
    viewer.open(str(source[0]), plugin="napari-zshard")
    viewer.open(str(cells), plugin="napari-zshard")  # selected: its labels, on top
    assert viewer.layers.selection.active.name == "cells (labels)"

    widget = ReshardWidget(viewer)  # as the Plugins menu docks it: no source given

    assert widget.source.value == str(cells)  # the store that holds the labels
    assert widget.destination.value == str(tmp_path / "cells-resharded.zarr")
    qtbot.waitUntil(lambda: widget.chunks.value != "auto", timeout=10000)
    viewer.layers.selection.active = viewer.layers["vol"]
    assert widget.source.value == str(source[0])
    assert widget.destination.value == str(tmp_path / "src-resharded.zarr")
    qtbot.waitUntil(lambda: widget.shards.value == "48,128,128", timeout=10000)

    widget.source.value = "s3://bucket/typed.zarr"  # the user's own choice stays
    viewer.layers.selection.active = viewer.layers["cells"]
    assert widget.source.value == "s3://bucket/typed.zarr"


def test_a_layer_added_from_reader_data_still_names_its_store(make_napari_viewer, source):
    from napari_zshard.plugin.reader import read_zarr
    from napari_zshard.plugin.reshard_widget import ReshardWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = read_zarr(str(source[0]))[0]
    viewer.add_image(data, **kwargs)  # a notebook's way: napari records no source path
    assert viewer.layers[0].source.path is None

    assert ReshardWidget(viewer).source.value == str(source[0])


def test_browse_buttons_pick_local_stores(widget, tmp_path, monkeypatch, qtbot):
    from qtpy.QtWidgets import QFileDialog

    other = tmp_path / "other.zarr"
    save_image(other, volume((16, 64, 64)), options=WriteOptions(levels=1))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda parent, caption, start: str(other)))
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(
        lambda parent, caption, start, filter: (str(tmp_path / "picked.zarr"), filter)))
    widget.chunks.value = widget.shards.value = "auto"

    widget.source.browse.native.click()
    widget.destination.browse.native.click()

    assert widget.source.value == str(other)
    assert widget.destination.value == str(tmp_path / "picked.zarr")
    qtbot.waitUntil(lambda: widget.chunks.value != "auto", timeout=10000)  # suggested anew
    assert widget.chunks.value == "16,64,64"
