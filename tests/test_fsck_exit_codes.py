"""``zshard fsck`` never says "clean" (exit 0) about what it could not check: skipped arrays
(codecs the engine does not implement, string dtypes) and unreadable objects (a folder where
a shard belongs) give exit 3; damage stays exit 1."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import zarr

from napari_zshard.cli import main
from napari_zshard.engine import EngineCache, open_array
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_update import write_region
from napari_zshard.errors import StoreError


def fsck_json(capsys, path) -> tuple[int, dict]:
    code = main(["fsck", str(path), "--json", "-q"])
    return code, json.loads(capsys.readouterr().out)


def test_an_array_with_codecs_the_engine_lacks_is_not_clean(tmp_path, capsys):
    from zarr.codecs.numcodecs import Zstd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(8, 8), chunks=(4, 4),
                          dtype="uint8", compressors=[Zstd(level=1)])[:] = 1
    assert main(["fsck", str(tmp_path / "a.zarr"), "-q"]) == 3
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "1 array(s) skipped" in out
    code, report = fsck_json(capsys, tmp_path / "a.zarr")
    assert code == 3 and report["unchecked"] == 1 and not report["damaged"]


def test_a_string_array_is_not_clean(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(4,), chunks=(2,),
                                dtype=str)
        arr[:] = np.array(["a", "bb", "ccc", "d"])
    code, report = fsck_json(capsys, tmp_path / "s.zarr")
    assert code == 3 and report["skipped"]


def test_a_folder_where_a_shard_belongs_is_not_clean(tmp_path, capsys):
    store, meta = create_array(tmp_path / "v.zarr", shape=(16, 16), dtype="uint8",
                               chunks=(8, 8), shards=(8, 16))
    write_region(store, meta, (slice(0, 16), slice(0, 16)), 5)
    (tmp_path / "v.zarr/c/0/0").unlink()
    (tmp_path / "v.zarr/c/0/0").mkdir()
    with pytest.raises(StoreError, match="folder"):
        open_array(tmp_path / "v.zarr", cache=EngineCache())[0]
    code, report = fsck_json(capsys, tmp_path / "v.zarr")
    assert code == 3
    assert [p["key"] for p in report["problems"]] == ["c/0/0"]
    assert not report["damaged"]


def test_damage_is_still_exit_1_and_clean_exit_0(tmp_path, capsys):
    store, meta = create_array(tmp_path / "v.zarr", shape=(16, 16), dtype="uint8",
                               chunks=(8, 8), shards=(8, 16))
    write_region(store, meta, (slice(0, 16), slice(0, 16)), 5)
    assert main(["fsck", str(tmp_path / "v.zarr"), "-q"]) == 0
    shutil.copy(tmp_path / "v.zarr/c/0/0", tmp_path / "v.zarr/c/1/0")
    data = bytearray((tmp_path / "v.zarr/c/1/0").read_bytes())
    data[3] ^= 0xFF
    (tmp_path / "v.zarr/c/1/0").write_bytes(bytes(data))
    assert main(["fsck", str(tmp_path / "v.zarr"), "-q"]) == 1


def test_fsck_help_documents_the_exit_codes():
    out = subprocess.run([sys.executable, "-m", "napari_zshard.cli", "fsck", "--help"],
                         capture_output=True, text=True, check=True).stdout
    flat = " ".join(out.split())
    for code in ("0 clean", "1 damage found", "2 usage error", "3 no damage found but "
                 "something could not be checked", "130 interrupted"):
        assert code in flat
