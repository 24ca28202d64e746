"""``zshard annotations log|repair`` and what ``zshard fsck`` says about annotation commits."""

from __future__ import annotations

import json

import numpy as np
from test_annotations_commit import levels
from test_annotations_region import make_image

from napari_zshard import annotations as ann
from napari_zshard.cli import main

REGION = (slice(0, 32), slice(0, 64), slice(0, 64))


def test_log_repair_and_fsck(tmp_path, capsys):
    url = make_image(tmp_path)
    a = ann.checkout(url, labels="cells", create=True, annotator="Alice", region=REGION)
    b = ann.checkout(url, labels="cells", annotator="bob", region=REGION)
    b.data[1, 1, 1:5] = 3
    b.commit("bob's cells")
    a.data[1, 1, 1:5] = 4
    assert a.commit("alice's").conflicts
    # an export stopped once it can no longer be cancelled: its intent is left behind
    c = ann.checkout(url, labels="cells", annotator="carol", region=REGION)
    c.data[2, 0:40, 0:40] = 9
    steps = c.commit_steps("interrupted")
    while next(steps).cancellable:
        pass
    steps.close()
    capsys.readouterr()

    assert main(["fsck", url]) == 0
    out = capsys.readouterr().out
    assert "clean" in out and "1 interrupted annotation commit" in out

    assert main(["annotations", "log", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3
    assert "bob" in out[0] and "committed" in out[0] and "bob's cells" in out[0]
    assert "Alice" in out[1] and "1 conflict(s) (4 voxels)" in out[1]
    assert "carol" in out[2] and "interrupted" in out[2]

    assert main(["annotations", "repair", url]) == 0
    assert capsys.readouterr().out.startswith("finished ")
    assert (levels(url)[0][2, 0:40, 0:40] == 9).all()
    assert main(["annotations", "repair", url]) == 0
    assert "nothing to repair" in capsys.readouterr().out

    assert main(["annotations", "log", url, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in records] == ["committed"] * 3
    assert records[2]["repaired"] is True
    assert main(["fsck", url, "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clean"] and report["annotations"] == [
        {"label_image": "cells", "commits": 3, "interrupted": []}]
    assert np.count_nonzero(levels(url)[0]) == 4 + 40 * 40


def test_cli_refuses_an_http_store(http_server, tmp_path, capsys):
    make_image(tmp_path)
    assert main(["annotations", "repair", f"{http_server.url}/img.zarr"]) == 2
    assert "read-only" in capsys.readouterr().err
