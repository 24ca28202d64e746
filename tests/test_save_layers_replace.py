"""File ▸ Save Layers onto an existing store, in a running napari window: the plugin asks
(Replace / Cancel), replaces only a Zarr store, and swaps the new one in only once complete.

napari's Save dialog calls ``viewer.layers.save`` from inside the Qt event loop; the tests do
the same (a queued call run while ``qtbot.waitSignal`` spins the loop) and answer the question
box the plugin opens by clicking one of its buttons, as a user would.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_checks import assert_peers_accept

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, (32, 48, 48), dtype=np.uint16)


def save_from_the_window(qtbot, viewer, path, answer: str | None):
    """``viewer.layers.save(path)`` run by the Qt event loop, as the Save dialog runs it;
    ``answer``: the button clicked in the question box (None: no box may appear). Returns
    what the save returned, the exception it raised, and the questions asked."""
    from qtpy.QtCore import QObject, QTimer, Signal
    from qtpy.QtWidgets import QApplication, QMessageBox

    class Done(QObject):
        finished = Signal()

    done, outcome, asked = Done(), {}, []

    def save():
        try:
            outcome["saved"] = viewer.layers.save(str(path), plugin="napari-zshard")
        except Exception as e:  # what napari would show the user
            outcome["error"] = e
        done.finished.emit()

    def click_when_asked():
        if "saved" in outcome or "error" in outcome:
            return  # this save is over: a dialog up now is a later save's
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, click_when_asked)
            return
        asked.append(box.text())
        buttons = [b for b in box.buttons() if b.text().replace("&", "") == answer]
        assert len(buttons) == 1, (box.text(), [b.text() for b in box.buttons()])
        buttons[0].click()

    with qtbot.waitSignal(done.finished, timeout=60000):
        QTimer.singleShot(0, save)
        QTimer.singleShot(20, click_when_asked)
    return outcome.get("saved"), outcome.get("error"), asked


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_replace_asked_in_the_window_replaces_the_store(viewer, qtbot, tmp_path):
    viewer.add_image(volume(1), name="cells", contrast_limits=(0, 4000))
    saved, error, asked = save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr", None)
    assert (saved, error, asked) == ([str(tmp_path / "cells.zarr")], None, [])

    viewer.layers[0].data = volume(2)
    saved, error, asked = save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr",
                                               "Replace")

    assert error is None and saved == [str(tmp_path / "cells.zarr")]
    assert asked == [f"{tmp_path / 'cells.zarr'} already exists."]
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "cells.zarr" / "0"))[...],
                                  volume(2))
    assert names(tmp_path) == ["cells.zarr"]  # no staging folder, no old copy left behind
    assert_peers_accept(tmp_path / "cells.zarr", channels=1)


def test_cancel_keeps_the_store_as_it_was(viewer, qtbot, tmp_path):
    viewer.add_image(volume(1), name="cells", contrast_limits=(0, 4000))
    save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr", None)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    viewer.layers[0].data = volume(2)

    with pytest.warns(UserWarning) as warned:  # napari's Save dialog shows these
        saved, error, asked = save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr",
                                                   "Cancel")
    assert any("was kept: Replace was not chosen, nothing was saved" in str(w.message)
               for w in warned)

    assert len(asked) == 1 and (saved, error) == ([], None)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "cells.zarr" / "0"))[...],
                                  volume(1))


def test_a_folder_that_is_not_a_zarr_store_is_never_replaced_nor_asked_about(viewer, qtbot,
                                                                               tmp_path):
    folder = tmp_path / "thesis.zarr"  # named like a store, holding something else
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    viewer.add_image(volume(1), name="cells")

    saved, error, asked = save_from_the_window(qtbot, viewer, folder, None)

    assert asked == [] and not saved
    assert "does not hold a Zarr store" in str(error)
    assert (folder / "chapter1.tex").read_text() == "precious"
    assert names(tmp_path) == ["thesis.zarr"] and names(folder) == ["chapter1.tex"]


def test_a_replacement_that_fails_leaves_the_old_store_whole(viewer, qtbot, tmp_path):
    viewer.add_image(volume(1), name="cells", contrast_limits=(0, 4000))
    save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr", None)

    def block(x, block_info=None):  # the last z block cannot be read (a lost network drive)
        if block_info[0]["chunk-location"][0] == 3:
            raise OSError("the source went away")
        return x

    failing = da.from_array(volume(2), chunks=(8, 48, 48)).map_blocks(block, dtype=np.uint16)
    viewer.layers[0].data = failing
    viewer.dims.set_current_step(0, 0)  # napari itself reads only the first block

    saved, error, asked = save_from_the_window(qtbot, viewer, tmp_path / "cells.zarr",
                                               "Replace")

    assert len(asked) == 1 and not saved and "the source went away" in str(error)
    assert names(tmp_path) == ["cells.zarr"]  # the half-written replacement is gone
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "cells.zarr" / "0"))[...],
                                  volume(1))
    assert_peers_accept(tmp_path / "cells.zarr", channels=1)
