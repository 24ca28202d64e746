"""The conflict walker in a real napari window (under Xvfb): Merge in the background, the
conflicts listed and sortable, Next/Previous move the view onto each one (its colour on
screen), and both ways to resolve one: a recorded value re-applied by the next merge, and an
edit of the consensus checked out over the conflict's box."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_annotate_widget import _menu, centre_colour
from test_consensus_layers import BIG, NAMES, SMALL, merged_store

from napari_zshard import annotations as ann

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.timeout(120)]


@pytest.fixture
def viewer(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_ZSHARD_CONFIG", str(tmp_path / "config" / "storage.toml"))
    viewer = make_napari_viewer(show=True)
    viewer.open(merged_store(tmp_path, merge=False), plugin="napari-zshard")
    return viewer


@pytest.fixture
def walker(viewer):
    from napari_zshard.plugin.conflict_walker import ConflictWalker

    walker = ConflictWalker(viewer)
    viewer.window.add_dock_widget(walker, name="Conflict walker")
    walker.annotator.setText("dana")
    return walker


def merge(walker, qtbot):
    with qtbot.waitSignal(walker.signals.merged, timeout=60000) as blocker:
        walker.merge_button.click()
    return blocker.args[0]


def jump(walker, qtbot, button) -> int:
    with qtbot.waitSignal(walker.signals.jumped, timeout=5000) as blocker:
        button.click()
    return blocker.args[0]


def test_layers_menu_offers_the_walker(viewer):
    annotate = _menu(_menu(viewer.window.main_menu, "Layers"), "Annotate")
    (action,) = [a for a in annotate.actions() if a.text().startswith("Merge annotators")]
    action.trigger()
    assert "Conflict walker" in viewer.window.dock_widgets


def test_merge_then_walk_the_conflicts_and_resolve_one(viewer, walker, qtbot, tmp_path):
    from qtpy.QtCore import Qt

    assert walker.table.rowCount() == 0
    report = merge(walker, qtbot)
    assert report.conflicts == 2 and walker.merge_button.isEnabled()
    slugs = [ann.annotator_slug(n) for n in NAMES]
    assert [la.name for la in viewer.layers] == ["img", *sorted(slugs), "consensus", "conflicts"]
    assert [la.visible for la in viewer.layers] == [True, False, False, False, False, True]
    assert walker.table.rowCount() == 2

    # sorted by size, largest first: Next goes to the big one, Next again to the small one
    walker.table.sortItems(2, Qt.SortOrder.DescendingOrder)
    conflicts = viewer.layers["conflicts"]
    big_id = int(np.asarray(conflicts.data[0])[BIG][0, 0, 0])
    small_id = int(np.asarray(conflicts.data[0])[SMALL][0, 0, 0])
    assert jump(walker, qtbot, walker.next_button) == big_id
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (40.5, 24.5))
    assert viewer.dims.point[0] == pytest.approx(5.5, abs=0.5)
    assert viewer.scene.camera.zoom > 1  # a 10-voxel box fills a third of the canvas
    # on screen: the conflict's colour (the image hidden: nothing else shows under it)
    viewer.layers["img"].visible = False
    colour = np.asarray(conflicts.get_color(big_id))[:3] * 255 * conflicts.opacity
    qtbot.waitUntil(lambda: np.abs(centre_colour(viewer) - colour).max() <= 3, timeout=10000)
    assert jump(walker, qtbot, walker.next_button) == small_id
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (5.5, 51.5))
    assert viewer.dims.point[0] == pytest.approx(4.5, abs=0.5)
    small_colour = np.asarray(conflicts.get_color(small_id))[:3] * 255 * conflicts.opacity
    qtbot.waitUntil(lambda: np.abs(centre_colour(viewer) - small_colour).max() <= 3,
                    timeout=10000)
    assert jump(walker, qtbot, walker.previous_button) == big_id

    # "take alice's value" for the big one: recorded (by dana), re-applied by the next merge
    walker.take_from.setCurrentText(ann.annotator_slug("alice"))
    walker.fill_value()
    assert walker.value.value() == 5
    walker.record.click()
    log = tmp_path / "img.zarr" / "labels" / "consensus" / "zshard" / "overrides.json"
    (entry,) = json.loads(log.read_text())["overrides"]
    assert (entry["by"], entry["value"], entry["conflict_id"]) == ("dana", 5, big_id)
    report = merge(walker, qtbot)
    assert report.conflicts == 1 and report.overrides_applied == 1
    consensus = viewer.layers["consensus"]
    assert (np.asarray(consensus.data[0])[BIG] == 5).all()
    assert walker.table.rowCount() == 1

    # Resolve here: the small one's box of the consensus, checked out in the Annotate widget
    assert jump(walker, qtbot, walker.next_button) == small_id
    from napari_zshard.plugin.annotate.widget import AnnotateWidget

    walker.resolve_here.click()
    annotate = viewer.window.dock_widgets["Annotate"]
    assert isinstance(annotate, AnnotateWidget)
    with qtbot.waitSignal(annotate.signals.checked_out, timeout=30000) as blocker:
        pass
    edit = blocker.args[0]
    assert edit.labels_name == "consensus" and edit.annotator == "dana"
    assert edit.region == SMALL
    # painted and exported: a commit into the consensus, logged with who resolved it
    annotate.layer.data[tuple(slice(0, s.stop - s.start) for s in SMALL)] = 8
    with qtbot.waitSignal(annotate.signals.exported, timeout=30000) as blocker:
        annotate.export_button.native.click()
    assert blocker.args[0] is not None
    record = ann.log(str(tmp_path / "img.zarr"), labels="consensus")[-1]
    assert (record.annotator, record.status) == ("dana", "committed")
    import napari_zshard as nz

    (stored,) = [la for la in nz.open_image(str(tmp_path / "img.zarr")).labels
                 if la.name == "consensus"]
    assert (np.asarray(stored.arrays[0][SMALL]) == 8).all()


def test_the_merge_shows_its_progress_and_can_be_cancelled(viewer, walker, qtbot, monkeypatch):
    from napari_zshard.plugin.conflict_walker import ConflictWalker

    steps, cancel_at_first_step = [], []
    advance = ConflictWalker._advance

    def spy(self, step):
        steps.append(step)
        advance(self, step)
        if cancel_at_first_step:
            cancel_at_first_step.clear()
            self.cancel_button.click()  # stops it after the shard it is on

    monkeypatch.setattr(ConflictWalker, "_advance", spy)
    merge(walker, qtbot)
    assert steps and steps[-1].done == steps[-1].total
    assert [s.done for s in steps] == sorted(s.done for s in steps)

    steps.clear()
    cancel_at_first_step.append(True)
    report = merge(walker, qtbot)
    assert report is None and "cancelled" in walker.status.text()
    assert steps[-1].done < steps[-1].total
    # a merge stopped half-way is no consensus: unlisted until a merge finishes
    assert "consensus" not in ann.label_images(walker.store_url())
    assert walker.merge_button.isEnabled() and not walker.cancel_button.isEnabled()
