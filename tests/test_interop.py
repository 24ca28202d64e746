"""What zarr-python 3 and tensorstore write, the engine reads back bit for bit.

A user has volumes written by other tools, with every layout the sharding spec allows: the index
at the end or the start, with or without its crc32c, inner chunks in either byte order, transposed,
compressed with blosc/zstd/gzip or checksummed, chunks left out because they hold only the fill
value, shards left out entirely, and partial shards and chunks at the array's edges. They open each
one with ``napari_zshard.open_array`` — from a local disk, over HTTP or from S3 — and every
selection they make equals what was written, byte for byte.

The full layout, codec and dtype matrix runs locally; HTTP and S3 run a pairwise subset.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import napari_zshard
from napari_zshard import EngineCache

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]

# Shapes that are not multiples of the shard or chunk shape: every edge shard and chunk is partial.
SHAPE, SHARD, CHUNK = (5, 13, 11), (4, 8, 6), (2, 4, 3)

SELECTIONS = [
    (Ellipsis,),
    (2,),
    (-1, 3),
    (1, 2, 3),
    (Ellipsis, 0),
    (slice(None, None, 2), slice(1, None, 3), slice(None, None, -1)),
    (slice(None, None, -1), slice(None, None, -2), slice(9, 1, -3)),
    (slice(-2, None), slice(-5, None), slice(-4, None)),  # the partial corner shard
    (4, slice(8, 13), slice(6, 11)),  # exactly the last (partial) shard's one plane
    (slice(3, 3),),  # empty
    (slice(1, 4), -1, slice(None, None, 4)),
]


def bytes_codec(endian: str = "little") -> dict:
    return {"name": "bytes", "configuration": {"endian": endian}}


def blosc(cname: str, shuffle: str, typesize: int) -> dict:
    return {"name": "blosc", "configuration": {"cname": cname, "clevel": 5, "shuffle": shuffle,
                                               "typesize": typesize, "blocksize": 0}}


TRANSPOSE = {"name": "transpose", "configuration": {"order": [2, 0, 1]}}
ZSTD = {"name": "zstd", "configuration": {"level": 3, "checksum": False}}
GZIP = {"name": "gzip", "configuration": {"level": 5}}
CRC32C = {"name": "crc32c"}


def inner_chain(name: str, itemsize: int) -> list[dict]:
    """The inner codecs of one named chain, in Zarr v3 JSON (encode order)."""
    return {
        "bytes-le": [bytes_codec("little")],
        "bytes-be": [bytes_codec("big")],
        "transpose-zstd": [TRANSPOSE, bytes_codec("little"), ZSTD],
        "blosc": [bytes_codec("big"), blosc("lz4", "shuffle", itemsize)],
        "zstd": [bytes_codec("little"), ZSTD],
        "gzip": [bytes_codec("little"), GZIP],
        "crc32c": [bytes_codec("little"), CRC32C],
        "transpose-blosc-crc32c": [TRANSPOSE, bytes_codec("big"),
                                   blosc("zstd", "bitshuffle", itemsize), CRC32C],
    }[name]


CHAINS = ["bytes-le", "bytes-be", "transpose-zstd", "blosc", "zstd", "gzip", "crc32c",
          "transpose-blosc-crc32c"]


def sharding_codecs(chunk: tuple[int, ...], inner: list[dict], *, index_location: str,
                    index_crc: bool) -> list[dict]:
    index_codecs = [bytes_codec("little"), CRC32C] if index_crc else [bytes_codec("little")]
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunk), "codecs": inner, "index_codecs": index_codecs,
        "index_location": index_location}}]


# -- sample data ------------------------------------------------------------------------------

def fill_value_for(dtype: np.dtype):
    if dtype.kind == "b":
        return True
    if dtype.kind == "u":
        return 3
    if dtype.kind == "i":
        return -5
    if dtype == np.float32:
        return float("nan")  # "NaN" in zarr.json
    if dtype.kind == "f":
        return 1.5
    return complex(1.0, -2.0)


def fill_json(value):
    if isinstance(value, complex):
        return [fill_json(value.real), fill_json(value.imag)]
    if isinstance(value, float) and np.isnan(value):
        return "NaN"
    return value


def sample(dtype_name: str, shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, object]:
    """Random data over the dtype's whole range, special floats, and regions of fill value:
    one whole shard (→ no shard file) and two inner chunks (→ the empty marker), one of them
    a partial chunk at the array's corner."""
    dtype = np.dtype(dtype_name)
    rng = np.random.default_rng(seed)
    if dtype.kind == "b":
        data = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        real = dtype.type(0).real.dtype
        scale = 1e3 if real.itemsize > 2 else 10.0
        data = (rng.standard_normal(shape) * scale).astype(real)
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, np.finfo(real).tiny / 2,
                             np.finfo(real).max], dtype=real)
        flat = data.reshape(-1)
        flat[rng.choice(flat.size, specials.size, replace=False)] = specials
        if dtype.kind == "c":
            imag = (rng.standard_normal(shape) * scale).astype(real)
            data = data + 1j * imag.astype(dtype)
        data = data.astype(dtype)
    fill = fill_value_for(dtype)
    if data.ndim == 3:
        data[4:, 0:8, 6:] = fill  # shard (1, 0, 1): never written
        data[0:2, 0:4, 0:3] = fill  # inner chunk (0, 0, 0): the empty marker
        data[4:, 12:, 9:] = fill  # inner chunk at the far corner, partial along every axis
    return data, fill


def assert_identical(got: np.ndarray, want: np.ndarray) -> None:
    """Same kind (array or numpy scalar), shape, dtype and bytes (NaN payloads, -0.0 and all)."""
    assert isinstance(got, np.ndarray) == isinstance(want, np.ndarray)
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


# -- writers ----------------------------------------------------------------------------------

def write_with_zarr_python(path: Path, data: np.ndarray, *, grid: tuple[int, ...],
                           codecs: list[dict], fill) -> None:
    import zarr

    z = zarr.create(store=str(path), shape=data.shape, chunks=grid, dtype=data.dtype,
                    codecs=codecs, fill_value=fill, zarr_format=3, overwrite=True)
    z[...] = data


def write_with_tensorstore(path: Path, data: np.ndarray, *, grid: tuple[int, ...],
                           codecs: list[dict], fill) -> None:
    import tensorstore as ts

    metadata = {
        "shape": list(data.shape), "data_type": data.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(grid)}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": fill_json(fill), "codecs": codecs,
    }
    store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                     "metadata": metadata, "create": True, "delete_existing": True}).result()
    store[...].write(data).result()


WRITERS = {"zarr-python": write_with_zarr_python, "tensorstore": write_with_tensorstore}


@dataclass(frozen=True)
class Case:
    writer: str
    dtype: str
    chain: str
    index_location: str
    index_crc: bool

    def __str__(self) -> str:
        crc = "crc" if self.index_crc else "nocrc"
        return f"{self.writer}-{self.dtype}-{self.chain}-index@{self.index_location}-{crc}"

    def write(self, path: Path) -> np.ndarray:
        data, fill = sample(self.dtype)
        codecs = sharding_codecs(CHUNK, inner_chain(self.chain, data.dtype.itemsize),
                                 index_location=self.index_location, index_crc=self.index_crc)
        WRITERS[self.writer](path, data, grid=SHARD, codecs=codecs, fill=fill)
        return data


def layout_cases() -> list[Case]:
    """Every writer, index location, index codecs and inner chain; dtypes rotating through."""
    dtypes = itertools.cycle(DTYPES[1:] + DTYPES[:1])
    return [Case(w, next(dtypes), chain, loc, crc)
            for w, loc, crc, chain in itertools.product(WRITERS, ("end", "start"), (True, False),
                                                        CHAINS)]


def dtype_cases() -> list[Case]:
    """Every writer and dtype; chains and index layouts rotating through."""
    chains = itertools.cycle(CHAINS[::-1])
    layouts = itertools.cycle(itertools.product(("start", "end"), (False, True)))
    return [Case(w, dt, next(chains), *next(layouts)) for w in WRITERS for dt in DTYPES]


def read_everything_back(arr, data: np.ndarray) -> None:
    for sel in SELECTIONS:
        assert_identical(arr[sel], data[sel])


# -- local: the whole matrix ------------------------------------------------------------------

@pytest.mark.parametrize("case", layout_cases() + dtype_cases(), ids=str)
def test_local_array_reads_back_bit_identical(case: Case, tmp_path):
    data = case.write(tmp_path / "vol.zarr")

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    assert not arr.uses_fallback
    assert arr.shape == SHAPE and arr.chunks == CHUNK and arr.shards == SHARD
    read_everything_back(arr, data)


@pytest.mark.parametrize("writer", WRITERS)
def test_chunks_and_shards_holding_only_fill_value_are_not_stored_yet_read_as_fill(
        writer, tmp_path):
    data, fill = sample("uint16")
    codecs = sharding_codecs(CHUNK, [bytes_codec(), ZSTD], index_location="end", index_crc=True)
    WRITERS[writer](tmp_path / "vol.zarr", data, grid=SHARD, codecs=codecs, fill=fill)

    # The writer left out the all-fill shard and marked the all-fill inner chunks empty.
    assert not (tmp_path / "vol.zarr/c/1/0/1").exists()
    raw = (tmp_path / "vol.zarr/c/0/0/0").read_bytes()
    index = np.frombuffer(raw[-(8 * 16 + 4):-4], "<u8").reshape(-1, 2)
    assert (index[0] == 2**64 - 1).all()

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())
    assert (arr[4:, 0:8, 6:] == fill).all()
    assert (arr[0:2, 0:4, 0:3] == fill).all()
    assert_identical(arr[...], data)


@pytest.mark.parametrize("writer", WRITERS)
def test_an_array_with_no_shard_at_all_reads_as_fill_value(writer, tmp_path):
    data = np.full(SHAPE, 9, dtype="int32")
    codecs = sharding_codecs(CHUNK, [bytes_codec()], index_location="end", index_crc=True)
    WRITERS[writer](tmp_path / "vol.zarr", data, grid=SHARD, codecs=codecs, fill=9)

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    assert not [p for p in (tmp_path / "vol.zarr").rglob("c/**/*") if p.is_file()]
    assert_identical(arr[...], data)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize(("shape", "shard", "chunk"), [
    ((1000,), (256,), (64,)),
    ((37, 29), (16, 16), (8, 4)),
    ((3, 2, 9, 10), (2, 2, 4, 8), (1, 2, 2, 4)),
], ids=["1d", "2d", "4d"])
def test_other_ranks_read_back(writer, shape, shard, chunk, tmp_path):
    data = np.random.default_rng(1).integers(0, 60000, size=shape, dtype="uint16")
    data[(slice(0, chunk[0]),) * 1] = 0  # an empty chunk row
    codecs = sharding_codecs(chunk, [bytes_codec("big"), ZSTD], index_location="start",
                             index_crc=True)
    WRITERS[writer](tmp_path / "vol.zarr", data, grid=shard, codecs=codecs, fill=0)

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    assert_identical(arr[...], data)
    assert_identical(arr[..., ::-3], data[..., ::-3])
    assert_identical(arr[-1], data[-1])


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("chain", ["bytes-le", "transpose-blosc-crc32c"])
def test_unsharded_v3_arrays_read_back(writer, chain, tmp_path):
    data, fill = sample("float64")
    WRITERS[writer](tmp_path / "vol.zarr", data, grid=CHUNK, codecs=inner_chain(chain, 8),
                    fill=fill)

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    assert not arr.uses_fallback and arr.shards is None
    read_everything_back(arr, data)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_big_endian_shard_index_reads_back(writer, tmp_path):
    data, fill = sample("int32")
    codecs = sharding_codecs(CHUNK, [bytes_codec(), ZSTD], index_location="end", index_crc=True)
    codecs[0]["configuration"]["index_codecs"][0] = bytes_codec("big")
    WRITERS[writer](tmp_path / "vol.zarr", data, grid=SHARD, codecs=codecs, fill=fill)

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    read_everything_back(arr, data)


@pytest.mark.parametrize(("encoding", "separator", "first_key"), [
    ("default", "/", "c/0/0/0"), ("default", ".", "c.0.0.0"), ("v2", ".", "0.0.0"),
    ("v2", "/", "0/0/0"),
])
def test_every_chunk_key_encoding_reads_back(encoding, separator, first_key, tmp_path):
    import zarr

    data, fill = sample("uint8")
    z = zarr.create_array(store=str(tmp_path / "vol.zarr"), shape=SHAPE, chunks=CHUNK,
                          shards=SHARD, dtype="uint8", fill_value=fill,
                          chunk_key_encoding={"name": encoding, "separator": separator})
    z[...] = data
    assert (tmp_path / "vol.zarr" / first_key).is_file()

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    read_everything_back(arr, data)


def test_empty_and_zero_dimensional_arrays(tmp_path):
    import zarr

    zarr.create_array(store=str(tmp_path / "empty.zarr"), shape=(0, 10), chunks=(4, 4),
                      shards=(8, 8), dtype="float32")
    scalar = zarr.create_array(store=str(tmp_path / "scalar.zarr"), shape=(), dtype="float64",
                               fill_value=3.0)
    scalar[...] = 5.0

    empty = napari_zshard.open_array(tmp_path / "empty.zarr", cache=EngineCache())
    zero_d = napari_zshard.open_array(tmp_path / "scalar.zarr", cache=EngineCache())

    assert empty[...].shape == (0, 10) and empty.to_dask().compute().shape == (0, 10)
    assert zero_d.shape == () and zero_d[()] == 5.0


# -- Zarr v2 (OME-Zarr 0.4 data) --------------------------------------------------------------

def v2_compressor(name: str):
    import numcodecs

    return {"blosc": numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.BITSHUFFLE),
            "zstd": numcodecs.Zstd(level=1), "gzip": numcodecs.GZip(level=4),
            "none": None}[name]


def write_v2(path: Path, data: np.ndarray, *, order: str, compressor: str, separator: str,
             fill, filters=None) -> None:
    import zarr

    z = zarr.create_array(store=str(path), shape=data.shape, chunks=CHUNK, dtype=data.dtype,
                          zarr_format=2, order=order, filters=filters,
                          compressors=v2_compressor(compressor) or None,
                          chunk_key_encoding={"name": "v2", "separator": separator},
                          fill_value=fill, overwrite=True)
    z[...] = data


V2_CASES = [
    ("C", "blosc", ".", "uint16"), ("F", "blosc", "/", ">i4"), ("C", "zstd", "/", "float32"),
    ("F", "zstd", ".", "complex64"), ("C", "gzip", ".", ">f8"), ("F", "gzip", "/", "int8"),
    ("C", "none", "/", "uint64"), ("F", "none", ".", "bool"),
]


@pytest.mark.parametrize(("order", "compressor", "separator", "dtype"), V2_CASES)
def test_zarr_v2_arrays_read_back(order, compressor, separator, dtype, tmp_path):
    data, fill = sample(np.dtype(dtype).newbyteorder("=").name)
    data = data.astype(dtype)
    write_v2(tmp_path / "v2.zarr", data, order=order, compressor=compressor,
             separator=separator, fill=fill)
    meta = json.loads((tmp_path / "v2.zarr/.zarray").read_text())
    assert meta["order"] == order and meta.get("dimension_separator", ".") == separator

    arr = napari_zshard.open_array(tmp_path / "v2.zarr", cache=EngineCache())

    assert not arr.uses_fallback
    assert arr.dtype == data.dtype.newbyteorder("=")
    read_everything_back(arr, data.astype(arr.dtype))


def test_zarr_v2_filters_read_back(tmp_path):
    import numcodecs

    data, fill = sample("int16")
    write_v2(tmp_path / "v2.zarr", data, order="F", compressor="zstd", separator=".", fill=fill,
             filters=[numcodecs.Delta(dtype="<i2")])

    arr = napari_zshard.open_array(tmp_path / "v2.zarr", cache=EngineCache())

    assert not arr.uses_fallback
    read_everything_back(arr, data)


# -- codec chains the engine does not implement: zarr-python reads them -----------------------

def write_nested_sharding(path: Path, data: np.ndarray) -> None:
    inner = sharding_codecs((1, 2, 3), [bytes_codec(), GZIP], index_location="start",
                            index_crc=False)
    write_with_zarr_python(path, data, grid=SHARD, fill=0, codecs=sharding_codecs(
        CHUNK, inner, index_location="end", index_crc=True))


def write_numcodecs_chain(path: Path, data: np.ndarray) -> None:
    import zarr
    from zarr.codecs.numcodecs import Delta, Zlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "numcodecs codecs are not in the Zarr v3 spec"
        z = zarr.create_array(store=str(path), shape=data.shape, chunks=CHUNK, shards=SHARD,
                              dtype=data.dtype, filters=[Delta(dtype=str(data.dtype))],
                              compressors=[Zlib(level=3)], fill_value=0, overwrite=True)
        z[...] = data


FALLBACKS = {"nested-sharding": write_nested_sharding, "numcodecs-chain": write_numcodecs_chain}


@pytest.mark.parametrize("kind", FALLBACKS)
def test_codec_chains_the_engine_lacks_read_through_zarr_python(kind, tmp_path):
    data = np.random.default_rng(2).integers(0, 2**15, size=SHAPE, dtype="int16")
    FALLBACKS[kind](tmp_path / "vol.zarr", data)

    arr = napari_zshard.open_array(tmp_path / "vol.zarr", cache=EngineCache())

    assert arr.uses_fallback is True
    assert arr.shape == SHAPE and arr.dtype == data.dtype
    read_everything_back(arr, data)
    assert_identical(np.asarray(arr.to_dask().compute()), data)


# -- HTTP, S3 and GCS: a pairwise subset ---------------------------------------------------

@pytest.fixture
def publish(request, tmp_path):
    """Serve a store written under ``tmp_path`` over a transport; gives (url, storage_options)."""

    def _publish(transport: str, local: Path) -> tuple[str, dict | None]:
        if transport == "local":
            return str(local), None
        rel = local.relative_to(tmp_path).as_posix()
        if transport == "http":
            server = request.getfixturevalue("http_server")
            return f"{server.url}/{rel}", None
        if transport == "s3":
            from napari_zshard.testing.s3_server import upload_dir

            bucket = request.getfixturevalue("s3_bucket")
            options = request.getfixturevalue("s3_options")
            upload_dir(local, f"{bucket}/{rel}", options["endpoint_url"])
            return f"{bucket}/{rel}", dict(options)
        if transport == "gcs":
            from napari_zshard.testing.gcs_server import upload_dir as upload_to_gcs

            bucket = request.getfixturevalue("gcs_bucket")
            emulator = request.getfixturevalue("gcs_emulator")
            upload_to_gcs(local, f"{bucket}/{rel}", emulator.endpoint_url)
            return f"{bucket}/{rel}", emulator.storage_options
        raise ValueError(transport)

    return _publish


# Each transport sees both writers, both index locations and both index codecs in every
# pairing (a 2^3 orthogonal array per transport), with chains and dtypes spread over them.
REMOTE_CASES = [
    ("http", Case("zarr-python", "uint16", "blosc", "end", True)),
    ("http", Case("tensorstore", "float32", "transpose-zstd", "start", True)),
    ("http", Case("zarr-python", "complex128", "gzip", "start", False)),
    ("http", Case("tensorstore", "bool", "crc32c", "end", False)),
    ("s3", Case("zarr-python", "int64", "transpose-blosc-crc32c", "end", False)),
    ("s3", Case("tensorstore", "float16", "bytes-be", "start", False)),
    ("s3", Case("zarr-python", "int8", "zstd", "start", True)),
    ("s3", Case("tensorstore", "uint32", "bytes-le", "end", True)),
    # gs:// goes through gcsfs (the generic fsspec store): one case per writer
    ("gcs", Case("zarr-python", "uint16", "zstd", "end", True)),
    ("gcs", Case("tensorstore", "int32", "transpose-zstd", "start", False)),
]


@pytest.mark.parametrize(("transport", "case"), REMOTE_CASES,
                         ids=[f"{t}-{c}" for t, c in REMOTE_CASES])
def test_remote_array_reads_back_bit_identical(transport, case, publish, tmp_path):
    data = case.write(tmp_path / "vol.zarr")
    url, options = publish(transport, tmp_path / "vol.zarr")

    arr = napari_zshard.open_array(url, storage_options=options, cache=EngineCache())

    assert not arr.uses_fallback
    read_everything_back(arr, data)


@pytest.mark.parametrize("transport", ["http", "s3"])
def test_remote_v2_array_reads_back(transport, publish, tmp_path):
    data, fill = sample("int32")
    write_v2(tmp_path / "v2.zarr", data, order="F", compressor="blosc", separator="/",
             fill=fill)
    url, options = publish(transport, tmp_path / "v2.zarr")

    arr = napari_zshard.open_array(url, storage_options=options, cache=EngineCache())

    read_everything_back(arr, data)


@pytest.mark.parametrize(("transport", "kind"), [("http", "nested-sharding"),
                                                 ("s3", "numcodecs-chain")])
def test_remote_fallback_reads_back(transport, kind, publish, tmp_path):
    data = np.random.default_rng(3).integers(0, 2**15, size=SHAPE, dtype="int16")
    FALLBACKS[kind](tmp_path / "vol.zarr", data)
    url, options = publish(transport, tmp_path / "vol.zarr")

    arr = napari_zshard.open_array(url, storage_options=options, cache=EngineCache())

    assert arr.uses_fallback is True
    read_everything_back(arr, data)
