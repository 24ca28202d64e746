"""The ``zshard`` command as a user runs it: ``info`` shows what is stored, ``fsck`` checks it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_zshard.cli import main
from napari_zshard.testing import RangeHTTPServer

INDEX_BYTES = 8 * 16 + 4  # 2*2*2 inner chunks per shard, crc32c


def zshard(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI the way a shell does: a separate process, output captured."""
    return subprocess.run([sys.executable, "-m", "napari_zshard.cli", *args],
                          capture_output=True, text=True, timeout=60)


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A 64³ uint16 volume in 32³ shards of 16³ chunks (zstd + crc32c); only z < 32 written."""
    path = tmp_path / "vol.zarr"
    arr = zarr.create_array(path, shape=(64, 64, 64), dtype="uint16", chunks=(16, 16, 16),
                            shards=(32, 32, 32), fill_value=0,
                            compressors=[zarr.codecs.ZstdCodec(level=3),
                                         zarr.codecs.Crc32cCodec()])
    arr[:32] = (np.arange(32 * 64 * 64).reshape(32, 64, 64) % 251).astype("uint16")
    return path


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x40
    path.write_bytes(bytes(data))


def first_chunk_entry(shard: Path) -> tuple[int, int]:
    entries = np.frombuffer(shard.read_bytes()[-INDEX_BYTES:-4], "<u8").reshape(-1, 2)
    offset, length = next(e for e in entries if e[0] != 2**64 - 1)
    return int(offset), int(length)


# -- info ------------------------------------------------------------------------------------
def test_info_tells_shapes_codecs_and_how_much_is_stored(volume, capsys):
    code, out = run_json(capsys, "info", str(volume))
    assert code == 0 and out["node_type"] == "array" and out["listable"]
    (info,) = out["arrays"]
    assert info["shape"] == [64, 64, 64] and info["dtype"] == "uint16"
    assert info["chunk_shape"] == [16, 16, 16] and info["shard_shape"] == [32, 32, 32]
    assert info["codecs"] == ["bytes(little)", "zstd(3)", "crc32c"]
    assert (info["index_location"], info["index_checksum"]) == ("end", True)
    assert info["fill_value"] == 0
    assert (info["objects_present"], info["objects_possible"]) == (4, 8)
    shards = [p for p in (volume / "c").rglob("*") if p.is_file()]
    assert info["bytes_stored"] == sum(p.stat().st_size for p in shards)
    assert info["uncompressed_bytes"] == 32 * 64 * 64 * 2  # the half that was written
    assert info["nbytes"] == 64**3 * 2
    assert info["compression_ratio"] == pytest.approx(
        info["uncompressed_bytes"] / info["bytes_stored"])
    assert info["compression_ratio"] > 2


def test_info_for_humans(volume):
    result = zshard("info", str(volume))
    assert result.returncode == 0, result.stderr
    assert "bytes(little) → zstd(3) → crc32c" in result.stdout
    assert "shards present  4 of 8" in result.stdout
    assert "64 x 64 x 64" in result.stdout and "compression" in result.stdout


def test_info_on_a_group_describes_each_array(tmp_path, capsys):
    group = zarr.open_group(tmp_path / "pyramid.zarr", mode="w")
    for level, size in enumerate([64, 32]):
        arr = group.create_array(str(level), shape=(size,) * 3, dtype="uint8",
                                 chunks=(16,) * 3, shards=(32,) * 3)
        arr[:] = 7
    code, out = run_json(capsys, "info", str(tmp_path / "pyramid.zarr"))
    assert code == 0 and out["node_type"] == "group"
    assert [(a["path"], a["shape"], a["objects_present"]) for a in out["arrays"]] == [
        ("0", [64, 64, 64], 8), ("1", [32, 32, 32], 1)]


def test_info_over_http_says_what_it_cannot_know(volume, capsys):
    with RangeHTTPServer(volume.parent) as server:
        code, out = run_json(capsys, "info", f"{server.url}/vol.zarr")
    assert code == 0 and not out["listable"] and "cannot be listed" in out["listing_error"]
    (info,) = out["arrays"]
    assert info["shape"] == [64, 64, 64] and info["objects_possible"] == 8
    assert info["objects_present"] is None and info["compression_ratio"] is None


# -- fsck ------------------------------------------------------------------------------------
def test_fsck_of_a_clean_store_exits_0(volume):
    result = zshard("fsck", str(volume))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean: 4 shards and 32 inner chunks checked" in result.stdout


def test_fsck_tells_of_partial_files_of_interrupted_writes_and_removes_them(volume, capsys):
    import os
    import time

    # what a write killed mid-shard leaves (its writer dead: nothing holds its lock)
    partial = volume / "c" / "0" / "1" / ".0.1a2b3c.tmp"
    partial.write_bytes(bytes(3 << 20))
    os.utime(partial, (time.time() - 3600,) * 2)

    assert main(["fsck", str(volume)]) == 0  # not damage: readers never see it
    out = capsys.readouterr().out
    assert "note: 1 partial file(s) (3.0 MiB) of interrupted writes" in out
    assert "clean: 4 shards" in out and partial.exists()
    assert main(["fsck", str(volume), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["partial_files"] == {"count": 1,
                                                                    "bytes": 3 << 20}
    assert main(["fsck", str(volume), "--remove-partial"]) == 0
    assert "removed 1 partial file(s) (3.0 MiB)" in capsys.readouterr().out
    assert not partial.exists()
    assert sorted(p.name for p in (volume / "c" / "0" / "1").iterdir()) == ["0", "1"]


def test_fsck_names_a_shard_whose_index_has_a_flipped_bit(volume):
    flip_byte(volume / "c/0/1/0", -10)
    result = zshard("fsck", str(volume))
    assert result.returncode == 1
    assert "c/0/1/0: shard index checksum mismatch" in result.stdout
    assert "Traceback" not in result.stderr


def test_fsck_finds_a_flipped_byte_in_chunk_data_with_and_without_full(volume, capsys):
    offset, length = first_chunk_entry(volume / "c/0/0/1")
    flip_byte(volume / "c/0/0/1", offset + length // 2)
    for extra in ([], ["--full"]):
        code, report = run_json(capsys, "fsck", str(volume), *extra)
        assert code == 1 and not report["clean"] and report["damaged_objects"] == 1
        (problem,) = report["problems"]
        assert problem["key"] == "c/0/0/1" and problem["kind"] == "chunk"
        assert "crc32c checksum mismatch" in problem["message"]


def test_fsck_reports_a_truncated_shard(volume, capsys):
    shard = volume / "c/0/0/0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    code, report = run_json(capsys, "fsck", str(volume))
    assert code == 1
    assert [(p["key"], p["kind"]) for p in report["problems"]] == [("c/0/0/0", "index")]


def test_fsck_reports_a_0_byte_shard(volume, capsys):
    (volume / "c/0/1/1").write_bytes(b"")
    assert main(["fsck", str(volume)]) == 1
    out = capsys.readouterr().out
    assert "c/0/1/1: shard is 0 bytes" in out and "DAMAGED: 1 of 4 shards" in out


def test_fsck_over_http_asks_for_every_possible_shard(volume, capsys):
    flip_byte(volume / "c/0/1/1", -10)
    with RangeHTTPServer(volume.parent) as server:
        code, report = run_json(capsys, "fsck", f"{server.url}/vol.zarr")
    assert code == 1 and report["objects_checked"] == 8 and report["objects_found"] == 4
    assert [p["key"] for p in report["problems"]] == ["c/0/1/1"]


def test_fsck_decodes_chunks_that_have_no_checksum(tmp_path, capsys):
    path = tmp_path / "plain.zarr"
    arr = zarr.create_array(path, shape=(32, 32), dtype="float32", chunks=(16, 16),
                            compressors=[zarr.codecs.ZstdCodec()])
    arr[:] = 1.5
    assert main(["fsck", str(path)]) == 0
    assert "clean: 4 objects checked" in capsys.readouterr().out
    (path / "c/1/0").write_bytes((path / "c/1/0").read_bytes()[:-3])
    code, report = run_json(capsys, "fsck", str(path))
    assert code == 1 and [p["key"] for p in report["problems"]] == ["c/1/0"]


def test_ctrl_c_stops_fsck_cleanly_with_exit_130(volume):
    with RangeHTTPServer(volume.parent, latency=0.5) as server:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "napari_zshard.cli", "fsck", f"{server.url}/vol.zarr"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith("checking ")  # now reading shards
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err.strip() == "zshard: interrupted after 0 of 8 shards; 0 problem(s) found so far"


# -- errors ----------------------------------------------------------------------------------
def test_a_path_that_does_not_exist_is_one_clear_line_and_exit_2(tmp_path):
    result = zshard("fsck", str(tmp_path / "missing.zarr"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"zshard: error: {tmp_path / 'missing.zarr'} does not exist"
    assert "Traceback" not in result.stderr


def test_a_folder_without_zarr_metadata_and_bad_usage_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "no Zarr array or group here" in capsys.readouterr().err
    assert main(["fsck"]) == 2
    assert main(["info", str(tmp_path), "-o", "novalue"]) == 2
