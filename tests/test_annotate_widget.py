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
    from napari_zshard.plugin.annotate.widget import AnnotateWidget

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
    from napari_zshard.plugin.annotate.view import view_region

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
    shapes3.add_rectangles([[[5, 150, 150], [5, 150, 200], [5, 200, 200], [5, 200, 150]]])
    shapes3.selected_data = {1}  # the selected one counts: beyond the image (x2 scale)
    with pytest.raises(ValueError, match="outside the image"):
        widget.chosen_region()


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
    import napari_zshard.plugin.annotate.widget as aw

    monkeypatch.setattr(aw, "MAX_EDIT_VOXELS", 64 * 64 * 4)
    widget.source.value = "numbers"
    widget.region.value = "0:8, 0:64, 0:64"
    widget.edit_button.native.click()
    assert "8 x 64 x 64" in widget.status.value and "fewer planes" in widget.status.value
    assert widget.edit is None


def test_the_annotator_defaults_to_the_os_user_and_is_remembered(viewer, monkeypatch):
    import getpass

    from napari_zshard.plugin.annotate.widget import (
        AnnotateWidget,
        remember_annotator,
        remembered_annotator,
    )

    assert remembered_annotator() == getpass.getuser()
    remember_annotator("Alice Example")
    assert AnnotateWidget(viewer).annotator.value == "Alice Example"


# -- placing and masking ---------------------------------------------------------------------
def test_the_stored_labels_are_blank_inside_the_region_at_every_level(viewer):
    from napari_zshard.plugin.annotate.view import masked_levels

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


# -- the whole story: check out, paint, fill, undo, export, see it ----------------------------
REGION = "8:24, 64:192, 64:192"
BLOB = (136, 104)  # level-0 (y, x) of the painted blob, inside the region


def check_out(widget, qtbot, region=REGION):
    widget.source.value = "numbers"
    widget.region.value = region
    with qtbot.waitSignal(widget.signals.checked_out, timeout=30000):
        widget.edit_button.native.click()
    return widget.layer


def export(widget, qtbot):
    with qtbot.waitSignal(widget.signals.exported, timeout=60000) as blocker:
        widget.export_button.native.click()
    return blocker.args[0]


def stored_labels(path):
    import napari_zshard as nz

    (labels,) = nz.open_image(path).labels
    return [np.asarray(a[...]) for a in labels.arrays]


def centre_colour(viewer):
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    return shot[h // 2 - 1:h // 2 + 2, w // 2 - 1:w // 2 + 2, :3].reshape(-1, 3).mean(axis=0)


def test_paint_fill_undo_export_then_a_new_viewer_shows_it_at_every_zoom(
        viewer, widget, qtbot, sample, make_napari_viewer):
    from qtpy.QtCore import Qt

    before = stored_labels(sample)
    layer = check_out(widget, qtbot)
    edit = widget.edit
    # exactly over the region: the edit's own transform, the store's colours
    assert layer.data is edit.data and layer.data.shape == (16, 128, 128)
    np.testing.assert_array_equal(layer.translate, (8, 64, 64))
    np.testing.assert_array_equal(layer.scale, (1, 1, 1))
    np.testing.assert_array_equal(np.asarray(layer.data[8]), before[0][16, 64:192, 64:192])
    # the stored labels stay visible around the region, blank inside it
    stored = labels_layer(viewer)
    assert not np.asarray(stored.data[0][8:24, 64:192, 64:192]).any()
    np.testing.assert_array_equal(np.asarray(stored.data[0][:8]), before[0][:8])

    # M (the widget's binding, not napari's): the next id of the annotator's reserved block
    viewer.layers.selection.active = layer
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_M)
    new = layer.selected_label
    assert new > before[0].max()
    widget.new_label_button.native.click()
    assert layer.selected_label == new + 1

    # paint a blob through planes 16..19 (a whole coarse block at levels 1 and 2)
    layer.brush_size = 30
    viewer.dims.set_point(0, 16)
    for z in range(8, 12):
        layer.paint((z, BLOB[0] - 64, BLOB[1] - 64), new)
    # fill a stored cell on plane 16 with the second new id
    plane = before[0][16, 64:192, 64:192]
    cell = next(v for v in np.unique(plane[:, 70:]) if v and (plane == v).sum() > 20)
    yy, xx = np.argwhere(plane == cell)[0]
    layer.fill((8, yy, xx), new + 1)
    # a stroke undone: not exported
    layer.paint((8, 20, 20), new, refresh=True)
    assert np.asarray(layer.data[8, 20, 20]) == new
    layer.undo()
    np.testing.assert_array_equal(np.asarray(layer.data[8, 4:37, 4:37]), plane[4:37, 4:37])
    painted = np.asarray(layer.data[8])
    assert (painted[plane == cell] == new + 1).all() and painted[BLOB[0] - 64, BLOB[1] - 64] == new
    expected = before[0].copy()
    expected[8:24, 64:192, 64:192] = np.asarray(layer.data)

    report = export(widget, qtbot)
    assert report.voxels_written == int((expected != before[0]).sum()) > 0
    assert report.shards_written > 0 and report.bytes_written > 0 and not report.conflicts
    assert f"{report.voxels_written} voxels" in widget.summary.value
    after = stored_labels(sample)
    np.testing.assert_array_equal(after[0], expected)
    assert (after[2] == new).any()  # the pyramid follows
    # closing the edit unmasks the stored labels, which show what was exported
    widget.close_button.native.click()
    assert layer not in viewer.layers and widget.edit is None
    np.testing.assert_array_equal(np.asarray(stored.data[0][8:24, 64:192, 64:192]),
                                  expected[8:24, 64:192, 64:192])

    # another viewer opens the store: the blob's colour is on screen, zoomed in and out
    other = make_napari_viewer(show=True)
    other.open(str(sample), plugin="napari-zshard")
    image, labels = other.layers
    image.visible = False
    labels.opacity, labels.blending = 1.0, "opaque"
    colour = np.round(np.asarray(labels.get_color(new))[:3] * 255)
    other.dims.set_point(0, 17)
    other.scene.camera.center = BLOB
    other.scene.camera.zoom = 4
    qtbot.waitUntil(lambda: labels.data_level == 0, timeout=5000)
    qtbot.waitUntil(lambda: np.abs(centre_colour(other) - colour).max() <= 3, timeout=10000)
    other.scene.camera.zoom = 0.25
    qtbot.waitUntil(lambda: labels.data_level > 0, timeout=5000)
    qtbot.waitUntil(lambda: np.abs(centre_colour(other) - colour).max() <= 3, timeout=10000)


def test_a_colleagues_earlier_export_is_a_conflict_a_click_away_then_resolved(
        viewer, widget, qtbot, sample):
    from qtpy.QtCore import Qt

    from napari_zshard import annotations as ann

    layer = check_out(widget, qtbot)
    patch_a = (16, slice(150, 160), slice(170, 180))
    patch_b = (20, slice(70, 76), slice(80, 90))
    # bob checks out the same voxels elsewhere and exports first
    bob = ann.checkout(str(sample), labels="cells", region=(slice(16, 21), slice(0, 256),
                                                             slice(0, 256)), annotator="bob")
    theirs_a, theirs_b = bob.new_label_id(), bob.new_label_id()
    bob.data[(0, *patch_a[1:])] = theirs_a  # bob's region starts at z=16, y=x=0
    bob.data[(4, *patch_b[1:])] = theirs_b
    assert not bob.commit(message="bob's fix").conflicts
    # we paint the same voxels (from the console) and something of our own
    mine = widget.new_label()
    local = lambda z, ys, xs: (z - 8, slice(ys.start - 64, ys.stop - 64),  # noqa: E731
                               slice(xs.start - 64, xs.stop - 64))
    layer.data[local(*patch_a)] = mine
    layer.data[local(*patch_b)] = mine
    layer.data[local(12, slice(100, 104), slice(100, 104))] = mine

    report = export(widget, qtbot)
    assert sorted((c.voxels, c.theirs, c.ours) for c in report.conflicts) == [
        (60, theirs_b, mine), (100, theirs_a, mine)]
    assert report.voxels_written == 16  # ours elsewhere went in; theirs were not overwritten
    stored = stored_labels(sample)[0]
    assert (stored[patch_a] == theirs_a).all() and (stored[patch_b] == theirs_b).all()
    assert (stored[12, 100:104, 100:104] == mine).all()
    rows = widget.conflicts.rows.native
    assert rows.count() == 2 and all("bob" in rows.item(i).text() for i in range(2))

    # a click on a conflict moves the dims and the camera there
    viewer.dims.set_point(0, 0)
    viewer.scene.camera.center = (0, 0)
    row_a = next(i for i, c in enumerate(widget.conflicts.conflicts) if c.theirs == theirs_a)
    item = rows.item(row_a)
    qtbot.mouseClick(rows.viewport(), Qt.MouseButton.LeftButton,
                     pos=rows.visualItemRect(item).center())
    assert viewer.dims.point[0] == pytest.approx(16)
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (154.5, 174.5))
    assert widget.conflicts.rows.value == [row_a]

    # keep mine for the selected one, take theirs for the rest; the next export records it
    widget.conflicts.keep_mine.native.click()
    assert rows.count() == 1
    widget.conflicts.take_theirs.native.click()
    assert rows.count() == 0 and not widget.conflicts.keep_mine.enabled
    assert (np.asarray(layer.data[local(*patch_b)]) == theirs_b).all()
    report = export(widget, qtbot)
    assert not report.conflicts
    stored = stored_labels(sample)[0]
    assert (stored[patch_a] == mine).all() and (stored[patch_b] == theirs_b).all()


def test_painting_goes_on_during_an_export_and_the_next_export_takes_it(
        viewer, widget, qtbot, sample):
    layer = check_out(widget, qtbot)
    label = widget.new_label()
    layer.data[0, :8, :8] = label
    with qtbot.waitSignal(widget.signals.exported, timeout=60000):
        widget.export_button.native.click()
        assert widget.worker is not None and not widget.export_button.enabled
        layer.paint((2, 100, 100), label)  # on the Qt thread, the export in its worker
    assert np.asarray(layer.data[2, 100, 100]) == label
    export(widget, qtbot)
    stored = stored_labels(sample)[0]
    assert (stored[8, 64:72, 64:72] == label).all() and stored[10, 164, 164] == label


def test_cancel_stops_an_export_only_before_anything_is_written(viewer, widget, qtbot, sample):
    import threading

    from napari_zshard import annotations as ann
    from napari_zshard.plugin.annotate.export_panel import export_steps

    layer = check_out(widget, qtbot)
    assert not widget.cancel_button.enabled  # nothing to cancel yet
    layer.data[0, :8, :8] = widget.new_label()
    before = stored_labels(sample)[0]
    cancel = threading.Event()
    cancel.set()
    steps = export_steps(widget.edit, "never", cancel)
    first = next(steps)
    assert first.cancellable
    with pytest.raises(StopIteration) as stopped:
        next(steps)
    assert stopped.value.value is None  # cancelled
    np.testing.assert_array_equal(stored_labels(sample)[0], before)
    assert "never" not in [r.message for r in ann.log(str(sample))]
    report = export(widget, qtbot)  # still exportable afterwards, and the button is off again
    assert report.voxels_written == 64 and not widget.cancel_button.enabled


def test_3d_view_shows_the_region_only_within_the_memory_budget(viewer, widget, qtbot,
                                                                monkeypatch):
    import napari_zshard.plugin.annotate.widget as aw

    layer = check_out(widget, qtbot)
    viewer.dims.ndisplay = 3
    assert layer.visible  # 16 x 128 x 128 uint32 = 1 MiB
    viewer.dims.ndisplay = 2
    monkeypatch.setattr(aw, "MAX_EDIT_3D_BYTES", 512 * 1024)
    viewer.dims.ndisplay = 3
    assert not layer.visible and "too large to show in 3D" in widget.status.value
    viewer.dims.ndisplay = 2
    assert layer.visible


def test_a_new_label_image_is_created_exported_and_shown(viewer, widget, qtbot, sample):
    from napari_zshard import annotations as ann

    widget.label_image.value = "(new label image)"
    widget.new_name.value = "nuclei"
    layer = check_out(widget, qtbot)
    assert widget.stored_layer is None
    label = widget.new_label()
    layer.data[4, 10:20, 10:20] = label
    report = export(widget, qtbot)
    assert report.voxels_written == 100
    assert "nuclei" in ann.label_images(str(sample))
    import napari_zshard as nz

    (nuclei,) = [n for n in nz.open_image(sample).labels if n.name == "nuclei"]
    assert nuclei.arrays[0].shape == SHAPE and len(nuclei.arrays) == 3
    assert (np.asarray(nuclei.arrays[0][12, 74:84, 74:84]) == label).all()
    stored = widget.stored_layer  # opened from the store, blank under the edit
    assert stored is not None and stored.metadata["napari_zshard"]["url"].endswith(
        "labels/nuclei")
    assert not np.asarray(stored.data[0][8:24, 64:192, 64:192]).any()


def test_my_own_label_image_for_a_later_consensus(viewer, widget, qtbot, sample):
    """Independent annotation: the export goes to the annotator's own label image, and the
    exported region counts as reviewed in their coverage map."""
    from napari_zshard import annotations as ann

    widget.annotator.value = "Erin"
    widget.label_image.value = "(my own label image)"
    layer = check_out(widget, qtbot, region="0:32, 64:128, 64:128")  # one whole inner chunk
    layer.data[4, 10:20, 10:20] = 9
    report = export(widget, qtbot)
    mine = ann.annotator_slug("Erin")
    assert report.voxels_written == 100 and widget.edit.labels_name == mine
    assert mine in ann.label_images(str(sample))
    reviewed = ann.read_coverage(str(sample), labels=mine).reviewed
    assert reviewed[0, 1, 1] and reviewed.sum() == 1


def test_an_http_store_is_refused_before_any_painting(make_napari_viewer, sample, http_server,
                                                      qtbot):
    from napari_zshard.plugin.annotate.widget import AnnotateWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(f"{http_server.url}/{sample.name}", plugin="napari-zshard")
    widget = AnnotateWidget(viewer)
    widget.source.value = "numbers"
    widget.region.value = REGION
    widget.edit_button.native.click()
    qtbot.waitUntil(lambda: "checkout failed" in widget.status.value, timeout=20000)
    assert "read-only" in widget.status.value and "zshard convert" in widget.status.value
    assert widget.edit is None and widget.layer is None and widget.edit_button.enabled
    assert len(viewer.layers) == 2  # no editable layer was added


def test_points_and_shapes_export_with_who_and_when_and_reopen_with_their_features(
        viewer, widget, qtbot, sample, make_napari_viewer):
    from napari_zshard.annotations.geometry import export_geometry, load_geometry

    points = viewer.add_points([[16, 40, 50], [16, 60, 70], [20, 100, 110]], name="seeds",
                               features={"kind": ["nucleus", "nucleus", "debris"]})
    boxes = viewer.add_shapes([[[16, 10, 10], [16, 10, 30], [16, 30, 30], [16, 30, 10]]],
                              shape_type="rectangle", name="boxes",
                              features={"note": ["check"]})
    panel = widget.geometry
    widget.annotator.value = "alice"
    for layer in (points, boxes):
        panel.layer.value = layer
        with qtbot.waitSignal(widget.signals.geometry_exported, timeout=20000):
            panel.export_button.native.click()
        assert panel.report.added == len(layer.data), widget.status.value
    ids = list(points.features["zshard_id"])
    assert all(i.startswith("alice") for i in ids) and len(set(ids)) == 3

    # bob moves the first point meanwhile; we move it too, delete the debris and add one
    stored = load_geometry(str(sample), name="seeds")
    moved = np.array(stored.data)
    moved[stored.ids.index(ids[0])] = [16, 41, 51]
    export_geometry(str(sample), name="seeds", kind="points", data=moved, annotator="bob",
                    features=stored.features, base=stored)
    points.data = np.array([[16, 45, 55], [16, 60, 70], [12, 10, 10]])
    points.features = {"kind": ["nucleus", "nucleus", "mitosis"],
                       "zshard_id": [ids[0], ids[1], ""]}
    panel.layer.value = points
    with qtbot.waitSignal(widget.signals.geometry_exported, timeout=20000) as blocker:
        panel.export_button.native.click()
    report = blocker.args[0]
    assert (report.added, report.modified, report.deleted) == (1, 0, 1)
    assert [c.zshard_id for c in report.conflicts] == [ids[0]]  # bob's move wins, reported
    assert "kept theirs" in widget.status.value

    # another viewer opens them with their features, who and when
    other = make_napari_viewer()
    other.open(str(sample), plugin="napari-zshard")
    from napari_zshard.plugin.annotate.widget import AnnotateWidget

    reopened = AnnotateWidget(other)
    reopened.geometry.open_button.native.click()
    seeds, shapes = other.layers["seeds"], other.layers["boxes"]
    table = seeds.features.set_index("zshard_id")
    assert table.loc[ids[0], "modified_by"] == "bob"
    np.testing.assert_allclose(seeds.data[list(table.index).index(ids[0])], [16, 41, 51])
    assert ids[2] not in table.index  # deleted
    assert sorted(table["kind"]) == ["mitosis", "nucleus", "nucleus"]
    assert set(table["author"]) == {"alice"}
    assert shapes.shape_type == ["rectangle"] and list(shapes.features["note"]) == ["check"]
    np.testing.assert_allclose(shapes.data[0], boxes.data[0])
