"""The package as a user installs it: a napari-free core, a valid napari manifest."""

import json
import subprocess
import sys

import pytest


def test_core_import_pulls_in_no_napari_qt_or_magicgui():
    code = (
        "import sys, json, napari_zshard, napari_zshard.engine, napari_zshard.store, "
        "napari_zshard.sample, napari_zshard.ome, napari_zshard.cli\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_installed_plugin_manifest_loads_and_validates():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-zshard")
    assert manifest.name == "napari-zshard"
    result = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-zshard",
                             "--imports"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_top_level_manifest_is_a_link_to_the_packaged_one():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    link = root / "napari.yaml"
    assert link.is_symlink()
    assert link.resolve() == (root / "napari_zshard" / "napari.yaml").resolve()
