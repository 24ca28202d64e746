"""Annotate in a real napari window (under Xvfb): pick a region (the view, a drawn rectangle, typed
numbers), check it out, paint, fill, undo, export; the store then shows the change on screen at
full resolution and zoomed out, and a colleague's conflicting export is listed, a click away."""

from __future__ import annotations

import numpy as np
import pytest

from napari_zshard.sample import make_sample

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.timeout(300)]

SHAPE = (32, 256, 256)


@pytest.fixture
def sample(tmp_path):
    return make_sample(tmp_path / "cells.zarr", shape=SHAPE, levels=3)


@pytest.fixture
def viewer(make_napari_viewer, sample, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_ZSHARD_CONFIG", str(tmp_path / "config" / "storage.toml"))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(sample), plugin="napari-zshard")
    viewer.layers.selection.active = viewer.layers[0]  # the image
    return viewer


@pytest.fixture
def widget(viewer):
    from napari_zshard._annotate_widget import AnnotateWidget

    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    return widget


def image_layer(viewer):
    return viewer.layers[0]


def labels_layer(viewer):
    return viewer.layers[1]


# -- where the entries are -------------------------------------------------------------------
def _menu(parent, text):
    return next(a.menu() for a in parent.actions() if a.text().replace("&", "") == text)


def test_plugins_file_and_layers_menus_offer_annotate(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    viewer.open(str(sample), plugin="napari-zshard")
    bar = viewer.window.main_menu
    io = _menu(_menu(bar, "File"), "IO Utilities")
    assert [a.text() for a in io.actions() if a.text().startswith("Annotate a region")]
    annotate = _menu(_menu(bar, "Layers"), "Annotate")
    (action,) = [a for a in annotate.actions() if a.text().startswith("Annotate a region")]
    plugins = _menu(bar, "Plugins")
    zshard = _menu(plugins, "napari-zshard")
    assert "Annotate (napari-zshard)" in [a.text() for a in zshard.actions()]
    action.trigger()
    widget = viewer.window.dock_widgets["Annotate"]
    assert widget.image.value is viewer.layers[0]  # the store's image, chosen
    assert widget.label_image.choices[-1] == "(new label image)"


# -- choosing the region ---------------------------------------------------------------------
def test_the_field_of_view_at_the_current_plane_is_the_region(viewer, widget):
    from napari_zshard._annotate_view import view_region

    viewer.dims.set_point(0, 20)
    viewer.scene.camera.center = (100, 60)
    height, width = viewer.canvas.size
    viewer.scene.camera.zoom = 4.0
    widget.depth.value = 8
    region = widget.chosen_region()
    h, w = height / 4, width / 4
    expected_y = slice(max(0, int(np.floor(100 - h / 2))), min(256, int(np.ceil(100 + h / 2))))
    expected_x = slice(max(0, int(np.floor(60 - w / 2))), min(256, int(np.ceil(60 + w / 2))))
    assert region == (slice(16, 24), expected_y, expected_x)
    assert widget.region.value == f"16:24, {expected_y.start}:{expected_y.stop}, " \
                                  f"{expected_x.start}:{expected_x.stop}"
    viewer.dims.set_point(0, 30)  # near the end: the planes shift, they are not cut
    assert view_region(viewer, image_layer(viewer), depth=8)[0] == slice(24, 32)


def test_a_rectangle_drawn_in_a_shapes_layer_is_the_region(viewer, widget):
    viewer.dims.set_point(0, 10)
    shapes = viewer.add_shapes([[[40.3, 50.5], [40.3, 120.2], [99.6, 120.2], [99.6, 50.5]]],
                               shape_type="rectangle", ndim=2)
    widget.source.value = "rectangle in a Shapes layer"
    widget.shapes.value = shapes
    widget.depth.value = 4
    assert widget.chosen_region() == (slice(8, 12), slice(40, 100), slice(50, 121))
    # a rectangle drawn in 3D coordinates sits on its own plane; scaled images map through world
    shapes3 = viewer.add_shapes([[[5, 10, 10], [5, 10, 30], [5, 20, 30], [5, 20, 10]]],
                                shape_type="rectangle", scale=(1, 2, 2))
    widget.shapes.value = shapes3
    widget.depth.value = 1
    assert widget.chosen_region() == (slice(5, 6), slice(20, 40), slice(20, 60))


def test_typed_numbers_are_the_region_and_mistakes_are_explained(widget):
    widget.source.value = "numbers"
    widget.region.value = "4:12, 0:128, 64:"
    assert widget.chosen_region() == (slice(4, 12), slice(0, 128), slice(64, 256))
    for text, says in [("4:12, 0:128", "give 3 ranges"), ("4:12, 0:300, 0:8", "outside the"),
                       ("4:4, 0:8, 0:8", "is empty"), ("a:b, 0:8, 0:8", "not start:stop")]:
        widget.region.value = text
        with pytest.raises(ValueError, match=says):
            widget.chosen_region()
    widget.edit_button.native.click()  # the same through the button: the status says why
    assert "not start:stop" in widget.status.value and widget.edit is None


def test_a_region_too_large_for_one_edit_is_refused_with_its_size(widget, monkeypatch):
    import napari_zshard._annotate_widget as aw

    monkeypatch.setattr(aw, "MAX_EDIT_VOXELS", 64 * 64 * 4)
    widget.source.value = "numbers"
    widget.region.value = "0:8, 0:64, 0:64"
    widget.edit_button.native.click()
    assert "8 x 64 x 64" in widget.status.value and "fewer planes" in widget.status.value
    assert widget.edit is None


def test_the_annotator_defaults_to_the_os_user_and_is_remembered(viewer, monkeypatch):
    import getpass

    from napari_zshard._annotate_widget import (
        AnnotateWidget,
        remember_annotator,
        remembered_annotator,
    )

    assert remembered_annotator() == getpass.getuser()
    remember_annotator("Alice Example")
    assert AnnotateWidget(viewer).annotator.value == "Alice Example"


# -- placing and masking ---------------------------------------------------------------------
def test_the_stored_labels_are_blank_inside_the_region_at_every_level(viewer):
    from napari_zshard._annotate_view import masked_levels

    layer = labels_layer(viewer)
    levels = list(layer.data)
    region = (slice(4, 12), slice(10, 75), slice(33, 90))
    masked = masked_levels(levels, region)
    full = np.asarray(levels[0])
    got = np.asarray(masked[0])
    assert not got[region].any()
    outside = np.ones(full.shape, bool)
    outside[region] = False
    np.testing.assert_array_equal(got[outside], full[outside])
    # level 2 (4x coarser): every coarse voxel touching the region is blank, no other
    coarse = np.asarray(masked[2])
    box = (slice(1, 3), slice(2, 19), slice(8, 23))
    assert not coarse[box].any()
    rest = np.ones(coarse.shape, bool)
    rest[box] = False
    np.testing.assert_array_equal(coarse[rest], np.asarray(levels[2])[rest])
