"""Writing regions into shared shards with ``write_region`` — first one writer, then several
people at once: 16 processes writing interleaved regions of the same shards, locally and on S3
(moto), and 4 processes sharing one shard above s3fs's multipart threshold. Every voxel must end
up with its writer's value: zero lost updates."""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
import traceback
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from napari_zshard.engine import open_array, read_array_meta
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_index import decode_index
from napari_zshard.engine.shard_update import split_shard, write_region
from napari_zshard.errors import CorruptShardError
from napari_zshard.store import open_store

Region = tuple[slice, ...]


def values_for(writer: int, region: Region, dtype) -> np.ndarray:
    """What ``writer`` writes into ``region``: non-zero noise, reproducible anywhere."""
    rng = np.random.default_rng([writer, *(s.start for s in region)])
    shape = tuple(s.stop - s.start for s in region)
    return rng.integers(1, np.iinfo(dtype).max, size=shape, dtype=dtype)


# -- one writer ---------------------------------------------------------------------------------
@pytest.fixture(params=["local", "memory", "s3"])
def new_array(request, tmp_path):
    """Make a 48³ uint16 array (chunks 8³, shards 16³) on each kind of store."""
    if request.param == "local":
        url, options = str(tmp_path / "labels.zarr"), None
    elif request.param == "memory":
        url, options = f"memory://labels-{uuid.uuid4().hex}", None
    else:
        url = f"{request.getfixturevalue('s3_bucket')}/labels.zarr"
        options = request.getfixturevalue("s3_options")

    def make(**kwargs):
        layout = {"shape": (48, 48, 48), "dtype": "uint16", "chunks": (8, 8, 8),
                  "shards": (16, 16, 16), **kwargs}
        return create_array(url, storage_options=options, **layout)

    return make


def test_regions_merge_into_the_shards_they_touch_and_read_back_everywhere(new_array):
    store, meta = new_array()
    expected = np.zeros(meta.shape, dtype=np.uint16)
    brush = (slice(5, 21), slice(14, 35), slice(0, 48))  # partial shards and whole chunks
    bulk = (slice(16, 32), slice(0, 48), slice(16, 48))  # whole shards only

    for i, region in enumerate([bulk, brush, (slice(20, 21), slice(3, 4), slice(7, 40))]):
        write_region(store, meta, region, values_for(i, region, meta.dtype))
        expected[region] = values_for(i, region, meta.dtype)

    assert np.array_equal(np.asarray(open_array(store)[...]), expected)


def test_erasing_a_region_back_to_the_fill_value_deletes_shards_left_empty(new_array):
    store, meta = new_array()
    write_region(store, meta, (slice(0, 4), slice(0, 4), slice(0, 40)), 7)

    write_region(store, meta, (slice(0, 4), slice(0, 4), slice(0, 20)), 0)

    assert store.read(meta.object_key((0, 0, 0))) is None
    assert store.read(meta.object_key((0, 0, 1))) is not None
    assert np.asarray(open_array(store)[0:4, 0:4, 20:40]).min() == 7


def test_untouched_inner_chunks_are_copied_byte_for_byte_in_c_order(tmp_path):
    store, meta = create_array(tmp_path / "img.zarr", shape=(16, 16, 16), dtype="uint16",
                               chunks=(8, 8, 8), shards=(16, 16, 16))
    write_region(store, meta, (slice(0, 16),) * 3, values_for(0, (slice(0, 16),) * 3, "uint16"))
    before = [bytes(c) for c in split_shard(store.read("c/0/0/0"), meta, key="c/0/0/0",
                                            where=store.url)]

    write_region(store, meta, (slice(1, 2), slice(1, 2), slice(9, 10)), 1)  # chunk (0, 0, 1)

    after = store.read("c/0/0/0")
    chunks = split_shard(after, meta, key="c/0/0/0", where=store.url)
    assert [bytes(c) for i, c in enumerate(chunks) if i != 1] == before[:1] + before[2:]
    assert bytes(chunks[1]) != before[1]
    size = meta.sharding.index_nbytes(meta.grid_shape)
    index = decode_index(after[-size:], spec=meta.sharding, n_chunks=8, key="c/0/0/0",
                         where=store.url, object_size=len(after))
    offsets = index.entries[:, 0].tolist()
    assert offsets == sorted(offsets)  # stored in C order


def test_a_corrupt_shard_is_reported_and_left_as_it_was(tmp_path):
    store, meta = create_array(tmp_path / "img.zarr", shape=(16, 16), dtype="uint16",
                               chunks=(8, 8), shards=(16, 16))
    write_region(store, meta, (slice(0, 16), slice(0, 16)), 3)
    good = store.read("c/0/0")
    flipped = bytearray(good)
    flipped[10] ^= 0xFF  # inside the first inner chunk: its crc32c no longer matches

    for damaged in (b"not a shard at all", bytes(flipped)):
        store.write("c/0/0", damaged)
        with pytest.raises(CorruptShardError, match="c/0/0"):
            write_region(store, meta, (slice(0, 2), slice(0, 2)), 9)
        assert store.read("c/0/0") == damaged


def test_values_that_do_not_fit_the_arrays_dtype_are_refused(tmp_path):
    store, meta = create_array(tmp_path / "img.zarr", shape=(8, 8), dtype="uint8",
                               chunks=(4, 4), shards=(8, 8))

    with pytest.raises(TypeError, match="uint8"):
        write_region(store, meta, (slice(0, 2), slice(0, 2)), np.full((2, 2), 300))
    with pytest.raises(TypeError, match="float64"):
        write_region(store, meta, (slice(0, 2), slice(0, 2)), np.full((2, 2), 1.5))
    write_region(store, meta, (slice(0, 2), slice(0, 2)), np.full((2, 2), 200))  # int64, fits
    assert np.asarray(open_array(store)[0:2, 0:2]).tolist() == [[200, 200], [200, 200]]


# -- many writers at once -------------------------------------------------------------------
WRITERS = 16
SMALL = {"shape": (64, 64, 64), "dtype": "uint16", "chunks": (16, 16, 16), "shards": (32, 32, 32)}


def small_plan(writer: int) -> list[Region]:
    """Writer ``w`` owns planes 2w and 2w+1 of both 32-plane shard layers: four regions of
    2 x 32 x 64 voxels, each partly covering two shards that all 16 writers share."""
    regions = [(slice(32 * z + 2 * writer, 32 * z + 2 * writer + 2), slice(32 * y, 32 * y + 32),
                slice(0, 64)) for z in range(2) for y in range(2)]
    k = writer % len(regions)
    return regions[k:] + regions[:k]  # not everyone starts on the same shard


def write_my_regions(url: str, options: dict | None, writer: int,
                     plan: Callable[[int], list[Region]], start, results) -> None:
    """One writer process: open the array, wait for the others, write its regions."""
    try:
        store = open_store(url, options)
        meta = read_array_meta(store)
        start.wait(120)
        began = time.perf_counter()
        for region in plan(writer):
            write_region(store, meta, region, values_for(writer, region, meta.dtype))
        results.put((writer, None, store.stats.snapshot()["retries"],
                     time.perf_counter() - began))
    except BaseException:
        results.put((writer, traceback.format_exc(), 0, 0.0))


def run_writers(url: str, options: dict | None, n: int, plan, *, timeout: float
                ) -> list[tuple[int, str | None, int, float]]:
    """Start ``n`` writer processes together; their (writer, error, retries, seconds)."""
    # forkserver: safe although this process runs threads (moto, fsspec's I/O loop), and the
    # preloaded imports make 16 processes start in about a second instead of one each.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "s3fs", "napari_zshard.engine.shard_update",
                                "napari_zshard.store.s3"])
    start, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=write_my_regions, args=(url, options, w, plan, start, results))
             for w in range(n)]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=timeout) for _ in procs]
    except queue.Empty:
        pytest.fail(f"a writer process did not finish within {timeout} s")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join()
    failures = [error for _, error, _, _ in out if error]
    assert not failures, failures[0]
    return out


def expected_after(plan, n: int, shape, dtype) -> np.ndarray:
    expected = np.zeros(shape, dtype=dtype)
    for writer in range(n):
        for region in plan(writer):
            expected[region] = values_for(writer, region, dtype)
    return expected


@pytest.mark.slow
def test_16_processes_writing_into_the_same_local_shards_lose_no_voxel(tmp_path):
    import zarr

    url = str(tmp_path / "labels.zarr")
    create_array(url, **SMALL)

    run_writers(url, None, WRITERS, small_plan, timeout=60)

    expected = expected_after(small_plan, WRITERS, SMALL["shape"], SMALL["dtype"])
    assert np.array_equal(np.asarray(open_array(url)[...]), expected)
    assert np.array_equal(zarr.open_array(url, mode="r")[...], expected)


class SerialMotoS3:
    """moto's S3 answering one request at a time.

    moto checks ``If-Match`` and then stores the object in two steps without a lock, so two
    racing conditional PUTs can both succeed (measured: 2 of 10 races of 16 PUTs with 8 MiB
    bodies had two winners; with 120 MiB bodies the losers got HTTP 500s), and a lost update
    would then be moto's. S3 itself commits a conditional write atomically; answering one
    request at a time restores that, so these tests exercise the writers' own retry logic.
    """

    def __enter__(self) -> SerialMotoS3:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def one_at_a_time(environ, start_response):
            with lock:  # the body is read and the object stored inside
                return list(app(environ, start_response))

        self._server = make_server("127.0.0.1", 0, one_at_a_time, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._thread.join()


@pytest.fixture(scope="module")
def serial_s3(_fake_aws_credentials):
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs")
    with SerialMotoS3() as server:
        yield server.endpoint_url


@pytest.fixture
def shared_bucket(serial_s3) -> tuple[str, dict]:
    """A fresh bucket on the one-request-at-a-time moto: its URL and storage options."""
    from napari_zshard.testing.s3_server import s3_filesystem

    name = f"shared-{uuid.uuid4().hex[:16]}"
    s3_filesystem(serial_s3).mkdir(name)
    return f"s3://{name}", {"endpoint_url": serial_s3}


@pytest.mark.slow
def test_16_processes_writing_into_the_same_s3_shards_lose_no_voxel(shared_bucket):
    bucket, options = shared_bucket
    url = f"{bucket}/labels.zarr"
    create_array(url, storage_options=options, **SMALL)

    outcomes = run_writers(url, options, WRITERS, small_plan, timeout=90)

    expected = expected_after(small_plan, WRITERS, SMALL["shape"], SMALL["dtype"])
    assert np.array_equal(np.asarray(open_array(url, storage_options=options)[...]), expected)
    assert sum(retries for _, _, retries, _ in outcomes) > 0  # the writers really collided


BIG = {"shape": (128, 416, 1024), "dtype": "uint16", "chunks": (64, 416, 1024),
       "shards": (128, 416, 1024), "compressor": "none"}  # one 104 MiB shard of two chunks


def big_plan(writer: int) -> list[Region]:
    """Writer ``w`` owns 8 planes of the single shard (writers 0-1 in its first inner chunk,
    2-3 in its second)."""
    return [(slice(32 * writer + 8, 32 * writer + 16), slice(0, 416), slice(0, 1024))]


@pytest.mark.slow
def test_4_processes_sharing_a_shard_above_the_multipart_threshold_lose_no_voxel(
        shared_bucket):
    bucket, options = shared_bucket
    url = f"{bucket}/big.zarr"
    store, meta = create_array(url, storage_options=options, **BIG)

    outcomes = run_writers(url, options, 4, big_plan, timeout=180)

    shard = store.read(meta.object_key((0, 0, 0)))
    assert len(shard) > 100 * 2**20  # s3fs would have uploaded this in parts, without If-Match
    expected = expected_after(big_plan, 4, BIG["shape"], BIG["dtype"])
    assert np.array_equal(np.asarray(open_array(url, storage_options=options)[...]), expected)
    assert sum(retries for _, _, retries, _ in outcomes) > 0
