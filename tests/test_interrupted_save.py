"""A save to an object store that dies (SIGKILL) leaves no level that opens: every level's
``zarr.json`` is written when the whole save is done, the root's last — so a level of an
interrupted save is not an array that reads as fill value where shards were never written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import napari_zshard as nz
from napari_zshard.errors import MetadataError
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.testing.s3_server import s3_filesystem


def shard_objects(fs, prefix: str) -> list[str]:
    return [k for k in fs.find(prefix) if "/c/" in k]


def kill_convert_midway(src: str, dst: str, endpoint: str, fs, *extra: str) -> None:
    """Run ``zshard convert SRC DST`` in a process and SIGKILL it once a few shards of level
    0 are on S3."""
    job = subprocess.Popen(
        [sys.executable, "-m", "napari_zshard.cli", "convert", src, dst, "-q",
         "--chunks", "8,32,32", "--shards", "8,32,32", "--dst-option",
         f"endpoint_url={endpoint}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    prefix = dst.split("://", 1)[1]
    while (len(shard_objects(fs, f"{prefix}/0")) < 3 and job.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    _, err = job.communicate()
    assert job.returncode == -signal.SIGKILL, f"the convert ended before it was killed: {err}"


@pytest.fixture
def slow_source(tmp_path, http_server):
    """A 64x128x128 image served over HTTP with 20 ms per request: a convert of it is still
    running when it is killed."""
    data = np.random.default_rng(5).integers(0, 1000, (64, 128, 128), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "src.zarr"), data=data, chunks=(8, 32, 32))
    http_server.latency = 0.02
    return f"{http_server.url}/src.zarr", data


def test_a_level_of_a_killed_save_to_s3_does_not_open(slow_source, s3_bucket, s3_endpoint,
                                                       s3_options):
    src, _ = slow_source
    fs = s3_filesystem(s3_endpoint)
    dst = f"{s3_bucket}/dst.zarr"
    kill_convert_midway(src, dst, s3_endpoint, fs)
    prefix = dst.split("://", 1)[1]
    written = shard_objects(fs, f"{prefix}/0")
    assert 3 <= len(written) < 64, written  # killed midway: shards there, not all of them
    with pytest.raises(MetadataError, match="no Zarr array"):
        nz.open_array(dst, storage_options=s3_options)
    with pytest.raises(MetadataError, match="did not finish"):
        nz.open_array(f"{dst}/0", storage_options=s3_options)
    assert not fs.exists(f"{prefix}/0/zarr.json")


def test_a_level_of_a_killed_overwrite_does_not_open_as_the_old_array(
        slow_source, tmp_path, s3_bucket, s3_endpoint, s3_options):
    """Overwriting in place: the old store's level metadata goes first, so a level of the
    killed overwrite is not the old array over a mix of old and new shards."""
    src, _ = slow_source
    fs = s3_filesystem(s3_endpoint)
    dst = f"{s3_bucket}/dst.zarr"
    save_image(dst, np.ones((64, 128, 128), np.uint16), ImageSpec(name="old"),
               options=WriteOptions(chunks=(8, 32, 32), shards=(8, 32, 32), levels=2),
               storage_options=s3_options)
    assert nz.open_array(f"{dst}/0", storage_options=s3_options)[0, 0, 0] == 1
    prefix = dst.split("://", 1)[1]
    for key in shard_objects(fs, f"{prefix}/0"):
        fs.rm(key)  # so that "a few new shards are in" can be seen
    kill_convert_midway(src, dst, s3_endpoint, fs, "--overwrite")
    for url in (dst, f"{dst}/0", f"{dst}/1"):
        with pytest.raises(MetadataError, match=r"no Zarr array|did not finish"):
            nz.open_array(url, storage_options=s3_options)


def test_a_finished_save_opens_at_every_level(tmp_path, s3_bucket, s3_options):
    data = np.arange(32 * 64 * 64, dtype=np.uint16).reshape(32, 64, 64)
    dst = f"{s3_bucket}/ok.zarr"
    mask = ((data % 7) == 0).astype(np.uint8)
    save_image(dst, data, ImageSpec(name="ok"), labels={"mask": (mask, ImageSpec(kind="labels"))},
               options=WriteOptions(chunks=(8, 32, 32), shards=(16, 32, 64), levels=3),
               storage_options=s3_options)
    node = nz.open_image(dst, storage_options=s3_options)
    assert len(node.arrays) == 3
    np.testing.assert_array_equal(node.arrays[0][:], data)
    assert node.arrays[2].shape == (8, 16, 16)
    np.testing.assert_array_equal(node.labels[0].arrays[0][:], (data % 7) == 0)
