"""A colleague rewrites the store while this process has it open, or this process writes it.

The engine's caches are process-wide, so a new open of the same URL finds what an earlier one
cached. Every cached shard index and chunk is only trusted for the object it was read from:
a new open (and ``refresh()``) reads each shard's index again once, and drops what it held of
the shards whose identity changed (inode-size-mtime locally, the ETag remotely). Writes made
by this process drop what they replace in every open array at once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import napari_zshard as nz
from napari_zshard import EngineCache
from napari_zshard.engine.shard_update import write_region

SHAPE, SHARD, CHUNK = (64, 64, 64), (64, 64, 64), (16, 16, 16)


def chunk_numbered(shape=SHAPE, chunk=CHUNK) -> np.ndarray:
    """Chunk k (C order) holds k + 1 everywhere: a chunk read from the wrong place shows."""
    grid = [n // c for n, c in zip(shape, chunk, strict=True)]
    k = np.arange(int(np.prod(grid)), dtype="uint32").reshape(grid) + 1
    for axis, c in enumerate(chunk):
        k = np.repeat(k, c, axis=axis)
    return k


def write_with_zarr_python(path, data, shards=SHARD, chunks=CHUNK) -> None:
    import zarr

    z = zarr.create_array(str(path), shape=data.shape, shards=shards, chunks=chunks,
                          dtype=data.dtype, fill_value=0, overwrite=True)
    z[...] = data


def zero_first_chunk_in_another_process(url: str, **storage_options) -> None:
    """What a colleague does: zarr-python rewrites the shard; the chunk that became fill value
    is dropped, and every chunk after it moves."""
    code = textwrap.dedent(f"""
        import zarr
        z = zarr.open_array({url!r}, mode="r+", storage_options={storage_options!r} or None)
        z[0:16, 0:16, 0:16] = 0
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def expected_after_zeroing(data: np.ndarray) -> np.ndarray:
    new = data.copy()
    new[0:16, 0:16, 0:16] = 0
    return new


def test_a_new_open_reads_the_shard_another_process_rewrote(tmp_path):
    data = chunk_numbered()
    path = tmp_path / "vol.zarr"
    write_with_zarr_python(path, data)
    assert np.array_equal(nz.open_array(path)[0], data[0])  # cached process-wide

    zero_first_chunk_in_another_process(str(path))

    plane = nz.open_array(path)[20]
    # before: the old offsets landed on other, valid chunks: 4096 of 4096 voxels wrong
    assert np.array_equal(plane, expected_after_zeroing(data)[20])
    assert np.array_equal(nz.open_array(path)[0], expected_after_zeroing(data)[0])


def test_over_http_a_new_open_costs_one_index_request_per_shard_and_keeps_unchanged_chunks(
        tmp_path, http_server):
    data = chunk_numbered()
    write_with_zarr_python(tmp_path / "vol.zarr", data)
    url = f"{http_server.url}/vol.zarr"
    cache = EngineCache()
    assert np.array_equal(nz.open_array(url, cache=cache)[20], data[20])
    http_server.reset_log()

    # Unchanged: the new open checks the shard (one index request) and re-uses the chunks.
    again = nz.open_array(url, cache=cache)
    assert np.array_equal(again[20], data[20])
    assert http_server.count("/c/") == 1
    assert again.counters["index_requests"] == 1 and again.counters["data_requests"] == 0
    http_server.reset_log()
    assert np.array_equal(again[21], data[21])  # checked once per open, not per read
    assert http_server.count() == 0

    zero_first_chunk_in_another_process(str(tmp_path / "vol.zarr"))
    http_server.reset_log()

    fresh = nz.open_array(url, cache=cache)
    assert np.array_equal(fresh[20], expected_after_zeroing(data)[20])
    assert fresh.counters["index_requests"] == 1 and fresh.counters["data_requests"] == 1


def test_on_s3_the_etag_tells_a_rewritten_shard(tmp_path, s3_bucket, s3_options, s3_endpoint,
                                                put_on_s3):
    data = chunk_numbered()
    write_with_zarr_python(tmp_path / "vol.zarr", data)
    url = f"{s3_bucket}/vol.zarr"
    put_on_s3(tmp_path / "vol.zarr", url, s3_endpoint)
    assert np.array_equal(nz.open_array(url, storage_options=s3_options)[0], data[0])

    zero_first_chunk_in_another_process(url, client_kwargs={"endpoint_url": s3_endpoint})

    plane = nz.open_array(url, storage_options=s3_options)[20]
    assert np.array_equal(plane, expected_after_zeroing(data)[20])


def test_refresh_reads_again_only_the_shards_that_changed(tmp_path, http_server):
    shape, shards = (16, 64, 64), (16, 32, 32)
    data = chunk_numbered(shape)
    write_with_zarr_python(tmp_path / "vol.zarr", data, shards=shards)
    arr = nz.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache())
    assert np.array_equal(arr[3], data[3])

    zero_first_chunk_in_another_process(str(tmp_path / "vol.zarr"))  # shard c/0/0/0 only
    http_server.reset_log()
    assert np.array_equal(arr[3], data[3])  # an open array trusts what it checked...
    assert http_server.count() == 0

    arr.refresh()  # ...until refreshed
    assert np.array_equal(arr[3], expected_after_zeroing(data)[3])
    assert http_server.count("/c/") == 4 + 1  # the 4 shards' indexes; data of c/0/0/0 only
    assert http_server.count("/c/0/0/0") == 2


def test_this_processs_writes_reach_every_open_array_at_once(tmp_path):
    data = chunk_numbered()
    path = tmp_path / "vol.zarr"
    write_with_zarr_python(path, data)
    default, own = nz.open_array(path), nz.open_array(path, cache=EngineCache())
    for arr in (default, own):
        assert np.array_equal(arr[5], data[5])

    write_region(default.store, default.meta, (slice(0, 8), slice(0, 40), slice(0, 40)), 7)

    new = data.copy()
    new[0:8, 0:40, 0:40] = 7
    for arr in (default, own):
        assert np.array_equal(arr[5], new[5])
        assert np.array_equal(arr[30], new[30])


def test_dask_slices_after_a_change_get_new_task_names_so_napari_does_not_serve_old_blocks(
        tmp_path):
    """napari caches computed tasks by name (dask's opportunistic cache)."""
    from dask.cache import Cache

    data = chunk_numbered()
    path = tmp_path / "vol.zarr"
    write_with_zarr_python(path, data)
    arr = nz.open_array(path)
    lazy = arr.to_dask()
    with Cache(64 * 2**20):
        before = lazy[5, :32]
        assert np.array_equal(before.compute(), data[5, :32])
        write_region(arr.store, arr.meta, (slice(0, 8), slice(0, 40), slice(0, 40)), 9)
        after = lazy[5, :32]
        assert after.name != before.name
        expected = data[5, :32].copy()
        expected[:, :40] = 9
        assert np.array_equal(after.compute(), expected)


@pytest.mark.parametrize("layout", ["sharded", "unsharded"])
def test_a_store_rewritten_in_place_is_seen_by_a_new_open(tmp_path, layout):
    """Whole rewrite, same shape and codecs: the layout tokens are the same, the objects are not."""
    import zarr

    path = tmp_path / "vol.zarr"
    kwargs = {"shards": SHARD} if layout == "sharded" else {}
    first = zarr.create_array(str(path), shape=SHAPE, chunks=CHUNK, dtype="uint32",
                              fill_value=0, **kwargs)
    first[...] = chunk_numbered()
    assert np.array_equal(nz.open_array(path)[33], chunk_numbered()[33])

    second = zarr.open_array(str(path), mode="r+")
    second[...] = chunk_numbered()[::-1]

    assert np.array_equal(nz.open_array(path)[33], chunk_numbered()[::-1][33])


def middle_plane(level) -> np.ndarray:
    return np.asarray(level[level.shape[0] // 2])


def test_a_viewer_picks_up_a_colleagues_commit_with_refresh_layers(tmp_path, npe2pm):
    """The layers napari holds: after ``refresh_layers`` every level shows the new store."""
    from napari.components import ViewerModel

    from napari_zshard.sample import make_sample

    path = make_sample(tmp_path / "cells.zarr", shape=(16, 64, 64))
    with npe2pm.tmp_plugin(package="napari-zshard"):
        viewer = ViewerModel()
        viewer.open(str(path), plugin="napari-zshard")
    labels = viewer.layers[-1]
    before = [middle_plane(level) for level in labels.data]

    code = textwrap.dedent(f"""
        import zarr
        group = zarr.open_group({str(path / "labels" / "cells")!r}, mode="r+")
        for name in sorted(group.array_keys()):
            group[name][...] = 0
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert all(np.array_equal(middle_plane(level), b)
               for level, b in zip(labels.data, before, strict=True))  # trusted until refreshed

    assert nz.refresh_layers(viewer) == len(viewer.layers)
    assert any(b.any() for b in before)
    assert not any(middle_plane(level).any() for level in labels.data)
