"""Resharding refuses what it cannot do, with a message that says what to change, and a
corrupt source shard stops the job or is skipped — never copied as garbage."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import zarr

from napari_zshard.cli import main
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_writer import write_array_data
from napari_zshard.reshard import (
    JOURNAL,
    CorruptSourceError,
    DestinationError,
    LayoutError,
    SourceError,
    plan_reshard,
    reshard,
)


@pytest.fixture
def volume(tmp_path):
    data = (np.arange(32 * 64 * 64, dtype=np.uint16).reshape(32, 64, 64) % 1000) + 1
    store, meta = create_array(tmp_path / "src.zarr", shape=data.shape, dtype=data.dtype,
                               chunks=(16, 16, 16), shards=(16, 32, 32))
    list(write_array_data(store, meta, data))
    return tmp_path / "src.zarr", data


@pytest.mark.parametrize("dst_name", ["src.zarr", "src.zarr/inside.zarr", "."])
def test_the_destination_may_not_be_the_source_inside_it_or_around_it(volume, tmp_path,
                                                                     dst_name, capsys):
    src, _ = volume
    assert main(["reshard", str(src), str(tmp_path / dst_name), "--chunks", "16,16,16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zshard: error:") and "source" in err and "Traceback" not in err
    assert sorted(p.name for p in src.iterdir()) == ["c", "zarr.json"]  # untouched


def test_a_shard_shape_must_hold_whole_chunks(volume, tmp_path):
    src, _ = volume
    with pytest.raises(LayoutError, match=r"shard shape 32x48x48 is not a multiple of the "
                                          r"chunk shape 16x32x32 \(axis 1: 48"):
        plan_reshard(src, tmp_path / "d.zarr", chunks=(16, 32, 32), shards=(32, 48, 48))


def test_shapes_need_one_value_per_axis(volume, tmp_path, capsys):
    src, _ = volume
    with pytest.raises(LayoutError, match=r"chunk shape 32x32 has 2 values but the array has "
                                          r"3 axes \(shape 32x64x64\)"):
        plan_reshard(src, tmp_path / "d.zarr", chunks=(32, 32), shards=(32, 64, 64))
    assert main(["reshard", str(src), str(tmp_path / "d.zarr"), "--shards", "64,64"]) == 2
    assert "shard shape 64x64 has 2 values" in capsys.readouterr().err
    assert not (tmp_path / "d.zarr").exists()


@pytest.mark.parametrize(("levels", "message"), [
    (["16,16,16"], "level 0: give CHUNKS/SHARDS (like 32,32,32/512,512,512) or '-'"),
    (["8,8/16,16,16"], "chunk shape 8x8 has 2 values"),
    (["16,a,16/32,32,32"], "level 0 chunk shape must be integers"),
    (["-", "8,8,8/16,16,16"], "2 per-level layouts given, but"),
])
def test_per_level_layouts_on_the_command_line_say_which_level_is_wrong(volume, tmp_path,
                                                                        capsys, levels,
                                                                        message):
    src, _ = volume
    assert main(["reshard", str(src), str(tmp_path / "d.zarr"), "--levels", *levels]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "d.zarr").exists()
    # a valid one: this single-level array gets it
    assert main(["reshard", str(src), str(tmp_path / "d.zarr"), "--levels", "8,16,16/16,32,64",
                 "-q"]) == 0
    assert zarr.open_array(str(tmp_path / "d.zarr"), mode="r").shards == (16, 32, 64)


def test_an_existing_destination_with_another_layout_is_refused(volume, tmp_path):
    src, data = volume
    dst = tmp_path / "d.zarr"
    reshard(src, dst, chunks=(16, 32, 32), shards=(32, 64, 64))
    # the same plan again: nothing to do, and it says so
    again = plan_reshard(src, dst, chunks=(16, 32, 32), shards=(32, 64, 64), measure=False)
    assert again.state.kind == "complete" and "already complete" in again.table()
    with pytest.raises(DestinationError, match=r"already holds a Zarr store with a different "
                                               r"layout .*chunks 16x32x32 in shards 32x64x64.*"
                                               r"chunks 8x32x32 in shards 32x64x64"):
        plan_reshard(src, dst, chunks=(8, 32, 32), shards=(32, 64, 64))
    # an unfinished one: its journal records the layout it was started with
    unfinished = tmp_path / "u.zarr"
    steps = plan_reshard(src, unfinished, chunks=(16, 32, 32), shards=(16, 32, 32)).run()
    next(steps), next(steps)
    steps.close()
    with pytest.raises(DestinationError, match="unfinished reshard with another layout"):
        plan_reshard(src, unfinished, chunks=(16, 16, 16), shards=(16, 32, 32))
    np.testing.assert_array_equal(zarr.open_array(str(dst))[:], data)


def test_a_destination_holding_other_files_is_refused(volume, tmp_path):
    src, _ = volume
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(DestinationError, match="holds files that are not a reshard"):
        plan_reshard(src, tmp_path / "notes", chunks=(16, 32, 32))


def test_an_unreachable_source_is_reported(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    url = f"http://127.0.0.1:{port}/vol.zarr"
    with pytest.raises(SourceError, match=f"cannot read the source {url}"):
        plan_reshard(url, tmp_path / "d.zarr")
    assert main(["reshard", url, str(tmp_path / "d.zarr")]) == 2
    assert "cannot read the source" in capsys.readouterr().err
    with pytest.raises(SourceError, match="holds no Zarr array or OME-Zarr image"):
        plan_reshard(tmp_path / "nothing.zarr", tmp_path / "d.zarr")


def corrupt_one_chunk(src) -> str:
    """Flip a byte inside the first chunk of shard c/1/0/1 (its crc32c no longer matches)."""
    path = src / "c" / "1" / "0" / "1"
    raw = bytearray(path.read_bytes())
    raw[20] ^= 0xFF
    path.write_bytes(bytes(raw))
    return "c/1/0/1"


def test_a_corrupt_source_shard_stops_the_job_and_names_the_shard(volume, tmp_path, capsys):
    src, _ = volume
    key = corrupt_one_chunk(src)
    dst = tmp_path / "d.zarr"
    plan = plan_reshard(src, dst, chunks=(16, 16, 16), shards=(16, 32, 32))
    with pytest.raises(CorruptSourceError) as err:
        list(plan.run(workers=1))
    assert err.value.shard_key == key and f"src.zarr/{key}" in str(err.value)
    assert "checksum" in str(err.value)
    assert not (dst / "zarr.json").exists() and (dst / JOURNAL).exists()  # not complete
    assert not (dst / key).exists()  # nothing written from it
    assert main(["reshard", str(src), str(dst), "--chunks", "16,16,16", "--shards",
                 "16,32,32", "-q"]) == 2
    assert f"src.zarr/{key}" in capsys.readouterr().err


def test_a_corrupt_source_shard_can_be_skipped(volume, tmp_path, capsys):
    src, data = volume
    key = corrupt_one_chunk(src)
    dst = tmp_path / "d.zarr"
    assert main(["reshard", str(src), str(dst), "--chunks", "16,16,16", "--shards",
                 "16,32,32", "--on-corrupt", "skip", "--verify", "full", "-q"]) == 1
    out = capsys.readouterr().out
    assert "1 skipped (corrupt source)" in out and key in out
    assert not (dst / key).exists()  # reads as fill value, no garbage
    result = zarr.open_array(str(dst))[:]
    assert (result[16:32, 0:32, 32:64] == 0).all()
    expected = data.copy()
    expected[16:32, 0:32, 32:64] = 0
    np.testing.assert_array_equal(result, expected)
    # the journal stays: once the source is repaired, a rerun writes the missing shard
    assert (dst / JOURNAL).exists()
    plan = json.loads((dst / JOURNAL / "plan.json").read_text())
    assert list(plan["arrays"]) == [""]
