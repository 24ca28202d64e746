"""Remote stores in napari: pasted HTTP URLs, private S3 buckets through the per-prefix
configuration (what drag-and-drop relies on), and a window that never waits on the network."""

import json
import time

import numpy as np
import pytest
from screen_checks import left_right_volume, shows_plane, write_volume

from napari_zshard.sample import make_cells, make_sample

napari = pytest.importorskip("napari")

SHAPE = (32, 128, 128)


@pytest.fixture
def viewer_model(npe2pm):
    from napari.components import ViewerModel

    with npe2pm.tmp_plugin(package="napari-zshard"):
        yield ViewerModel()


@pytest.fixture
def served_sample(http_server, tmp_path):
    make_sample(tmp_path / "cells.zarr", shape=SHAPE)
    return f"{http_server.url}/cells.zarr"


@pytest.mark.parametrize("suffix", ["", "/"])
def test_pasted_http_url_opens_lazily(viewer_model, served_sample, http_server, suffix):
    http_server.reset_log()
    viewer_model.open(served_sample + suffix, plugin="napari-zshard")
    image, labels = viewer_model.layers
    assert image.multiscale and labels.multiscale
    # Opening reads metadata and the planes on screen, not the volume: a handful of requests
    # (zarr.json files, then an index and a coalesced range per touched shard).
    opened = http_server.count()
    assert opened < 60, opened
    expected, _ = make_cells(SHAPE)
    np.testing.assert_array_equal(np.asarray(image.data[0][3]), expected[3])


def test_private_s3_bucket_opens_without_passing_options(viewer_model, tmp_path, s3_bucket,
                                                          s3_endpoint, put_on_s3, monkeypatch):
    """A drop or pasted URL cannot carry options: the endpoint (and credentials) come from the
    configuration for the bucket's prefix."""
    local = make_sample(tmp_path / "cells.zarr", shape=SHAPE)
    url = f"{s3_bucket}/lab/cells.zarr"
    put_on_s3(local, url, s3_endpoint)
    monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS",
                       json.dumps({f"{s3_bucket}/": {"endpoint_url": s3_endpoint}}))
    viewer_model.open(url, plugin="napari-zshard")
    image, _ = viewer_model.layers
    expected, _ = make_cells(SHAPE)
    np.testing.assert_array_equal(np.asarray(image.data[0][7]), expected[7])


@pytest.mark.gui
@pytest.mark.parametrize("async_slicing", [False, True], ids=["sync", "async"])
def test_z_steps_over_a_slow_server(make_napari_viewer, http_server, tmp_path, qtbot,
                                    async_slicing):
    """napari's default synchronous slicing waits for data; with its async setting on, the Qt
    thread never waits on I/O while the data still arrives on screen."""
    from napari.settings import get_settings

    # > 4 M voxels, so contrast limits are not computed by reading the whole volume
    vol = left_right_volume(n_planes=192, size=192)
    write_volume(tmp_path / "planes.zarr", vol, chunks=(64, 32, 32), shards=(64, 192, 192))
    get_settings().experimental.async_ = async_slicing
    try:
        viewer = make_napari_viewer(show=True)
        viewer.open(f"{http_server.url}/planes.zarr", plugin="napari-zshard",
                    contrast_limits=(0, 255))
        middle = vol.shape[0] // 2
        qtbot.waitUntil(lambda: shows_plane(viewer, vol, middle), timeout=10000)
        http_server.latency = 0.25  # every response now takes a quarter of a second
        from qtpy.QtWidgets import QApplication

        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, 150)  # chunk row 128-191: nothing has read it
        QApplication.processEvents()  # one pass of the event loop: where a slice would block
        returned = time.perf_counter() - t0
        if async_slicing:
            assert returned < 0.2, f"the Qt thread waited {returned:.2f} s on I/O"
        else:
            assert returned >= 0.25, "synchronous slicing returned before the data arrived"
        qtbot.waitUntil(lambda: shows_plane(viewer, vol, 150), timeout=15000)
    finally:
        get_settings().experimental.async_ = False
