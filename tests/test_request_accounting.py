"""What a plane read costs over the network, counted by the server itself.

A user scrolls through a sharded volume served over HTTP. On a cold engine a plane costs one
index request per shard it touches, and — when the shard stores a plane's inner chunks next to
each other, as tensorstore does (C order) — one data request per shard. Scrolling back costs
nothing: indexes and chunks are cached. ``refresh()`` and ``index_max_age`` make the engine look
again. zarr-python stores inner chunks in Morton order instead; the engine then merges whatever
byte ranges are close enough, and the test says exactly how many requests that makes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import napari_zshard
from napari_zshard import CoalescePolicy, EngineCache

SHAPE, SHARD, CHUNK = (8, 64, 64), (4, 32, 32), (1, 16, 16)
SHARDS_PER_PLANE = (64 // 32) * (64 // 32)
N_CHUNKS = 4 * 2 * 2  # inner chunks per shard
INDEX_BYTES = N_CHUNKS * 16 + 4


def volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, size=SHAPE, dtype="uint16")


def codecs(index_location: str = "end") -> list[dict]:
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(CHUNK),
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}],
        "index_location": index_location}}]


def write_with_tensorstore(path, data, index_location="end"):
    import tensorstore as ts

    metadata = {"shape": list(data.shape), "data_type": "uint16", "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD)}},
                "chunk_key_encoding": {"name": "default"}, "codecs": codecs(index_location)}
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": metadata, "create": True, "delete_existing": True}).result()
    store[...].write(data).result()


def write_with_zarr_python(path, data):
    import zarr

    z = zarr.create(store=str(path), shape=data.shape, chunks=SHARD, dtype=data.dtype,
                    codecs=codecs(), fill_value=0, zarr_format=3, overwrite=True)
    z[...] = data


def stored_index(path, shard_key: str, index_location: str = "end") -> np.ndarray:
    """The (offset, nbytes) entries of one shard, shaped like its chunk grid."""
    raw = (path / shard_key).read_bytes()
    body = raw[-INDEX_BYTES:-4] if index_location == "end" else raw[:INDEX_BYTES - 4]
    return np.frombuffer(body, "<u8").reshape(4, 2, 2, 2)


def shard_requests(server) -> list:
    return [r for r in server.log if r.method == "GET" and "/c/" in r.path]


def index_request_count(server, index_location: str = "end") -> int:
    ranges = ("bytes=-" if index_location == "end" else f"bytes=0-{INDEX_BYTES - 1}")
    return sum(1 for r in shard_requests(server) if (r.range_header or "").startswith(ranges))


@pytest.fixture
def served(http_server, tmp_path):
    """Write a volume with tensorstore, serve it, open it on a cold engine."""

    def _served(index_location: str = "end", **options):
        data = volume()
        write_with_tensorstore(tmp_path / "vol.zarr", data, index_location)
        arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache(),
                                       **options)
        http_server.reset_log()
        return arr, data

    return _served


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_cold_plane_costs_one_index_and_one_data_request_per_shard(
        index_location, served, http_server, tmp_path):
    arr, data = served(index_location)
    # tensorstore stores inner chunks in C order: one plane's chunks are contiguous in a shard.
    index = stored_index(tmp_path / "vol.zarr", "c/0/0/0", index_location)
    offsets = index[..., 0].reshape(-1)
    assert (np.diff(offsets.astype(np.int64)) > 0).all()

    plane = arr[5]

    assert np.array_equal(plane, data[5])
    assert index_request_count(http_server, index_location) == SHARDS_PER_PLANE
    assert len(shard_requests(http_server)) == 2 * SHARDS_PER_PLANE
    per_shard = {r.path for r in shard_requests(http_server)}
    assert len(per_shard) == SHARDS_PER_PLANE
    assert arr.counters["index_requests"] == SHARDS_PER_PLANE
    assert arr.counters["data_requests"] == SHARDS_PER_PLANE
    assert arr.counters["chunks_decoded"] == 4 * 4  # the plane's 16x16 chunks, nothing else


def test_a_tile_without_readahead_touches_one_shard(served, http_server):
    arr, data = served(readahead=False)

    tile = arr[2, 40:60, 0:30]

    assert np.array_equal(tile, data[2, 40:60, 0:30])
    assert http_server.count("/c/0/1/0") == 2 and http_server.count("/c/") == 2
    assert arr.counters == {"index_requests": 1, "data_requests": 1, "chunks_decoded": 4,
                            "decoded_bytes": 4 * 16 * 16 * 2}


def test_a_tile_returns_first_and_the_rest_of_its_row_is_read_ahead_after_it(served,
                                                                              http_server):
    """Read-ahead in the shards a tile does not touch runs after the tile has its bytes, in
    the background: a slow read-ahead shard (here: one that does not answer) never holds the
    tile up, and once it arrived, panning across the plane costs nothing."""
    arr, data = served()
    # plane 2, rows 40:60, columns 0:30 lie in shard (0, 1, 0); the row's other 3 shards hang
    for shard in ("/c/0/0/0", "/c/0/0/1", "/c/0/1/1"):
        http_server.inject("hang", contains=shard)

    started = time.monotonic()
    tile = arr[2, 40:60, 0:30]

    assert time.monotonic() - started < 5  # the hang lasts 60 s
    assert np.array_equal(tile, data[2, 40:60, 0:30])
    assert http_server.count("/c/0/1/0") == 2  # the tile's shard: its index, its data

    deadline = time.monotonic() + 20
    while http_server.count("/c/") < 2 + 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # the read-ahead's index requests reach the server, and hang
    http_server.release_hangs()  # they close unanswered: the read-ahead retries them
    while arr.counters["chunks_decoded"] < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert arr.counters["chunks_decoded"] == 16  # the plane's whole chunk row
    # the tile's 2; the 3 hung index requests; then 3 indexes and 3 data requests answered
    assert http_server.count("/c/") == 2 + 3 + 3 * 2
    http_server.reset_log()

    # Panning across the same plane afterwards costs nothing.
    assert np.array_equal(arr[2], data[2])
    assert http_server.count() == 0


def test_the_rest_of_a_tiles_row_is_fetched_once_the_tiles_chunks_are_decoded(
        served, http_server, monkeypatch):
    """Receiving the read-ahead would take cores from the decodes the tile waits for."""
    from napari_zshard.engine import reader
    from napari_zshard.engine.chunk_decode import ChunkDecoder

    monkeypatch.setattr(reader, "READAHEAD_YIELD", 30.0)
    gate = threading.Event()
    for name in ("decode", "decode_prefix_first"):
        real = getattr(ChunkDecoder, name)
        monkeypatch.setattr(ChunkDecoder, name,
                            lambda self, *a, real=real, **k: (gate.wait(30), real(self, *a, **k)))
    arr, data = served()
    tile: list = []
    reading = threading.Thread(target=lambda: tile.append(arr[2, 40:60, 0:30]))
    reading.start()
    deadline = time.monotonic() + 20
    while http_server.count("/c/0/1/0") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert http_server.count("/c/0/1/0") == 2  # the tile's bytes arrived; its decodes wait
    time.sleep(0.3)
    assert http_server.count("/c/") == 2  # nothing else asked for meanwhile
    gate.set()
    reading.join(20)
    assert np.array_equal(tile[0], data[2, 40:60, 0:30])
    while arr.counters["chunks_decoded"] < 16 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert http_server.count("/c/") == 2 + 3 * 2  # then the row's 3 other shards
    assert np.array_equal(arr[2], data[2])


def test_a_cache_too_small_for_the_row_still_reads_ahead_within_the_shard(http_server,
                                                                          tmp_path):
    data = volume()
    write_with_tensorstore(tmp_path / "vol.zarr", data)
    # room for about 7 decoded chunks: the plane's row of 16 does not fit, a shard's 4 do
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache(8192))
    http_server.reset_log()

    assert np.array_equal(arr[2, 40:48, 0:10], data[2, 40:48, 0:10])  # one inner chunk
    drain_pools()  # the read-ahead is fetched after the read, not inside its request

    # index, the chunk, then the rest of the shard's 2 x 2 chunks of that plane row at once
    assert http_server.count("/c/") == 3 and http_server.count("/c/0/1/0") == 3
    assert arr.counters["chunks_decoded"] == 4


def drain_pools() -> None:
    from napari_zshard.engine.pools import decode_pool, readahead_pool

    readahead_pool().wait_idle(30)
    decode_pool().wait_idle(30)


def test_read_ahead_never_adds_bytes_to_what_a_cold_tile_waits_for(http_server, tmp_path):
    """The rest of a tile's chunk rows lies in the shards it reads, but not inside the bytes it
    needs: fetched after it returned (a 512² tile of 32³ chunks in 512³ shards fetched 3.9x
    tensorstore's bytes before returning when the rows rode along in its requests)."""
    data = volume()
    write_with_tensorstore(tmp_path / "vol.zarr", data)
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache())
    arr._reader.shard_indexes([(0, 1, 0)])  # indexes read: only data requests logged below
    gate = threading.Event()
    real_fetch = reader_module().RegionReader._fetch_in_background
    reader_module().RegionReader._fetch_in_background = (
        lambda self, *a: (gate.wait(30), real_fetch(self, *a)))
    try:
        http_server.reset_log()
        tile = arr[2, 40:48, 0:10]  # one inner chunk of a shard holding 2 x 2 of that row
        before = http_server.bytes_sent("/c/0/1/0")
        decoded = arr.counters["chunks_decoded"]
    finally:
        gate.set()
        reader_module().RegionReader._fetch_in_background = real_fetch
    drain_pools()
    assert np.array_equal(tile, data[2, 40:48, 0:10])
    assert decoded == 1 and http_server.count("/c/0/1/0") == 2
    assert before < http_server.bytes_sent("/c/0/1/0") / 3  # 1 of the 4 chunks' bytes
    assert np.array_equal(arr[2], data[2])


def reader_module():
    from napari_zshard.engine import reader

    return reader


def test_warm_engine_rereads_nothing(served, http_server):
    arr, data = served()
    arr[5]
    http_server.reset_log()
    arr.reset_counters()

    # The same plane: indexes and chunks are cached — no request at all.
    assert np.array_equal(arr[5], data[5])
    assert http_server.count() == 0
    assert arr.counters["index_requests"] == 0 and arr.counters["data_requests"] == 0

    # The next plane lies in the same shards: no index request, one data request per shard.
    assert np.array_equal(arr[6], data[6])
    assert index_request_count(http_server) == 0
    assert http_server.count("/c/") == SHARDS_PER_PLANE
    assert arr.counters["index_requests"] == 0


def test_without_a_chunk_cache_a_warm_engine_still_makes_no_index_requests(http_server, tmp_path):
    data = volume()
    write_with_tensorstore(tmp_path / "vol.zarr", data)
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache(0))
    arr[5]
    http_server.reset_log()

    assert np.array_equal(arr[5], data[5])
    assert index_request_count(http_server) == 0
    assert http_server.count("/c/") == SHARDS_PER_PLANE


def test_refresh_rereads_indexes_and_sees_a_rewritten_store(served, http_server, tmp_path):
    arr, data = served()
    arr[5]
    new = volume(seed=1)
    write_with_tensorstore(tmp_path / "vol.zarr", new)
    http_server.reset_log()

    # Trusted cache: the opened volume keeps showing what it read, without asking.
    assert np.array_equal(arr[5], data[5])
    assert http_server.count() == 0

    arr.refresh()

    assert np.array_equal(arr[5], new[5])
    assert index_request_count(http_server) == SHARDS_PER_PLANE
    assert http_server.count("/c/") == 2 * SHARDS_PER_PLANE


def test_index_max_age_expiry_rereads(served, http_server, tmp_path):
    arr, data = served(index_max_age=0.5)
    arr[5]
    http_server.reset_log()

    arr[5]
    assert http_server.count() == 0  # younger than max age: trusted

    time.sleep(0.6)
    assert np.array_equal(arr[5], data[5])
    assert index_request_count(http_server) == SHARDS_PER_PLANE


def test_a_shard_written_during_acquisition_appears_after_index_max_age(http_server, tmp_path):
    data = volume()
    write_with_tensorstore(tmp_path / "vol.zarr", np.zeros_like(data))  # no shard yet
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache(),
                                   index_max_age=1.0)
    assert not arr[1].any()

    write_with_tensorstore(tmp_path / "vol.zarr", data)  # the microscope wrote the shards
    assert not arr[1].any()  # still trusted
    time.sleep(1.1)

    assert np.array_equal(arr[1], data[1])


def test_two_readers_wanting_the_same_plane_fetch_it_once(served, http_server):
    arr, data = served()
    http_server.latency = 0.05
    results = [None, None]

    def read(i):
        results[i] = arr[3]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(np.array_equal(r, data[3]) for r in results)
    assert http_server.count("/c/") == 2 * SHARDS_PER_PLANE


def _runs(ranges: list[tuple[int, int]], max_gap: int) -> int:
    """How many requests byte ranges make when ranges at most ``max_gap`` apart merge."""
    runs, end = 0, None
    for offset, nbytes in sorted(ranges):
        if end is None or offset - end > max_gap:
            runs += 1
        end = offset + nbytes if end is None else max(end, offset + nbytes)
    return runs


@pytest.mark.parametrize("max_gap", [0, 512, 256 * 1024])
def test_zarr_python_morton_order_is_coalesced_where_ranges_are_close(
        max_gap, http_server, tmp_path):
    data = volume()
    write_with_zarr_python(tmp_path / "vol.zarr", data)
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache(),
                                   coalesce=CoalescePolicy(max_gap=max_gap))
    http_server.reset_log()

    assert np.array_equal(arr[1], data[1])

    # Where the plane's chunks lie in each shard (Morton order scatters them) decides the count.
    expected = 0
    for y in range(2):
        for x in range(2):
            index = stored_index(tmp_path / "vol.zarr", f"c/0/{y}/{x}")
            expected += _runs([tuple(map(int, e)) for e in index[1].reshape(-1, 2)], max_gap)
    assert arr.counters["index_requests"] == SHARDS_PER_PLANE
    assert arr.counters["data_requests"] == expected
    assert http_server.count("/c/") == SHARDS_PER_PLANE + expected
    if max_gap == 0:
        assert expected > SHARDS_PER_PLANE  # scattered: not one request per shard
    else:
        assert expected == SHARDS_PER_PLANE  # one chunk apart: merged


def test_reopening_a_store_rewritten_with_another_layout_never_uses_the_old_cache(tmp_path):
    import zarr

    cache = EngineCache()  # one process-wide cache, as napari and notebooks share
    old = volume()
    write_with_tensorstore(tmp_path / "vol.zarr", old)
    assert np.array_equal(napari_zshard.open_array(tmp_path / "vol.zarr", cache=cache)[...], old)

    # The user saves over the same path with other inner chunks and another dtype.
    new = volume(seed=2).astype("int16")
    z = zarr.create_array(store=str(tmp_path / "vol.zarr"), shape=SHAPE, chunks=(2, 8, 8),
                          shards=SHARD, dtype="int16", fill_value=0, overwrite=True)
    z[...] = new
    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=cache)

    assert arr.dtype == np.int16
    assert np.array_equal(arr[...], new)
    assert np.array_equal(arr[5], new[5])
