"""Dask arrays over the engine, as napari, notebooks and clusters compute them.

napari computes each block a view touches whole, with task fusion off: the default blocks are one
plane deep and a chunk-aligned tile wide, so showing one plane decodes only the inner chunks that
touch it. Notebook users ask for shard-aligned blocks. The same dask array computes with the
threaded scheduler, on a ``dask.distributed`` cluster of worker processes reading over HTTP, and
from inside a running asyncio loop (Jupyter).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os

import dask
import dask.array as da
import numpy as np
import pytest
from cluster_checks import tasks_by_worker_pid

import napari_zshard
from napari_zshard import EngineCache
from napari_zshard.engine.lazy import napari_blocks

SHAPE, SHARD, CHUNK = (6, 300, 520), (4, 128, 256), (2, 64, 64)
CHUNKS_PER_PLANE = math.ceil(300 / 64) * math.ceil(520 / 64)
NO_FUSION = {"optimization.fuse.active": False}  # how napari computes dask arrays


@pytest.fixture
def volume(tmp_path):
    """A sharded volume with partial edge shards, written by tensorstore; (path, numpy data)."""
    import tensorstore as ts

    data = np.random.default_rng(0).integers(0, 60000, size=SHAPE, dtype="uint16")
    data[:, 128:256, 256:512] = 0  # one shard column holds only fill value: never written
    metadata = {
        "shape": list(SHAPE), "data_type": "uint16", "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD)}},
        "chunk_key_encoding": {"name": "default"},
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": list(CHUNK),
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "zstd", "configuration": {"level": 1, "checksum": False}}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}],
            "index_location": "end"}}],
    }
    path = tmp_path / "vol.zarr"
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": metadata, "create": True, "delete_existing": True}).result()
    store[...].write(data).result()
    return path, data


def boundaries(chunks: tuple[tuple[int, ...], ...]) -> list[list[int]]:
    """Where blocks start along each axis."""
    return [list(itertools.accumulate((0, *c[:-1]))) for c in chunks]


def test_default_blocks_are_one_plane_deep_chunk_aligned_tiles(volume):
    path, data = volume
    arr = napari_zshard.open_array(path, cache=EngineCache())

    d = arr.to_dask()

    assert d.shape == SHAPE and d.dtype == np.uint16
    assert d.chunksize[0] == 1
    assert d.chunksize[1:] == (300, 520)  # a plane smaller than a canvas is one block
    assert d.chunks[0] == (1,) * SHAPE[0]
    for starts, c in zip(boundaries(d.chunks)[1:], CHUNK[1:], strict=True):
        assert all(s % c == 0 for s in starts)  # tiles never split an inner chunk
    assert np.array_equal(d.compute(), data)


@pytest.mark.parametrize(("shape", "chunks", "blocks"), [
    ((10, 4000, 3000), (1, 64, 64), (1, 1024, 1024)),     # canvas-sized tiles of a big plane
    ((10, 4000, 3000), (8, 100, 300), (1, 1000, 900)),    # ... never splitting an inner chunk
    ((10, 4000, 3000), (8, 2048, 2048), (1, 2048, 2048)),  # a chunk bigger than a canvas
    ((2, 3, 4000, 3000), (1, 1, 64, 64), (1, 1, 1024, 1024)),  # one plane deep on every lead axis
])
def test_napari_blocks_are_about_a_canvas_and_chunk_aligned(shape, chunks, blocks):
    assert napari_blocks(shape, chunks) == blocks


def test_showing_one_plane_decodes_only_the_chunks_that_touch_it(volume):
    path, data = volume
    arr = napari_zshard.open_array(path, cache=EngineCache())
    d = arr.to_dask()

    with dask.config.set(NO_FUSION):
        plane = d[3].compute()

    assert np.array_equal(plane, data[3])
    # Plane 3 lies in the second row of 2-deep inner chunks: one chunk per (y, x) position,
    # including those of the missing shard column (read as fill value, not decoded).
    missing = (128 // 64) * (256 // 64)
    assert arr.counters["chunks_decoded"] == CHUNKS_PER_PLANE - missing
    assert arr.counters["decoded_bytes"] == (CHUNKS_PER_PLANE - missing) * 2 * 64 * 64 * 2

    # The next plane shares those chunks: nothing more to decode.
    with dask.config.set(NO_FUSION):
        assert np.array_equal(d[2].compute(), data[2])
    assert arr.counters["chunks_decoded"] == CHUNKS_PER_PLANE - missing


def test_a_tile_of_a_plane_reads_only_the_chunks_under_it(volume):
    path, data = volume
    arr = napari_zshard.open_array(path, cache=EngineCache(), readahead=False)
    d = arr.to_dask()

    with dask.config.set(NO_FUSION):
        tile = d[1, 0:100, 0:100].compute()

    assert np.array_equal(tile, data[1, 0:100, 0:100])
    # The slice is read as a region, not cut from its whole 300x520 block: the 2 x 2 inner
    # chunks under the 100x100 tile, nothing else.
    assert arr.counters["chunks_decoded"] == 2 * 2


@pytest.mark.parametrize("index", [
    (3,), (slice(None), 7), (2, slice(10, 200), slice(-90, None)), (Ellipsis, 5),
    (-1, 299, -1), (slice(1, 4),), (slice(5, 2),)])
def test_a_rectangular_slice_is_one_task_reading_that_region(volume, index):
    """napari slices the level it shows and the thumbnail level on every step: each slice is
    one task (not the blocks it touches, then a cut), whatever the blocks."""
    path, data = volume
    for blocks in ("napari", "shards", (1, 7, 13)):
        d = napari_zshard.open_array(path, cache=EngineCache()).to_dask(blocks)

        part = d[index]

        assert len(part.__dask_graph__()) == 1
        assert part.shape == data[index].shape
        with dask.config.set(NO_FUSION):
            assert np.array_equal(part.compute(), data[index])
        assert np.array_equal(np.asarray(part), data[index])
        # and it is an ordinary dask array from there on
        assert np.array_equal((part.astype("int64") * 2).sum().compute(),
                              data[index].astype("int64").sum() * 2)


@pytest.mark.parametrize("index", [
    (slice(None, None, 2),), (1, slice(None, None, -3)), ([0, 5],), (None, 2),
    (np.arange(6) % 2 == 0,)])
def test_other_selections_slice_block_wise(volume, index):
    path, data = volume
    d = napari_zshard.open_array(path, cache=EngineCache()).to_dask()

    part = d[index]

    assert np.array_equal(part.compute(), data[index])


def test_a_slice_too_big_for_one_task_is_sliced_block_wise(volume, monkeypatch):
    from napari_zshard.engine import lazy

    path, data = volume
    d = napari_zshard.open_array(path, cache=EngineCache()).to_dask()
    monkeypatch.setattr(lazy, "ONE_TASK_SLICE_BYTES", 2 * 300 * 520 * 2)

    small, big = d[1:3], d[1:4]

    assert len(small.__dask_graph__()) == 1
    assert big.numblocks == (3, 1, 1) and len(big.__dask_graph__()) > 1
    assert np.array_equal(small.compute(), data[1:3])
    assert np.array_equal(big.compute(), data[1:4])


def test_out_of_bounds_indexes_raise_as_dask_does(volume):
    path, _ = volume
    d = napari_zshard.open_array(path, cache=EngineCache()).to_dask()

    with pytest.raises(IndexError):
        d[6]
    with pytest.raises(IndexError):
        d[0, 0, 0, 0]


def test_shard_blocks_for_notebooks(volume):
    path, data = volume
    arr = napari_zshard.open_array(path, cache=EngineCache())

    d = arr.to_dask("shards")

    assert d.chunksize == SHARD
    for starts, s in zip(boundaries(d.chunks), SHARD, strict=True):
        assert all(start % s == 0 for start in starts)
    assert d.numblocks == (2, 3, 3)
    assert np.array_equal(d.compute(), data)
    assert np.array_equal(d[::2, 100:200, -50:].compute(), data[::2, 100:200, -50:])
    assert np.array_equal(d[5, ::-7, 3].compute(), data[5, ::-7, 3])


def test_the_threaded_scheduler_computes_reductions(volume):
    path, data = volume
    arr = napari_zshard.open_array(path, cache=EngineCache())
    d = arr.to_dask()

    total = d.astype("uint64").sum(axis=0).compute(scheduler="threads", num_workers=4)
    top = da.max(d[:, :150], axis=(1, 2)).compute(scheduler="threads")

    assert np.array_equal(total, data.astype("uint64").sum(axis=0))
    assert np.array_equal(top, data[:, :150].max(axis=(1, 2)))


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_dask_array_of_a_fallback_array(tmp_path):
    import zarr
    from zarr.codecs.numcodecs import Delta

    data = np.arange(4 * 30 * 40, dtype="int32").reshape(4, 30, 40)
    z = zarr.create_array(store=str(tmp_path / "odd.zarr"), shape=data.shape, chunks=(1, 8, 8),
                          shards=(2, 16, 16), dtype="int32", filters=[Delta(dtype="int32")],
                          fill_value=0)
    z[...] = data
    arr = napari_zshard.open_array(tmp_path / "odd.zarr", cache=EngineCache())

    assert arr.uses_fallback
    with dask.config.set(NO_FUSION):
        assert np.array_equal(arr.to_dask()[2].compute(), data[2])


@pytest.mark.slow
def test_a_local_cluster_of_worker_processes_reads_over_http(volume, http_server):
    from distributed import Client, LocalCluster

    _, data = volume
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache())
    d = arr.to_dask("shards")

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with tasks_by_worker_pid(client) as ran:
            total = client.compute(d.astype("uint64").sum(axis=(1, 2))).result()
        with tasks_by_worker_pid(client) as ran_plane:
            plane = client.compute(arr.to_dask()[4]).result()

    assert np.array_equal(total, data.astype("uint64").sum(axis=(1, 2)))
    assert np.array_equal(plane, data[4])
    # the reads ran in both worker processes (one task per shard block at least), none here
    assert len(ran) == 2 and os.getpid() not in ran
    assert sum(ran.values()) >= d.npartitions
    assert ran_plane and os.getpid() not in ran_plane
    assert http_server.count("/c/") > 0


@pytest.mark.parametrize("transport", ["local", "http"])
def test_reads_work_inside_a_running_asyncio_loop_like_jupyter(transport, volume, request):
    path, data = volume
    url = str(path)
    if transport == "http":
        url = f"{request.getfixturevalue('http_server').url}/vol.zarr"
    opened_outside = napari_zshard.open_array(url, cache=EngineCache())

    async def notebook_cell():
        # A notebook cell runs inside the kernel's loop and calls the synchronous API.
        assert asyncio.get_running_loop().is_running()
        opened_inside = napari_zshard.open_array(url, cache=EngineCache())
        return (opened_outside[2, 10:200], opened_inside[5],
                opened_inside.to_dask()[1].compute(), opened_outside.to_dask("shards").sum()
                .compute())

    tile, plane, dask_plane, total = asyncio.run(notebook_cell())

    assert np.array_equal(tile, data[2, 10:200])
    assert np.array_equal(plane, data[5])
    assert np.array_equal(dask_plane, data[1])
    assert total == data.sum()


@pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
def test_a_fallback_array_reads_inside_a_running_asyncio_loop(tmp_path):
    import zarr
    from zarr.codecs.numcodecs import Delta

    data = np.arange(2 * 16 * 16, dtype="int32").reshape(2, 16, 16)
    z = zarr.create_array(store=str(tmp_path / "odd.zarr"), shape=data.shape, chunks=(1, 8, 8),
                          shards=(2, 16, 16), dtype="int32", filters=[Delta(dtype="int32")],
                          fill_value=0)
    z[...] = data

    async def notebook_cell():
        arr = napari_zshard.open_array(tmp_path / "odd.zarr", cache=EngineCache())
        return arr.uses_fallback, arr[1], arr.to_dask()[0].compute()

    uses_fallback, plane, dask_plane = asyncio.run(notebook_cell())

    assert uses_fallback
    assert np.array_equal(plane, data[1]) and np.array_equal(dask_plane, data[0])


def test_np_asarray_of_a_slice_reads_it_without_a_scheduler_pass_unless_one_is_configured(
        volume):
    """napari calls ``np.asarray(level[slices])`` twice per step: with no scheduler configured
    the one task runs directly; a configured scheduler (a distributed client sets one) gets
    the work as usual."""
    from dask.callbacks import Callback

    path, data = volume
    d = napari_zshard.open_array(path, cache=EngineCache()).to_dask()
    computes = []

    class Count(Callback):
        def _start(self, dsk):
            computes.append(len(dsk))

    with Count(), dask.config.set(NO_FUSION):
        direct = np.asarray(d[3, 10:200])
        as_float = np.asarray(d[4], dtype="float32")
    assert computes == []
    assert np.array_equal(direct, data[3, 10:200])
    assert as_float.dtype == np.float32 and np.array_equal(as_float, data[4])

    with Count(), dask.config.set({**NO_FUSION, "scheduler": "threads"}):
        scheduled = np.asarray(d[3, 10:200])
    assert len(computes) == 1  # one compute, through the scheduler
    assert np.array_equal(scheduled, data[3, 10:200])
