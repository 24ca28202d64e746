"""In a real napari window (under Xvfb): the pixels on screen, drag-and-drop, the menu command."""

import numpy as np
import pytest
from screen_checks import left_right_volume, shows_plane, write_volume

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def volume_store(tmp_path):
    vol = left_right_volume()
    return write_volume(tmp_path / "planes.zarr", vol), vol


def test_moving_the_z_slider_shows_that_plane_on_screen(make_napari_viewer, volume_store, qtbot):
    path, vol = volume_store
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-zshard", contrast_limits=(0, 255))
    for z in (10, 50, 63, 0):
        viewer.dims.set_current_step(0, z)
        qtbot.waitUntil(lambda z=z: shows_plane(viewer, vol, z), timeout=5000)


def test_dropping_a_zarr_folder_opens_it_with_napari_zshard(make_napari_viewer, volume_store):
    from napari.settings import get_settings
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    from napari_zshard.plugin.menu_commands import use_as_default_zarr_reader

    path, vol = volume_store
    viewer = make_napari_viewer(show=True)
    use_as_default_zarr_reader()
    readers = get_settings().plugins.extension2reader
    assert readers["*.zarr/"] == readers["*.zarr"] == "napari-zshard"

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    viewer.window._qt_viewer.dropEvent(event)
    (layer,) = viewer.layers
    assert layer.data.shape == vol.shape
    assert layer.metadata["napari_zshard"]["url"].endswith("planes.zarr")
    np.testing.assert_array_equal(np.asarray(layer.data[5]), vol[5])


def test_plugin_menu_entries_and_sample_are_registered(make_napari_viewer):
    import npe2

    viewer = make_napari_viewer()
    pm = npe2.PluginManager.instance()
    manifest = pm.get_manifest("napari-zshard")
    io_menu = manifest.contributions.menus["napari/file/io_utilities"]
    assert any(m.command == "napari-zshard.use_as_default_zarr_reader" for m in io_menu)
    assert [s.key for s in manifest.contributions.sample_data] == ["cells"]
    assert viewer is not None


def test_view_path_opens_a_viewer_with_the_plugin(qtbot, volume_store):
    import napari_zshard as nz

    path, vol = volume_store
    viewer = nz.view_path(str(path), show=False, title="zshard")
    try:
        (layer,) = viewer.layers
        assert viewer.title == "zshard"
        np.testing.assert_array_equal(np.asarray(layer.data[9]), vol[9])
    finally:
        viewer.close()
