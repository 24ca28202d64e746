"""Bad input gives a clear, specific error — never a hang, a crash or wrong data.

A user opens stores that were damaged on the way: a flipped bit in a shard index or in chunk data,
a shard cut short, an index entry pointing outside its file, a shard of 0 bytes, a ``zarr.json``
that is not JSON or describes an absurd array, a chunk crafted to expand to gigabytes, a server
that is down or ignores byte ranges. Each time they get the one exception class from
``napari_zshard.errors`` that says what happened, naming the store key and, for index problems,
the index entry — and the engine stays within its memory.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest

import napari_zshard
from napari_zshard import EngineCache
from napari_zshard.engine.checksum import crc32c
from napari_zshard.errors import (
    ChecksumError,
    ChunkSizeMismatchError,
    CorruptDataError,
    CorruptShardError,
    DecompressionBombError,
    MetadataError,
    RangeNotSupportedError,
    RemoteReadError,
)

SHAPE, SHARD, CHUNK = (4, 32, 64), (4, 32, 32), (2, 16, 16)
N_CHUNKS = 2 * 2 * 2  # inner chunks per shard
EMPTY = 2**64 - 1
KEY = "c/0/0/0"


def index_codecs(crc: bool) -> list[dict]:
    little = {"name": "bytes", "configuration": {"endian": "little"}}
    return [little, {"name": "crc32c"}] if crc else [little]


def sharded_codecs(inner: list[dict], *, index_location: str = "end", index_crc: bool = True,
                   chunk=CHUNK) -> list[dict]:
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunk), "codecs": inner, "index_codecs": index_codecs(index_crc),
        "index_location": index_location}}]


BYTES_CRC = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def write_volume(path, *, index_location="end", index_crc=True) -> np.ndarray:
    """Two full shards of random uint16 with inner crc32c, written by tensorstore."""
    import tensorstore as ts

    data = np.random.default_rng(0).integers(1, 60000, size=SHAPE, dtype="uint16")
    metadata = {"shape": list(SHAPE), "data_type": "uint16", "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD)}},
                "chunk_key_encoding": {"name": "default"},
                "codecs": sharded_codecs(BYTES_CRC, index_location=index_location,
                                         index_crc=index_crc)}
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": metadata, "create": True, "delete_existing": True}).result()
    store[...].write(data).result()
    return data


class Shard:
    """One shard file, taken apart into its data and index entries, and put back together."""

    def __init__(self, path, *, index_location="end", index_crc=True):
        self.path = path
        self.location = index_location
        self.crc = index_crc
        self.raw = path.read_bytes()
        self.index_nbytes = N_CHUNKS * 16 + (4 if index_crc else 0)
        index = self.raw[-self.index_nbytes:] if index_location == "end" \
            else self.raw[:self.index_nbytes]
        self.entries = np.frombuffer(index[:N_CHUNKS * 16], "<u8").reshape(-1, 2).copy()

    @property
    def data_end(self) -> int:
        return len(self.raw) - (self.index_nbytes if self.location == "end" else 0)

    def encoded_index(self) -> bytes:
        body = self.entries.astype("<u8").tobytes()
        return body + crc32c(body).to_bytes(4, "little") if self.crc else body

    def save(self) -> None:
        """Write the (edited) entries back with a valid checksum."""
        index = self.encoded_index()
        if self.location == "end":
            self.path.write_bytes(self.raw[:-self.index_nbytes] + index)
        else:
            self.path.write_bytes(index + self.raw[self.index_nbytes:])


def flip_bit(path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.fixture
def opened(request, tmp_path):
    """Open ``tmp_path/vol.zarr`` over a transport (local or http) on a cold engine."""

    def _opened(transport: str = "local"):
        url = str(tmp_path / "vol.zarr")
        if transport == "http":
            url = f"{request.getfixturevalue('http_server').url}/vol.zarr"
        return napari_zshard.open_array(url, cache=EngineCache())

    return _opened


# -- the shard index --------------------------------------------------------------------------

@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_bit_flip_in_the_index_is_a_checksum_mismatch(index_location, opened, tmp_path):
    data = write_volume(tmp_path / "vol.zarr", index_location=index_location)
    shard = Shard(tmp_path / "vol.zarr" / KEY, index_location=index_location)
    flip_bit(shard.path, len(shard.raw) - 20 if index_location == "end" else 20)
    arr = opened()

    with pytest.raises(CorruptShardError, match=f"{KEY}: shard index checksum mismatch"):
        arr[0]
    # The healthy shard next to it still reads, and so does nothing wrong get cached.
    assert np.array_equal(arr[:, :, 32:], data[:, :, 32:])
    with pytest.raises(CorruptShardError):
        arr[0]


@pytest.mark.parametrize("transport", ["local", "http"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_truncated_shard_is_corrupt(index_location, transport, opened, tmp_path):
    write_volume(tmp_path / "vol.zarr", index_location=index_location)
    path = tmp_path / "vol.zarr" / KEY
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    arr = opened(transport)

    with pytest.raises(CorruptShardError, match=KEY) as info:
        arr[...]
    if index_location == "start":  # the index survived; entries now point past the end
        assert "index entry" in str(info.value) and "past the end" in str(info.value)
    else:  # the last bytes are not an index any more
        assert "checksum mismatch" in str(info.value)


@pytest.mark.parametrize("transport", ["local", "http"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_a_shard_shorter_than_its_index_is_truncated(index_location, transport, opened,
                                                     tmp_path):
    write_volume(tmp_path / "vol.zarr", index_location=index_location)
    path = tmp_path / "vol.zarr" / KEY
    path.write_bytes(path.read_bytes()[:40])

    with pytest.raises(CorruptShardError, match=f"{KEY}: shard has 40 bytes .*truncated"):
        opened(transport)[0]


@pytest.mark.parametrize("transport", ["local", "http"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_an_index_entry_pointing_past_the_end_of_the_file(index_location, transport, opened,
                                                         tmp_path):
    write_volume(tmp_path / "vol.zarr", index_location=index_location)
    shard = Shard(tmp_path / "vol.zarr" / KEY, index_location=index_location)
    shard.entries[3] = (len(shard.raw) + 100, 50)
    shard.save()

    with pytest.raises(CorruptShardError, match=f"{KEY}: index entry 3 points past the end"):
        opened(transport)[...]


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_an_index_entry_overlapping_the_index(index_location, opened, tmp_path):
    write_volume(tmp_path / "vol.zarr", index_location=index_location)
    shard = Shard(tmp_path / "vol.zarr" / KEY, index_location=index_location)
    shard.entries[2] = (shard.data_end - 8, 16) if index_location == "end" else (8, 16)
    shard.save()

    with pytest.raises(CorruptShardError, match=f"{KEY}: index entry 2 .*overlaps the shard index"):
        opened()[...]


@pytest.mark.parametrize("half", ["offset", "nbytes"])
@pytest.mark.parametrize("index_crc", [True, False])
def test_only_one_half_of_the_empty_marker(half, index_crc, opened, tmp_path):
    write_volume(tmp_path / "vol.zarr", index_crc=index_crc)
    shard = Shard(tmp_path / "vol.zarr" / KEY, index_crc=index_crc)
    shard.entries[5, 0 if half == "offset" else 1] = EMPTY
    shard.save()

    with pytest.raises(CorruptShardError, match=f"{KEY}: index entry 5 has only one half of the "
                       "empty marker"):
        opened()[...]


@pytest.mark.parametrize("transport", ["local", "http"])
def test_a_zero_byte_shard_is_corrupt_not_empty(transport, opened, tmp_path):
    write_volume(tmp_path / "vol.zarr")
    (tmp_path / "vol.zarr" / KEY).write_bytes(b"")

    with pytest.raises(CorruptShardError, match=f"{KEY}: shard is 0 bytes"):
        opened(transport)[0]


@pytest.mark.parametrize("transport", ["local", "http"])
@pytest.mark.parametrize("damage", ["index-bit-flip", "shorter-than-its-index", "zero-bytes"])
def test_a_corrupt_shard_does_not_hide_its_healthy_neighbours(damage, transport, opened,
                                                               tmp_path):
    location = "start" if damage == "shorter-than-its-index" else "end"
    data = write_volume(tmp_path / "vol.zarr", index_location=location)
    path = tmp_path / "vol.zarr" / KEY
    if damage == "index-bit-flip":
        flip_bit(path, path.stat().st_size - 30)
    else:
        path.write_bytes(path.read_bytes()[:40] if damage == "shorter-than-its-index" else b"")
    arr = opened(transport)

    # A tile of the healthy shard reads, though read-ahead reaches into the damaged one ...
    assert np.array_equal(arr[1, :, 32:], data[1, :, 32:])
    # ... and the damaged shard is reported whenever it is asked for.
    with pytest.raises(CorruptShardError, match=KEY):
        arr[1, :, :32]


# -- chunk data -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["local", "http"])
def test_a_bit_flip_in_chunk_data_fails_its_crc32c(transport, opened, tmp_path):
    data = write_volume(tmp_path / "vol.zarr")
    shard = Shard(tmp_path / "vol.zarr" / KEY)
    offset, nbytes = shard.entries[6]
    flip_bit(shard.path, int(offset) + int(nbytes) // 2)
    arr = opened(transport)

    # Chunk 6 of shard (0, 0, 0) is inner chunk (1, 1, 0): planes 2-3, rows 16-31, columns 0-15.
    with pytest.raises(ChecksumError, match=f"{KEY}: inner chunk .*index entry 6.*crc32c"):
        arr[2]
    # Chunks around it are fine; the damaged one fails every time, it is never served.
    assert np.array_equal(arr[2, :16], data[2, :16])
    assert np.array_equal(arr[0], data[0])
    with pytest.raises(ChecksumError):
        arr[3, 20, 5]


# -- metadata ---------------------------------------------------------------------------------

def valid_zarr_json() -> dict:
    return {"zarr_format": 3, "node_type": "array", "shape": list(SHAPE), "data_type": "uint16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(SHARD)}},
            "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
            "codecs": sharded_codecs(BYTES_CRC)}


def garbage(**changes) -> bytes:
    doc = valid_zarr_json()
    for path, value in changes.items():
        target = doc
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value
    return json.dumps(doc).encode()


GARBAGE = {
    "not-json": b"{\"zarr_format\": 3, \"shape\": [4, ",
    "binary": bytes(range(256)),
    "json-list": b"[1, 2, 3]",
    "shape-beyond-2^53": garbage(shape=[2**60, 2**60, 2**60]),
    "negative-shape": garbage(shape=[4, -32, 64]),
    "rank-1000": garbage(shape=[1] * 1000),
    "huge-chunk": garbage(shape=[2**40] * 3, chunk_grid={
        "name": "regular", "configuration": {"chunk_shape": [2**20] * 3}}, codecs=[
            {"name": "bytes", "configuration": {"endian": "little"}}]),
    "huge-inner-chunk": garbage(shape=[2**40] * 3, chunk_grid={
        "name": "regular", "configuration": {"chunk_shape": [2**20] * 3}},
        codecs=sharded_codecs(BYTES_CRC, chunk=[2**20] * 3)),
    "2^60-chunks-per-shard": garbage(shape=[2**40] * 3, chunk_grid={
        "name": "regular", "configuration": {"chunk_shape": [2**20] * 3}},
        codecs=sharded_codecs(BYTES_CRC, chunk=[1, 1, 1])),
    "shard-not-multiple-of-chunk": garbage(codecs=sharded_codecs(BYTES_CRC, chunk=[3, 16, 16])),
    "rank-mismatch": garbage(chunk_grid={"name": "regular",
                                         "configuration": {"chunk_shape": [4, 32]}}),
    "grid-is-a-string": garbage(chunk_grid="regular"),
    "configuration-is-a-list": garbage(codecs__0__configuration=[1, 2]),
    "fill-value-list": garbage(fill_value=[]),
    "fill-value-word": garbage(fill_value="banana"),
    "unknown-data-type": garbage(data_type="uint128"),
    "zstd-level-word": garbage(codecs=sharded_codecs([
        {"name": "bytes", "configuration": {"endian": "little"}},
        {"name": "zstd", "configuration": {"level": "high"}}])),
}


@pytest.mark.parametrize("name", GARBAGE)
def test_garbage_zarr_json_is_a_metadata_error_before_any_allocation(name, tmp_path):
    (tmp_path / "vol.zarr").mkdir()
    (tmp_path / "vol.zarr/zarr.json").write_bytes(GARBAGE[name])

    tracemalloc.start()
    try:
        with pytest.raises(MetadataError, match=r"zarr\.json"):
            napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20


def test_garbage_zarray_is_a_metadata_error(tmp_path):
    (tmp_path / "v2.zarr").mkdir()
    (tmp_path / "v2.zarr/.zarray").write_text(json.dumps(
        {"zarr_format": 2, "shape": [10, 10], "chunks": [2**31, 2**31], "dtype": "<f8",
         "compressor": None, "fill_value": 0, "order": "C", "filters": None}))

    with pytest.raises(MetadataError, match=r"\.zarray: chunk shape"):
        napari_zshard.open_array(tmp_path / "v2.zarr", cache=EngineCache())


# -- decompression bombs ----------------------------------------------------------------------

GIB = 2**30
BOMB_CHUNK = (1, 64, 64)  # 8 KiB of uint16 decoded


def zstd_rle_frame(total: int, *, declare_size: bool) -> bytes:
    """A valid zstd frame of ``total`` zero bytes made of 128 KiB run-length blocks (4 bytes
    each): 2 GiB fits in 64 KiB. With ``declare_size`` the header states the content size."""
    block = 128 * 1024
    blocks = bytearray()
    for start in range(0, total, block):
        n = min(block, total - start)
        last = start + n >= total
        blocks += (int(last) | (1 << 1) | (n << 3)).to_bytes(3, "little") + b"\x00"
    magic = (0xFD2FB528).to_bytes(4, "little")
    if declare_size:  # single segment, 8-byte frame content size
        return magic + bytes([0xE0]) + total.to_bytes(8, "little") + bytes(blocks)
    return magic + bytes([0x00, 0x38]) + bytes(blocks)  # 128 KiB window, size unknown


def gzip_of_zeros(total: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(2**20)
    return b"".join(c.compress(zeros) for _ in range(total // len(zeros))) + c.flush()


def blosc_declaring(total: int) -> bytes:
    import numcodecs

    frame = bytearray(numcodecs.Blosc(cname="lz4").encode(np.zeros(BOMB_CHUNK, "uint16")))
    frame[4:8] = total.to_bytes(4, "little")  # header: "decompresses to `total` bytes"
    return bytes(frame)


BYTES = {"name": "bytes", "configuration": {"endian": "little"}}
BOMBS = {
    # name: (compressor codec, crafted chunk, expected error)
    "zstd-declares-2GiB": ({"name": "zstd", "configuration": {"level": 0, "checksum": False}},
                           lambda: zstd_rle_frame(2 * GIB, declare_size=True),
                           DecompressionBombError),
    "zstd-streams-2GiB": ({"name": "zstd", "configuration": {"level": 0, "checksum": False}},
                          lambda: zstd_rle_frame(2 * GIB, declare_size=False),
                          DecompressionBombError),
    "gzip-64MiB": ({"name": "gzip", "configuration": {"level": 9}},
                   lambda: gzip_of_zeros(64 * 2**20), DecompressionBombError),
    "blosc-declares-2GiB": ({"name": "blosc", "configuration": {
        "cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "typesize": 2, "blocksize": 0}},
        lambda: blosc_declaring(2 * GIB - 1), DecompressionBombError),
}


def write_bomb(path, compressor: dict, chunk: bytes) -> None:
    """A valid zarr.json and one shard whose only chunk (index entry 0) is ``chunk``."""
    import zarr

    zarr.create(store=str(path), shape=(2, 64, 64), chunks=(2, 64, 64), dtype="uint16",
                codecs=sharded_codecs([BYTES, compressor], chunk=BOMB_CHUNK), fill_value=0,
                zarr_format=3, overwrite=True)
    entries = np.array([[0, len(chunk)], [EMPTY, EMPTY]], dtype="<u8").tobytes()
    index = entries + crc32c(entries).to_bytes(4, "little")
    (path / "c/0/0").mkdir(parents=True)
    (path / "c/0/0/0").write_bytes(chunk + index)


def zstd_cases() -> dict:
    """Damaged zstd chunks (no crc32c to catch them first) for an (8, 16, 16) uint16 chunk."""
    import numcodecs.zstd
    import zstandard

    data = np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16) % 300
    good = numcodecs.zstd.compress(data, 3)
    unsized = zstandard.ZstdCompressor(level=3, write_content_size=False)
    return {
        "cut short": (good[:-10], CorruptDataError),
        "garbage after the frame": (good + b"garbage!", CorruptDataError),
        "a frame too short": (numcodecs.zstd.compress(data[:4], 3), CorruptDataError),
        "two frames": (numcodecs.zstd.compress(data[:4], 3) * 2, CorruptDataError),
        # twice the chunk: uint32 data under a uint16 data_type, not a bomb
        "too long, declared": (numcodecs.zstd.compress(np.concatenate([data, data]), 3),
                               ChunkSizeMismatchError),
        "too long, undeclared": (unsized.compress(np.concatenate([data, data]).tobytes()),
                                 DecompressionBombError),
        "too short, undeclared": (unsized.compress(data[:4].tobytes()), CorruptDataError),
        "undeclared size": (unsized.compress(data.tobytes()), data),
    }


@pytest.mark.parametrize("library", ["zstandard", "numcodecs", "first plane first"])
@pytest.mark.parametrize("case", list(zstd_cases()))
def test_a_damaged_zstd_chunk_is_an_error_whichever_library_decodes(case, library,
                                                                   monkeypatch):
    from napari_zshard.engine import codecs
    from napari_zshard.engine.progressive import decode_prefix

    if library == "numcodecs":  # (zstandard missing)
        monkeypatch.setattr(codecs, "zstd_decompressor", lambda: None)
    chunk, expected = zstd_cases()[case]
    chain = codecs.ChunkCodecs(bytes_codecs=(codecs.ZstdCodec(level=3),))
    shape, dtype = (8, 16, 16), np.dtype("u2")

    def decode():
        if library != "first plane first":
            return chain.decode(chunk, shape, dtype)
        # as the reader does for a cold plane: the first plane, then the rest (or, when the
        # stream cannot be resumed, the whole chunk by the one-shot decoder)
        try:
            prefix = decode_prefix(chain, chunk, shape, dtype, 16 * 16 * 2)
        except Exception:
            return chain.decode(chunk, shape, dtype)
        whole = prefix.finish()
        return chain.decode(chunk, shape, dtype) if whole is None else whole

    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(decode(), expected)
        return
    with pytest.raises(expected):
        decode()


# Run in a fresh interpreter: the peak resident size of this test process is whatever the tests
# before it needed, and a bomb that stayed below it would go unseen.
READ_BOMB = """
import json, re, sys, time, tracemalloc
import napari_zshard
from napari_zshard import EngineCache

def kib(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\\s+(\\d+) kB", f.read(), re.M).group(1))

arr = napari_zshard.open_array(sys.argv[1], cache=EngineCache())
neighbour = int(arr[1].sum())  # the empty chunk next to it reads fine
rss_before = kib("VmRSS")
tracemalloc.start()
started = time.monotonic()
try:
    arr[0]
    error = None
except Exception as e:
    error = [type(e).__name__, str(e)]
elapsed = time.monotonic() - started
_, traced_peak = tracemalloc.get_traced_memory()
print(json.dumps({"neighbour": neighbour, "error": error, "elapsed": elapsed,
                  "traced_peak": traced_peak,
                  "peak_over_start": (kib("VmHWM") - rss_before) * 1024}))
"""


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_decompression_bomb_is_an_error_with_bounded_memory(bomb, tmp_path):
    compressor, make_chunk, error = BOMBS[bomb]
    chunk = make_chunk()
    assert len(chunk) < 256 * 1024
    write_bomb(tmp_path / "vol.zarr", compressor, chunk)

    child = subprocess.run([sys.executable, "-c", READ_BOMB, str(tmp_path / "vol.zarr")],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout.splitlines()[-1])

    assert got["neighbour"] == 0
    assert got["error"] is not None and got["error"][0] == error.__name__
    assert re.search(f"{KEY}: inner chunk .*index entry 0", got["error"][1]), got["error"][1]
    assert got["traced_peak"] < 32 * 2**20
    # the whole process's peak while reading, above what it held before the read
    assert got["peak_over_start"] < 256 * 2**20
    assert got["elapsed"] < 5


# -- servers ----------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_a_clear_error_quickly():
    port = closed_port()
    started = time.monotonic()

    with pytest.raises(RemoteReadError, match=f"127.0.0.1:{port}/vol.zarr/zarr.json"):
        napari_zshard.open_array(f"http://127.0.0.1:{port}/vol.zarr", cache=EngineCache())

    assert time.monotonic() - started < 10


def test_a_server_that_ignores_range_is_refused(http_server, tmp_path):
    write_volume(tmp_path / "vol.zarr")
    http_server.ignore_range = True
    arr = napari_zshard.open_array(f"{http_server.url}/vol.zarr", cache=EngineCache())

    # both shards' index requests are refused; whichever answer lands first is reported
    with pytest.raises(RangeNotSupportedError, match=r"vol.zarr/c/0/0/[01]: .*HTTP 200"):
        arr[0]

