"""What a killed reshard leaves is checkable and removable at once: ``zshard fsck`` works on
the destination (no metadata yet) by checking the shards written so far against the journal's
plan, and a dead writer's partial files go however young they are — its lock says it is dead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from napari_zshard.cli import main
from napari_zshard.reshard import JOURNAL


def journaled(dst) -> int:
    folder = dst / JOURNAL / "done"
    return sum(not name.startswith(".") for _, _, files in os.walk(folder) for name in files)


@pytest.fixture
def killed_reshard(tmp_path, http_server):
    """A reshard killed (SIGKILL) after a few shards, plus a fresh partial file as a write
    cut short by the kill leaves (unlocked, a moment old)."""
    data = np.random.default_rng(2).integers(0, 500, (32, 128, 128), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "acq.zarr"), data=data, chunks=(8, 32, 32))
    http_server.latency = 0.015
    dst = tmp_path / "out.zarr"
    command = ["reshard", f"{http_server.url}/acq.zarr", str(dst), "--chunks", "8,32,32",
               "--shards", "8,32,64", "--workers", "1", "--verify", "none"]
    job = subprocess.Popen([sys.executable, "-m", "napari_zshard.cli", *command],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while journaled(dst) < 4 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.communicate()
    assert job.returncode == -signal.SIGKILL, "the reshard ended before it was killed"
    assert not (dst / "zarr.json").exists()
    fresh = dst / "c" / "0" / "0" / ".1.k1ll3d.tmp"
    fresh.parent.mkdir(parents=True, exist_ok=True)
    fresh.write_bytes(bytes(1000))
    http_server.latency = 0.0
    return dst, command, data


def partials(dst) -> list:
    return list(dst.rglob(".*.tmp"))


def test_fsck_checks_an_interrupted_destination_and_removes_its_partial_files(
        killed_reshard, capsys):
    dst, _, _ = killed_reshard
    left = partials(dst)
    assert left
    code = main(["fsck", str(dst), "-q"])
    out = capsys.readouterr().out
    assert code == 3, out  # not 2 ("no Zarr array or group here"): checked, not complete
    assert "interrupted write" in out and "INCOMPLETE" in out
    assert f"{len(left)} partial file(s)" in out

    code = main(["fsck", str(dst), "--json", "-q"])
    report = json.loads(capsys.readouterr().out)
    assert code == 3 and report["interrupted"] and report["problems"] == []
    assert report["objects_found"] >= 4  # the shards written before the kill were checked

    assert main(["fsck", str(dst), "--remove-partial", "-q"]) == 3
    assert f"removed {len(left)} partial file(s)" in capsys.readouterr().out
    assert partials(dst) == []  # young as they were: their writer is dead


def test_fsck_finds_damage_in_what_an_interrupted_reshard_wrote(killed_reshard, capsys):
    dst, _, _ = killed_reshard
    shard = next(p for p in (dst / "c").rglob("*") if p.is_file() and
                 not p.name.startswith("."))
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["fsck", str(dst), "-q"]) == 1
    assert "DAMAGED" in capsys.readouterr().out


def test_the_resumed_reshard_removes_young_partial_files(killed_reshard, capsys):
    dst, command, data = killed_reshard
    left = partials(dst)
    assert main([*command, "-q"]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(left)} partial file(s)" in out
    assert partials(dst) == []
    np.testing.assert_array_equal(zarr.open_array(str(dst), mode="r")[:], data)


def test_fsck_of_a_folder_with_nothing_being_written_still_says_no_zarr(tmp_path, capsys):
    (tmp_path / "empty.zarr").mkdir()
    assert main(["fsck", str(tmp_path / "empty.zarr")]) == 2
    assert "no Zarr array or group here" in capsys.readouterr().err
