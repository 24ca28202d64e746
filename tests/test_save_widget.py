"""Save as sharded zarr… in a real viewer: the save runs in the background, shows progress in
the activity dock, and Cancel stops it leaving nothing that looks like a store."""

import json

import numpy as np
import pytest
from ome_checks import assert_peers_accept, assert_peers_accept_s3

import napari_zshard as nz

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer):
    from napari_zshard.plugin.save_widget import SaveShardedWidget

    viewer = make_napari_viewer()
    return SaveShardedWidget(viewer)


def test_save_runs_in_the_background_and_the_result_reads_back(widget, tmp_path, qtbot):
    rng = np.random.default_rng(0)
    image = widget.viewer.add_image(rng.integers(0, 900, (48, 96, 96), dtype=np.uint16),
                                    name="raw", contrast_limits=(0, 800))
    labels = widget.viewer.add_labels((image.data > 700).astype(np.uint8), name="bright")
    widget.layer_select.value = [image, labels]
    widget.target.value = tmp_path / "out"
    widget.chunks.value = "16,32,32"
    widget.shards.value = "32,64,64"
    with qtbot.waitSignal(widget.save_button.native.clicked, timeout=1000):
        widget.save_button.native.click()
    assert widget.worker is not None  # the save is running off the Qt thread
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.status.value == f"saved {tmp_path / 'out.zarr'}"
    node = nz.open_image(tmp_path / "out.zarr")
    np.testing.assert_array_equal(node.arrays[0][:], image.data)
    assert node.arrays[0].chunks == (16, 32, 32) and node.arrays[0].shards == (32, 64, 64)
    np.testing.assert_array_equal(node.labels[0].arrays[0][:], labels.data)
    peer = assert_peers_accept(tmp_path / "out.zarr", channels=1, labels=1)
    assert peer.images[0][1]["contrast_limits"] == [0, 800]


def test_cancel_stops_the_save_and_leaves_nothing(widget, tmp_path, qtbot):
    data = np.random.default_rng(1).integers(0, 60000, (128, 256, 256), dtype=np.uint16)
    widget.viewer.add_image(data, name="big")
    widget.target.value = tmp_path / "big.zarr"
    widget.chunks.value = "8,32,32"
    widget.shards.value = "8,64,64"  # many small shards: plenty of time to cancel
    widget.save_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is not None, timeout=5000)
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert widget.status.value == "cancelled: nothing was saved"
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_shape_is_reported_not_saved(widget, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.viewer.add_image(np.zeros((4, 8, 8), np.uint8))
    widget.target.value = tmp_path / "x.zarr"
    widget.chunks.value = "sixty-four"
    widget.save_button.native.click()
    assert shown and "chunk shape" in shown[0]
    assert widget.worker is None and list(tmp_path.iterdir()) == []


def save_and_wait(widget, qtbot, target):
    widget.target.value = target
    widget.save_button.native.click()
    assert widget.worker is not None, widget.status.value
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)


@pytest.mark.parametrize("where", ["path", "file-url", "s3-url"])
def test_the_destination_may_be_a_path_or_a_url(widget, tmp_path, qtbot, monkeypatch, where,
                                                 request):
    """``s3://bucket/x.zarr`` stays a URL (it once became a local folder ``s3:/bucket``), and
    it reaches the bucket through the storage options configured for its prefix."""
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a path would land here
    image = widget.viewer.add_image(np.arange(16 * 32 * 32, dtype=np.uint16).reshape(16, 32, 32),
                                    name="ramp", colormap="green", contrast_limits=(0, 9000))
    if where == "s3-url":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS",
                           json.dumps({bucket: {"endpoint_url": endpoint}}))
        typed, written = f"{bucket}/ramp", f"{bucket}/ramp.zarr"
    else:
        (tmp_path / "out").mkdir()
        typed = str(tmp_path / "out" / "ramp") if where == "path" else \
            f"file://{tmp_path}/out/ramp"
        written = typed + ".zarr"

    save_and_wait(widget, qtbot, typed)

    assert widget.status.value == f"saved {written}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if where == "s3-url" else ["out"])
    node = nz.open_image(written)  # the per-prefix configuration reaches the bucket
    np.testing.assert_array_equal(node.arrays[0][:], image.data)
    if where == "s3-url":
        peer = assert_peers_accept_s3(written, endpoint, tmp_path / "check", channels=1)
    else:
        peer = assert_peers_accept(tmp_path / "out" / "ramp.zarr", channels=1)
    assert peer.images[0][1]["colormap"].name == "green"


def test_an_http_destination_is_refused_before_any_request(widget, tmp_path, http_server,
                                                            monkeypatch):
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    widget.viewer.add_image(np.zeros((4, 8, 8), np.uint8), name="x")
    http_server.reset_log()
    widget.target.value = f"{http_server.url}/x.zarr"
    widget.save_button.native.click()
    assert widget.worker is None
    assert len(shown) == 1 and "http(s):// locations are read-only" in shown[0]
    assert "s3://" in shown[0]  # says where it can save
    assert http_server.log == []  # not even a probe


def test_browse_picks_a_local_destination(widget, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    asked = []

    def choose(parent, caption, start, filter):  # what the user picks in the dialog
        asked.append((caption, start, filter))
        return str(tmp_path / "picked.zarr"), filter

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(choose))
    widget.target.value = "s3://bucket/typed.zarr"
    widget.target.browse.native.click()
    assert widget.target.value == str(tmp_path / "picked.zarr")
    assert asked[0][1] == ""  # a URL is no place to start a local dialog


def saving_bars() -> list:
    """The progress bars napari's activity dock shows for a save (a QProgressBar next to a
    label "saving …")."""
    from qtpy.QtWidgets import QApplication, QLabel, QProgressBar

    return [bar for top in QApplication.topLevelWidgets() for bar in top.findChildren(QProgressBar)
            if bar.parent() is not None and any(
                label.text().startswith("saving") for label in bar.parent().findChildren(QLabel))]


def test_the_activity_dock_shows_the_save_advance_and_finish(widget, tmp_path, qtbot):
    data = np.random.default_rng(2).integers(0, 60000, (64, 256, 256), dtype=np.uint16)
    widget.viewer.add_image(data, name="big")
    widget.target.value = tmp_path / "big.zarr"
    widget.chunks.value = "8,32,32"
    widget.shards.value = "8,64,64"  # many small shards: many steps
    assert saving_bars() == []
    widget.save_button.native.click()

    qtbot.waitUntil(lambda: len(saving_bars()) > 0, timeout=10000)
    (bar,) = saving_bars()
    shown, removed = [], []  # (value, maximum) as the bar changed
    bar.valueChanged.connect(lambda value: shown.append((value, bar.maximum())))
    bar.destroyed.connect(lambda *_: removed.append(True))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    qtbot.waitUntil(lambda: bool(removed), timeout=5000)  # the finished bar leaves the dock

    assert widget.status.value == f"saved {tmp_path / 'big.zarr'}"
    values = [value for value, _ in shown]
    total = shown[-1][1]
    assert total >= 64  # one step per shard: 8 x 4 x 4 at full resolution alone
    assert values == sorted(values) and len(set(values)) >= 3, shown  # it advanced
    assert values[-1] == total  # and reached the end
    assert saving_bars() == []
