"""Chunks decoded front to back: a plane at the top of a cold chunk row is served from the
first part of each chunk's stream, the rest is decoded behind it, and every plane reads back
exactly what was written, however readers interleave — and damage past the part one read used
is still reported, to the read that needs it."""

from __future__ import annotations

import os
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
    while cache.chunks.inflight_count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.chunks.inflight_count() == 0, "background decodes never finished"


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
    assert cache.chunks.inflight_count() == 0  # nothing left to finish in the background
    assert len(cache.chunks._data) == ROW  # the row's chunks are in the cache, whole
    assert arr.counters["chunks_decoded"] == ROW
    np.testing.assert_array_equal(arr[31], data[31])
    assert arr.counters["chunks_decoded"] == ROW
    # the choice travels with the array (to dask workers)
    assert pickle.loads(pickle.dumps(arr))._reader.decoder.progressive is None


def test_the_rest_of_a_chunk_is_decoded_once_behind_the_read_into_a_reused_buffer(
        tmp_path, monkeypatch):
    """Each chunk of a cold row read from its prefix is decoded whole once more, behind the
    read, into a buffer the decode thread keeps (no new one per chunk), and what follows the
    prefix is copied into the chunk's array: the row ends up decoded in the cache once, the
    stored bytes fetched once, and the planes below the prefix read back exactly."""
    from napari_zshard.engine.codecs import ChunkCodecs

    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd+crc32c"])
    rests = []
    real_decode = ChunkCodecs.decode
    monkeypatch.setattr(ChunkCodecs, "decode", lambda self, *a, **k: rests.append(
        k.get("out")) or real_decode(self, *a, **k))
    arr = napari_zshard.open_array(path, cache=EngineCache())
    np.testing.assert_array_equal(arr[3], data[3])
    wait_until_decoded(arr)
    np.testing.assert_array_equal(arr[3:32], data[3:32])  # from the cache, whole
    assert len(rests) == ROW and all(out is not None for out in rests)
    # one buffer per thread that decoded a rest: the decode pool's (one per core)
    buffers = {out.__array_interface__["data"][0] for out in rests}
    assert len(buffers) <= (os.cpu_count() or 1)
    assert arr.counters["chunks_decoded"] == ROW
    assert arr.counters["data_requests"] <= ROW  # nothing fetched again for the rest


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


def test_nothing_is_held_for_a_chunk_once_its_rest_is_decoded(tmp_path):
    """A paused gzip stream holds its zlib window (32 KiB); a zstd prefix holds no decoder at
    all. Once a cold row's chunks are finished, no Prefix and no paused stream outlives them."""
    import gc

    from napari_zshard.engine import progressive

    data = structured(SHAPE)
    for chain in ("zstd", "gzip"):
        path = write(tmp_path / f"{chain}.zarr", data, CHAINS[chain])
        arr = napari_zshard.open_array(path, cache=EngineCache())
        for z in (0, 32):  # both chunk rows, cold
            np.testing.assert_array_equal(arr[z], data[z])
        wait_until_decoded(arr)
        gc.collect()
        alive = [o for o in gc.get_objects()
                 if isinstance(o, progressive.Prefix | progressive._ZlibStream)]
        assert alive == [], chain


# -- decode_prefix itself, against the whole decode -----------------------------------------

BIG = (64, 64, 64)  # one chunk, 512 KiB of uint16: four zstd blocks
U16 = np.dtype("uint16")


def engine_chains():
    from napari_zshard.engine import codecs as c

    return {
        "zstd": c.ChunkCodecs(bytes_codecs=(c.ZstdCodec(level=3),)),
        "zstd+checksum": c.ChunkCodecs(bytes_codecs=(c.ZstdCodec(level=3, checksum=True),)),
        "zstd+crc32c": c.ChunkCodecs(bytes_codecs=(c.ZstdCodec(level=3), c.Crc32cCodec())),
        "gzip": c.ChunkCodecs(bytes_codecs=(c.ZlibCodec(level=5),)),
        "gzip+crc32c": c.ChunkCodecs(bytes_codecs=(c.ZlibCodec(level=5), c.Crc32cCodec())),
    }


@pytest.mark.parametrize("chain", ["zstd", "zstd+checksum", "zstd+crc32c", "gzip",
                                   "gzip+crc32c"])
def test_a_prefix_holds_the_bytes_of_the_whole_decode_and_finish_completes_it(chain):
    from napari_zshard.engine.progressive import decode_prefix

    codecs = engine_chains()[chain]
    assert progressive_codecs(codecs, U16) is codecs
    data = structured(BIG)
    stored = codecs.encode(data)
    whole = codecs.decode(stored, BIG, U16)
    raw = data.tobytes()
    # inside the first block, at and around block ends, past half the chunk, all of it
    for nbytes in (1, 8192, 131071, 131072, 131073, 262144, 300000, 524288):
        for out in (None, np.full(BIG, 7, U16)):
            prefix = decode_prefix(codecs, stored, BIG, U16, nbytes, out=out)
            assert out is None or prefix.array is out
            assert nbytes <= prefix.done <= data.nbytes
            assert prefix.array.tobytes()[:prefix.done] == raw[:prefix.done], nbytes
            result = prefix.finish()
            assert result is prefix.array and prefix.done == data.nbytes
            np.testing.assert_array_equal(result, whole)


def test_a_top_of_chunk_prefix_decodes_only_the_zstd_block_that_holds_it():
    """The plane at the top of a chunk costs one zstd block: damage in a later block is not
    read, so it fails only the rest (with a frame checksum, the error a whole decode
    raises). The block is read to one byte before its end: 15 of its 16 planes."""
    from napari_zshard.engine.progressive import ZSTD_BLOCK, decode_prefix

    codecs = engine_chains()["zstd+checksum"]
    data = structured(BIG)
    stored = bytearray(codecs.encode(data))
    stored[len(stored) // 2] ^= 0xFF  # inside the second or third block
    with pytest.raises(CorruptDataError) as whole_error:
        codecs.decode(bytes(stored), BIG, U16)
    prefix = decode_prefix(codecs, bytes(stored), BIG, U16, 8192)
    assert prefix.done == ZSTD_BLOCK - 1
    assert prefix.array.tobytes()[:prefix.done] == data.tobytes()[:prefix.done]
    with pytest.raises(CorruptDataError) as rest_error:
        prefix.finish()
    assert type(rest_error.value) is type(whole_error.value)


def damaged_chunks() -> dict[str, tuple[str, bytes]]:
    """Stored chunks of BIG (chain name, bytes) that a whole decode rejects."""
    import zstandard

    chains = engine_chains()
    data = structured(BIG)
    zstd = chains["zstd"].encode(data)
    gzip = chains["gzip"].encode(data)
    crc = bytearray(chains["zstd+crc32c"].encode(data))
    crc[100] ^= 1
    checked = bytearray(chains["zstd+checksum"].encode(data))
    checked[-6] ^= 0xFF  # the frame's last block / its checksum
    no_size = zstandard.ZstdCompressor(level=3, write_content_size=False)
    over_zeros = np.zeros(np.prod(BIG) * 10, U16)  # ten chunks' worth
    return {
        "crc32c mismatch": ("zstd+crc32c", bytes(crc)),
        "not a zstd frame": ("zstd", b"\x00" * 64 + zstd),
        "zstd cut inside the first block": ("zstd", zstd[:300]),
        "zstd cut in the last block": ("zstd", zstd[:-2000]),
        "zstd frame checksum wrong": ("zstd+checksum", bytes(checked)),
        "zstd declares half the chunk": ("zstd", chains["zstd"].encode(data[:32])),
        "zstd expands past the chunk": ("zstd", no_size.compress(
            np.concatenate([data, data[:8]]).tobytes())),
        "zstd garbage after the frame": ("zstd", zstd + b"garbage!"),
        "gzip cut inside the prefix": ("gzip", gzip[:200]),
        "gzip cut near the end": ("gzip", gzip[:-100]),
        "gzip holds twice the chunk": ("gzip", chains["gzip"].encode(
            np.concatenate([data, data]))),
        "gzip expands ten times": ("gzip", chains["gzip"].encode(over_zeros)),
        "gzip damaged": ("gzip", gzip[:20] + bytes(b ^ 0x55 for b in gzip[20:60]) + gzip[60:]),
    }


@pytest.mark.parametrize("case", list(damaged_chunks()))
def test_damaged_chunks_raise_what_a_whole_decode_raises(case):
    """Whether the damage is met by the prefix or by finish(), the error is of the class a
    whole decode raises; what finish() leaves to the one-shot decoder (None) is judged by
    it."""
    from napari_zshard.engine.progressive import decode_prefix

    chain, stored = damaged_chunks()[case]
    codecs = engine_chains()[chain]
    with pytest.raises(CorruptDataError) as whole:
        codecs.decode(stored, BIG, U16)
    with pytest.raises(CorruptDataError) as progressive:
        prefix = decode_prefix(codecs, stored, BIG, U16, 8192)
        if prefix.finish() is None:
            codecs.decode(stored, BIG, U16, out=prefix.array)
    assert type(progressive.value) is type(whole.value), (progressive.value, whole.value)


def test_without_zstandard_zstd_chunks_are_decoded_whole_and_read_back(tmp_path, monkeypatch):
    """The fallback path: with no ``zstandard`` importable, zstd chunks are not read from a
    prefix (progressive_codecs says None) and a cold plane still reads back exactly; gzip
    chunks, decoded by the standard library, still are."""
    import sys

    chains = engine_chains()
    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHAINS["zstd+crc32c"])
    found: dict[str, object] = {}

    def without_zstandard() -> None:  # a new thread: no decompressor cached for it yet
        monkeypatch.setitem(sys.modules, "zstandard", None)
        found["zstd"] = progressive_codecs(chains["zstd+crc32c"], U16)
        found["gzip"] = progressive_codecs(chains["gzip"], U16)
        found["array"] = napari_zshard.open_array(path, cache=EngineCache())

    t = threading.Thread(target=without_zstandard)
    t.start()
    t.join(30)
    monkeypatch.undo()
    assert found["zstd"] is None and found["gzip"] is chains["gzip"]
    arr = found["array"]
    assert arr._reader.decoder.progressive is None
    np.testing.assert_array_equal(arr[0], data[0])
    assert arr._reader.cache.chunks.inflight_count() == 0  # decoded whole before the read returned
    assert arr.counters["chunks_decoded"] == ROW


def test_no_module_of_the_package_imports_another_librarys_private_module():
    """Private modules (a name part starting with ``_``) change without notice: the package
    uses public APIs only (what a public API cannot do lives in one small module with a
    fallback)."""
    import ast
    from pathlib import Path

    root = Path(napari_zshard.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif (isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
                    ("import_module", "__import__")) and node.args
                  and isinstance(node.args[0], ast.Constant)):
                names = [str(node.args[0].value)]
            for name in names:
                parts = name.split(".")
                if parts[0] in ("napari_zshard", "__future__"):
                    continue
                if any(p.startswith("_") for p in parts):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    assert found == []



@pytest.mark.parametrize("chain", ["zstd", "zstd+checksum", "gzip"])
def test_finish_writes_only_what_follows_the_prefix(chain):
    """Readers copy planes out of a prefix while its chunk is finished: finish() must leave
    the prefix's bytes as they are (a zstd decoder writes its output area more than once:
    literals first, then matches over them, and copies past a match's end)."""
    from napari_zshard.engine.progressive import decode_prefix

    codecs = engine_chains()[chain]
    data = structured(BIG)
    stored = codecs.encode(data)
    raw = np.frombuffer(data.tobytes(), "B")
    for nbytes in (8192, 131072, 200000):
        prefix = decode_prefix(codecs, stored, BIG, U16, nbytes)
        done = prefix.done
        assert done < raw.nbytes  # a prefix, not the whole chunk
        flat = prefix.array.reshape(-1).view("B")
        flat[:done] = 0xAB  # stands for the bytes a reader is copying out
        prefix.finish()
        assert (flat[:done] == 0xAB).all(), nbytes
        assert (flat[done:] == raw[done:]).all(), nbytes
