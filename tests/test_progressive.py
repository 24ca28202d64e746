"""Chunks decoded front to back: a plane at the top of a cold chunk row is served from the
first part of each chunk's stream, the rest is decoded behind it, and every plane reads back
exactly what was written, however readers interleave — and damage past the part one read used
is still reported, to the read that needs it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

import napari_zshard
from napari_zshard import EngineCache
from napari_zshard.engine.progressive import progressive_codecs
from napari_zshard.errors import CorruptDataError

SHAPE, SHARD, CHUNK = (64, 128, 128), (32, 128, 128), (32, 64, 64)
ROW = (SHAPE[1] // CHUNK[1]) * (SHAPE[2] // CHUNK[2])  # inner chunks per chunk row


def structured(shape) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((x * 7 + y * 3 + z * 11) % 4000 + (x * y) % 97).astype("uint16")


def write(path, data, inner) -> str:
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=SHARD,
                            serializer=ShardingCodec(chunk_shape=CHUNK, codecs=inner),
                            compressors=None, fill_value=0, zarr_format=3)
    arr[...] = data
    return str(path)


CHAINS = {
    "zstd+crc32c": [BytesCodec(), ZstdCodec(level=3), Crc32cCodec()],
    "zstd": [BytesCodec(), ZstdCodec(level=3)],
    "gzip": [BytesCodec(), GzipCodec(level=5)],
}


def wait_until_decoded(arr, timeout=20.0) -> None:
    cache = arr._reader.cache
    deadline = time.monotonic() + timeout
    while cache.chunks.in_flight() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.chunks.in_flight() == 0, "background decodes never finished"


@pytest.mark.parametrize("chain", CHAINS)
def test_every_depth_of_a_cold_row_reads_back_exactly(tmp_path, chain):
    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS[chain])
    for z in (0, 1, 7, 31, 32, 45, 63):  # top, inside and bottom of 32-deep chunks
        arr = napari_zshard.open_array(path, cache=EngineCache())
        assert arr._reader.decoder.progressive is not None
        np.testing.assert_array_equal(arr[z], data[z])
        np.testing.assert_array_equal(arr[z, 10:90, 20:100], data[z, 10:90, 20:100])
        # the next planes while the rest of each chunk is still being decoded
        np.testing.assert_array_equal(arr[z:min(z + 3, SHAPE[0])], data[z:z + 3])
        wait_until_decoded(arr)
        # each chunk of the row decoded once, then served whole from the cache
        rows = {zz // CHUNK[0] for zz in range(z, min(z + 3, SHAPE[0]))}
        assert arr.counters["chunks_decoded"] == ROW * len(rows)
        np.testing.assert_array_equal(arr[z], data[z])


def test_readers_racing_over_one_cold_row_decode_each_chunk_once(tmp_path):
    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd+crc32c"])
    arr = napari_zshard.open_array(path, cache=EngineCache())
    planes = [0, 31, 5, 16, 2, 30, 9, 24] * 3
    start = threading.Barrier(len(planes))
    errors: list[str] = []

    def read(z: int) -> None:
        start.wait()
        if not np.array_equal(arr[z], data[z]):
            errors.append(f"plane {z} differs")

    threads = [threading.Thread(target=read, args=(z,)) for z in planes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    wait_until_decoded(arr)
    assert arr.counters["chunks_decoded"] == ROW
    assert arr.counters["data_requests"] <= ROW  # nothing fetched twice


def test_damage_past_the_part_a_read_used_fails_the_read_that_needs_it(tmp_path):
    data = structured(SHAPE)
    # no crc32c, but a zstd frame checksum: damage near the end is found when decoded there
    path = write(tmp_path / "a.zarr", data, [BytesCodec(), ZstdCodec(level=3, checksum=True)])
    arr = napari_zshard.open_array(path, cache=EngineCache())
    index = arr._reader.shard_indexes([(0, 0, 0)])[(0, 0, 0)]
    offset, length = index.chunk_slice(0)  # inner chunk (0, 0, 0)
    shard = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[offset + length - 6] ^= 0xFF  # inside the frame's last block / checksum
    shard.write_bytes(bytes(raw))

    np.testing.assert_array_equal(arr[0], data[0])  # the top of every chunk is intact
    wait_until_decoded(arr)
    with pytest.raises(CorruptDataError, match=r"c/0/0/0: inner chunk \(0, 0, 0\)"):
        arr[31]
    # chunks that are intact still read
    np.testing.assert_array_equal(arr[31, :, 64:], data[31, :, 64:])
    # the row is no longer read as it was decoded: the damaged chunk is fetched again. Its
    # top is decoded first again, and its rest fails again behind it: the read gets the top,
    # or, when that failure came first, the error
    reads = arr.counters["data_requests"]
    try:
        np.testing.assert_array_equal(arr[1], data[1])
    except CorruptDataError as e:
        assert "inner chunk (0, 0, 0)" in str(e)
    assert arr.counters["data_requests"] > reads


def test_chains_that_cannot_be_decoded_front_to_back_are_decoded_whole(tmp_path):
    from napari_zshard.engine.codecs import ChunkCodecs
    from napari_zshard.engine.codecs import ZstdCodec as EngineZstd

    u16 = np.dtype("uint16")
    assert progressive_codecs(ChunkCodecs(bytes_codecs=(EngineZstd(),)), u16) is not None
    assert progressive_codecs(ChunkCodecs(order=(2, 1, 0), bytes_codecs=(EngineZstd(),)),
                              u16) is None  # transposed: planes are not a prefix
    assert progressive_codecs(ChunkCodecs(endian="big", bytes_codecs=(EngineZstd(),)),
                              u16) is None  # bytes need swapping after decoding
    assert progressive_codecs(ChunkCodecs(), u16) is None  # uncompressed: nothing to stream


def test_the_decode_pool_runs_what_a_read_waits_for_before_read_ahead():
    from napari_zshard.engine.pools import LATER, NOW, PriorityPool

    pool = PriorityPool(1, "test")
    gate = threading.Event()
    order: list[str] = []
    pool.submit(gate.wait, 10)  # the one worker is busy
    for name in ("ahead-1", "ahead-2"):
        pool.submit(order.append, name, priority=LATER)
    pool.submit(order.append, "wanted", priority=NOW)
    gate.set()
    assert pool.wait_idle(10)
    assert order == ["wanted", "ahead-1", "ahead-2"]
    # what reads wait for (NOW) is done even while read-ahead (LATER) still runs
    gate.clear()
    running = threading.Event()
    pool.submit(lambda: (running.set(), gate.wait(10)), priority=LATER)
    assert running.wait(10)
    pool.submit(order.append, "wanted-2", priority=NOW)
    assert not pool.wait_urgent(0.05)  # queued behind the running read-ahead
    assert not pool.wait_idle(0.01)
    gate.set()
    assert pool.wait_urgent(10) and order[-1] == "wanted-2"
    gate.clear()
    pool.submit(gate.wait, 10, priority=LATER)
    assert pool.wait_urgent(0.05)  # nothing urgent queued: at once
    gate.set()
    assert pool.wait_idle(10)
    assert list(pool.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]
    with pytest.raises(ZeroDivisionError):
        list(pool.map(lambda x: 1 / x, [1, 0]))


def test_progressive_false_decodes_every_chunk_whole_before_returning(tmp_path):
    """For loops that read every plane as fast as they can: no prefix decoded twice."""
    import pickle

    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd+crc32c"])
    arr = napari_zshard.open_array(path, cache=EngineCache(), progressive=False)

    np.testing.assert_array_equal(arr[0], data[0])

    cache = arr._reader.cache
    assert cache.chunks.in_flight() == 0  # nothing left to finish in the background
    assert len(cache.chunks._data) == ROW  # the row's chunks are in the cache, whole
    assert arr.counters["chunks_decoded"] == ROW
    np.testing.assert_array_equal(arr[31], data[31])
    assert arr.counters["chunks_decoded"] == ROW
    # the choice travels with the array (to dask workers)
    assert pickle.loads(pickle.dumps(arr))._reader.decoder.progressive is None


def test_the_rest_of_a_chunk_is_decoded_by_resuming_not_from_the_start(tmp_path, monkeypatch):
    """The decoder that produced a plane's prefix goes on from where it stopped: no chunk of
    the row is handed to the one-shot decoder afterwards, and the bytes decoded add up to the
    row's size exactly once."""
    from napari_zshard.engine.codecs import ChunkCodecs

    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd+crc32c"])
    one_shot = []
    real_decode = ChunkCodecs.decode
    monkeypatch.setattr(ChunkCodecs, "decode",
                        lambda self, *a, **k: one_shot.append(1) or real_decode(self, *a, **k))
    arr = napari_zshard.open_array(path, cache=EngineCache())
    np.testing.assert_array_equal(arr[3], data[3])
    wait_until_decoded(arr)
    np.testing.assert_array_equal(arr[3:32], data[3:32])  # from the cache, whole
    assert one_shot == []
    assert arr.counters["chunks_decoded"] == ROW
    assert arr.counters["decoded_bytes"] == ROW * np.prod(CHUNK) * 2


ONE = (32, 64, 64)  # one chunk, 256 KiB: two zstd blocks


def one_chunk_shard(path, chunk: bytes) -> str:
    """An array of one shard holding one inner chunk (zstd, no crc32c) stored as ``chunk``."""
    from napari_zshard.engine.checksum import crc32c

    zarr.create_array(str(path), shape=ONE, dtype="uint16", chunks=ONE,
                      serializer=ShardingCodec(chunk_shape=ONE,
                                               codecs=[BytesCodec(), ZstdCodec(level=3)]),
                      compressors=None, fill_value=0, zarr_format=3)
    entries = np.array([[0, len(chunk)]], dtype="<u8").tobytes()
    (path / "c" / "0" / "0").mkdir(parents=True)
    (path / "c" / "0" / "0" / "0").write_bytes(
        chunk + entries + crc32c(entries).to_bytes(4, "little"))
    return str(path)


def zstd_frames(*parts: np.ndarray, declare_size: bool = True) -> bytes:
    import zstandard

    c = zstandard.ZstdCompressor(level=3, write_content_size=declare_size)
    return b"".join(c.compress(np.ascontiguousarray(p).tobytes()) for p in parts)


def test_a_chunk_whose_rest_overflows_or_is_cut_fails_only_the_reads_that_need_the_rest(
        tmp_path):
    from napari_zshard.errors import DecompressionBombError

    data = structured(ONE)
    cases = {
        # a valid stream that goes on past the chunk's 256 KiB (its size not declared)
        "overflow": (zstd_frames(np.concatenate([data, data[:8]]), declare_size=False),
                     DecompressionBombError, "expands beyond"),
        # the second block cut short (the first block intact)
        "cut": (zstd_frames(data)[:-2000], CorruptDataError, "131072 of 262144|to 131072"),
    }
    for name, (chunk, error, message) in cases.items():
        path = one_chunk_shard(tmp_path / f"{name}.zarr", chunk)
        arr = napari_zshard.open_array(path, cache=EngineCache())
        assert arr._reader.decoder.progressive is not None
        np.testing.assert_array_equal(arr[0], data[0])  # served from the first block
        wait_until_decoded(arr)
        with pytest.raises(error, match=rf"c/0/0/0: inner chunk \(0, 0, 0\).*({message})"):
            arr[31]
        with pytest.raises(error):  # every time: nothing half-decoded is cached as whole
            arr[:, 5]


def test_a_chunk_stored_as_two_frames_reads_back_whole(tmp_path):
    data = structured(ONE)
    # two frames without declared sizes: the one-shot decoder reads across them
    path = one_chunk_shard(tmp_path / "a.zarr",
                           zstd_frames(data[:20], data[20:], declare_size=False))
    arr = napari_zshard.open_array(path, cache=EngineCache())
    np.testing.assert_array_equal(arr[0], data[0])
    wait_until_decoded(arr)
    np.testing.assert_array_equal(arr[:], data)


def test_paused_decoders_are_released_once_their_chunks_are_finished(tmp_path):
    """Each paused zstd decoder holds a context (96 KiB): none may outlive its chunk."""
    import gc

    from napari_zshard.engine import progressive

    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd"])
    arr = napari_zshard.open_array(path, cache=EngineCache())
    for z in (0, 32):  # both chunk rows, cold
        np.testing.assert_array_equal(arr[z], data[z])
    wait_until_decoded(arr)
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, progressive._ZstdStream)] == []
    assert len(progressive._idle) <= progressive._MAX_IDLE
