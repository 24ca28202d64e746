"""Bad command-line input is refused at the boundary with a message naming the option and
what it expects — never a ZeroDivisionError or a TypeError from deep inside."""

from __future__ import annotations

import numpy as np
import pytest

from napari_zshard import open_array
from napari_zshard.cli import main
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_update import write_region
from napari_zshard.store import open_store
from napari_zshard.store.config import StorageConfigError


@pytest.fixture
def volume(tmp_path):
    store, meta = create_array(tmp_path / "v.zarr", shape=(16, 16, 16), dtype="uint8",
                               chunks=(8, 8, 8), shards=(16, 16, 16))
    write_region(store, meta, (slice(0, 16),) * 3, 3)
    return tmp_path / "v.zarr"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize(("flags", "expected"), [
    (["--chunks", "0,0,0"], "--chunks must be positive integers"),
    (["--shards=-8,8,8"], "--shards must be positive integers"),
    (["--chunks", "a,b,c"], "--chunks must be integers like 64,64,64"),
    (["--levels", "0"], "--levels: expected an integer ≥ 1"),
])
def test_convert_names_the_bad_shape(flags, expected, volume, tmp_path, capsys):
    code, text = run(capsys, "convert", str(volume), str(tmp_path / "o.zarr"), "-q", *flags)
    assert code == 2
    assert expected in text
    assert "Error:" not in text and "Traceback" not in text  # (no exception class names)


def test_reshard_workers_must_be_positive(volume, tmp_path, capsys):
    code, text = run(capsys, "reshard", str(volume), str(tmp_path / "o.zarr"), "--workers",
                     "0")
    assert code == 2 and "--workers: expected an integer ≥ 1" in text


@pytest.mark.parametrize(("option", "expected"), [
    ("block_size=abc", "storage option 'block_size' for http:// URLs expects an integer ≥ 0, "
                       "got 'abc'"),
    ("timeout=soon", "storage option 'timeout' for http:// URLs expects a number of seconds"),
    ("headers=[1]", "storage option 'headers' for http:// URLs expects a mapping of header"),
    ("blocksize=1024", "unknown storage option 'blocksize' for http:// URLs; it takes:"),
])
def test_info_over_http_names_the_bad_storage_option(option, expected, http_server, volume,
                                                     capsys):
    code, text = run(capsys, "info", f"{http_server.url}/v.zarr", "-o", option)
    assert code == 2
    assert expected in text
    assert "TypeError" not in text
    assert http_server.count() == 0  # refused before any request


def test_a_secret_option_of_the_wrong_type_is_named_without_its_value(capsys):
    with pytest.raises(StorageConfigError) as error:
        open_store("s3://bucket/x.zarr", {"secret": 12345678})
    assert "'secret'" in str(error.value) and "12345678" not in str(error.value)


def test_an_unknown_option_for_s3_and_a_local_path(volume):
    with pytest.raises(StorageConfigError, match="unknown storage option 'anonymous'"):
        open_store("s3://bucket/x.zarr", {"anonymous": True})
    with pytest.raises(StorageConfigError, match="a local path takes no storage options"):
        open_array(volume, storage_options={"anon": True})
    # what the transports take still passes
    open_store("s3://bucket/x.zarr", {"anon": True, "endpoint_url": "http://127.0.0.1:1",
                                       "client_kwargs": {"region_name": "x"}})
    open_store("https://example.org/x.zarr", {"headers": {"Authorization": "Bearer t"},
                                              "block_size": 0})
    assert (open_array(volume)[:] == np.full((16, 16, 16), 3)).all()
