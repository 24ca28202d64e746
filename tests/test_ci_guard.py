"""In CI a missing test dependency fails the run instead of turning tests into skips.

Simulated for real: the suite's own GUI module and a test with an ``importorskip`` inside run in
a child pytest where ``import napari`` fails as it does when napari is not installed (its pytest
plugin, which an install without napari would not have, is left out too).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ["tests/test_viewer_gui.py", "tests/test_writer.py",
             "-k", "test_viewer_gui or napari_ome_zarr_opens_it"]


def run_suite_without_napari(tmp_path: Path, *, ci: str | None) -> subprocess.CompletedProcess:
    hidden = tmp_path / "site"
    (hidden / "napari").mkdir(parents=True)
    (hidden / "napari" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'napari'\", name='napari')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hidden), str(ROOT),
                                                      os.environ.get("PYTHONPATH")]))
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "-p", "no:napari",
         "--continue-on-collection-errors", "--basetemp", str(tmp_path / "run"), *SELECTION],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
def test_locally_a_missing_napari_skips_its_tests(tmp_path):
    run = run_suite_without_napari(tmp_path, ci=None)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "2 skipped" in out and "could not import 'napari'" in out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_napari_fails_the_run(tmp_path, ci):
    run = run_suite_without_napari(tmp_path, ci=ci)
    out = run.stdout + run.stderr
    assert run.returncode not in (0, 5), out
    # the module-level importorskip: a collection error
    assert "ERROR tests/test_viewer_gui.py" in out, out
    # the importorskip inside a test: a failure
    assert "FAILED tests/test_writer.py::test_napari_ome_zarr_opens_it_with_its_labels" in out, out
    assert "a test dependency is missing and CI is set" in out
    assert "skipped" not in out.splitlines()[-1]
