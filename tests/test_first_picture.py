"""The first pictures a new user gets: the README's main command (``zshard view --screenshot``)
and File ▸ Open Sample ▸ napari-zshard ▸ Sharded cells volume. Each shows the cells image with its
labels on top, on screen (pixels), not only as layers."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from first_picture import describe_picture

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.mark.timeout(300)
def test_zshard_view_screenshot_shows_the_sample_with_its_labels(tmp_path, sample_cache):
    shot = tmp_path / "first.png"
    env = {**os.environ, "NAPARI_ZSHARD_CACHE": str(sample_cache)}
    run = subprocess.run([sys.executable, "-m", "napari_zshard.cli", "view", "--screenshot",
                          str(shot)], env=env, capture_output=True, text=True, timeout=240)

    assert run.returncode == 0, run.stdout + run.stderr
    assert "cells (Image)" in run.stdout and "(Labels)" in run.stdout, run.stdout
    picture = describe_picture(shot.read_bytes())
    assert picture.lit > 0.3, picture
    assert picture.grey_levels > 16, picture  # an image, not a flat fill
    assert picture.coloured > 0.005, picture  # the labels are drawn over it


def menu_action(menu_title: str, text: str):
    """The QAction of a menu entry, found as a user finds it: the entry starting with ``text``
    in the menu titled ``menu_title``."""
    from qtpy.QtWidgets import QApplication, QMenu

    for top in QApplication.topLevelWidgets():
        for menu in top.findChildren(QMenu):
            if menu.title().replace("&", "") != menu_title:
                continue
            for action in menu.actions():
                if action.text().replace("&", "").startswith(text):
                    return action
    return None


@pytest.mark.timeout(300)
def test_file_open_sample_shows_the_cells_volume(make_napari_viewer, sample_cache, monkeypatch,
                                                qtbot):
    monkeypatch.setenv("NAPARI_ZSHARD_CACHE", str(sample_cache))
    viewer = make_napari_viewer(show=True)
    action = menu_action("Open Sample", "Sharded cells volume")
    assert action is not None, "no File ▸ Open Sample ▸ Sharded cells volume"
    assert action.text().endswith("(napari-zshard)")

    action.trigger()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=120000)

    kinds = [(layer.name, type(layer).__name__) for layer in viewer.layers]
    assert kinds[0] == ("cells", "Image") and kinds[1][1] == "Labels", kinds
    image = viewer.layers[0]
    assert image.multiscale and image.data[0].shape == (128, 512, 512)
    qtbot.waitUntil(lambda: describe_picture(
        viewer.screenshot(canvas_only=True, flash=False)).lit > 0.3, timeout=30000)
    picture = describe_picture(viewer.screenshot(canvas_only=True, flash=False))
    assert picture.grey_levels > 16, picture
    assert picture.coloured > 0.005, picture
    z = viewer.dims.current_step[0]
    assert np.asarray(image.data[0][z]).any()
