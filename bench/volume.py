"""The benchmark volume: a structured stack written once as sharded Zarr v3 (by tensorstore unless
the spec says zarr-python).

The data looks like a fluorescence stack rather than random bytes, so zstd compresses it about
as much as real data (roughly 2x): a smooth 3D random field, thresholded with soft edges into
blob-like "cells" on a dim background, plus signal-dependent noise. Generation is deterministic
(fixed seeds) and cached: a marker file records the parameters, and a volume whose marker
matches is reused.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MARKER = "bench-volume.json"
GENERATOR_VERSION = 1  # bump when the data or the layout written below changes


CODECS = ("zstd", "blosc-zstd", "blosc-lz4", "gzip", "none")  # the inner compressor
WRITERS = ("tensorstore", "zarr")  # zarr-python orders a shard's inner chunks differently


@dataclass(frozen=True)
class VolumeSpec:
    shape: tuple[int, int, int]
    chunk: int = 64  # inner chunk edge (decode unit)
    shard: int = 256  # shard edge (one object)
    zstd_level: int = 3
    seed: int = 20240601
    # The store matrix's factors (bench_matrix.py); the defaults are the read benchmark's store.
    dtype: str = "uint16"
    codec: str = "zstd"  # one of CODECS
    crc32c: bool = True  # inner crc32c after the compressor
    writer: str = "tensorstore"  # one of WRITERS

    _DEFAULTS = {"dtype": "uint16", "codec": "zstd", "crc32c": True, "writer": "tensorstore"}

    @property
    def name(self) -> str:
        parts = ["vol-" + "x".join(map(str, self.shape))]
        if self.writer != "tensorstore":
            parts.append(self.writer)
        if self.codec != "zstd":
            parts.append(self.codec)
        elif self.zstd_level != 3:
            parts.append(f"zstd{self.zstd_level}")
        if not self.crc32c:
            parts.append("nocrc")
        if (self.chunk, self.shard) != (64, 256):
            parts.append(f"c{self.chunk}s{self.shard}")
        if self.dtype != "uint16":
            parts.append(self.dtype)
        return "-".join(parts) + ".zarr"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    def marker(self) -> dict:
        doc = {**asdict(self), "shape": list(self.shape), "generator": GENERATOR_VERSION}
        for k, v in self._DEFAULTS.items():  # markers written before these factors still match
            if doc[k] == v:
                del doc[k]
        return doc


# -- synthetic data ----------------------------------------------------------------------------

_SPACING = 12.0  # voxels between the coarse random lattice points (sets the blob size)
_SIGMA = 0.6 * _SPACING
_PAD = 4  # lattice points beyond each edge, so the field is smooth up to the border


class StructuredField:
    """A deterministic 3D intensity volume, evaluated block by block (continuous across blocks)."""

    def __init__(self, shape: tuple[int, ...], seed: int):
        self.shape = shape
        rng = np.random.default_rng(seed)
        lattice_shape = tuple(math.ceil(n / _SPACING) + 2 * _PAD for n in shape)
        self.lattice = rng.standard_normal(lattice_shape, dtype=np.float32)
        # The smooth field's standard deviation, measured once so thresholds are stable.
        sample = (slice(0, min(64, shape[0])), *(slice(0, min(256, n)) for n in shape[1:]))
        self.scale = float(np.std(self._smooth(sample)))
        # A bank of normal noise larger than any block; each block takes a seeded window.
        self.noise_bank = rng.standard_normal(2 * 256 ** 3, dtype=np.float32)
        self.seed = seed

    @staticmethod
    def _weights(start: int, stop: int, n_lattice: int) -> tuple[np.ndarray, int, int]:
        pos = np.arange(start, stop, dtype=np.float32)[:, None]
        centers = (np.arange(n_lattice, dtype=np.float32) - _PAD) * _SPACING
        w = np.exp(-0.5 * ((pos - centers) / _SIGMA) ** 2)
        used = np.nonzero(w.max(axis=0) > 1e-4)[0]
        lo, hi = int(used[0]), int(used[-1]) + 1
        return np.ascontiguousarray(w[:, lo:hi], dtype=np.float32), lo, hi

    def _smooth(self, block: tuple[slice, ...]) -> np.ndarray:
        """Gaussian interpolation of the coarse lattice at every voxel of ``block``."""
        (wz, z0, z1), (wy, y0, y1), (wx, x0, x1) = (
            self._weights(s.start, s.stop, n)
            for s, n in zip(block, self.lattice.shape, strict=True))
        coarse = self.lattice[z0:z1, y0:y1, x0:x1]
        a = np.tensordot(wz, coarse, axes=(1, 0))  # (nz, cy, cx)
        b = np.einsum("yj,zjk->zyk", wy, a, optimize=True)  # (nz, ny, cx)
        nz, ny, cx = b.shape
        return (b.reshape(-1, cx) @ wx.T).reshape(nz, ny, wx.shape[0])

    def block(self, block: tuple[slice, ...]) -> np.ndarray:
        """The uint16 voxels of ``block`` (step-1 slices inside the volume)."""
        cells = self._smooth(block)
        cells *= 3.0 / self.scale
        cells -= 2.4  # cells where the field exceeds 0.8 sigma (about a sixth of the volume)
        core = np.clip(cells, 1.0, 3.0)
        core -= 1.0  # brighter centres, so cells differ in brightness
        np.clip(cells, 0.0, 1.0, out=cells)
        signal = cells * cells
        signal *= 3.0 - 2.0 * cells  # smoothstep: soft cell borders
        signal *= 1200.0
        core *= 400.0
        signal += core
        signal += 120.0  # background
        noisy = signal * 0.04
        noisy += 6.0  # read noise + shot-noise-like term growing with the signal
        n = noisy.size
        key = hash(tuple(s.start for s in block)) & 0xFFFFFFFF
        offset = int(np.random.default_rng([self.seed, key]).integers(0, self.noise_bank.size - n))
        noisy *= self.noise_bank[offset:offset + n].reshape(noisy.shape)
        noisy += signal
        np.clip(noisy, 0, 65535, out=noisy)
        return noisy.astype(np.uint16)


def voxels(field: StructuredField, block: tuple[slice, ...], dtype: str) -> np.ndarray:
    """The field's voxels of ``block`` in ``dtype``: uint8 keeps the cells' contrast (/8),
    float32 is scaled so its mantissas are as noisy as measured floating-point data. Blocks
    with an edge over 256 are made in pieces (the noise bank holds 2·256³ values)."""
    if any(s.stop - s.start > 256 for s in block):
        out = np.empty([s.stop - s.start for s in block], dtype=dtype)
        for piece in _pieces(block, 256):
            inner = tuple(slice(p.start - b.start, p.stop - b.start)
                          for p, b in zip(piece, block, strict=True))
            out[inner] = voxels(field, piece, dtype)
        return out
    data = field.block(block)
    if dtype == "uint16":
        return data
    if dtype == "uint8":
        return np.minimum(data >> 3, 255).astype(np.uint8)
    if dtype == "float32":
        out = data.astype(np.float32)
        out *= np.float32(1 / 1000)
        return out
    raise ValueError(f"no synthetic data for dtype {dtype!r}")


# -- writing -----------------------------------------------------------------------------------

def inner_compressors(spec: VolumeSpec) -> list[dict]:
    """The zarr v3 JSON of the inner chunks' bytes-to-bytes codecs (compressor, then crc32c)."""
    blosc = {"clevel": 5, "shuffle": "shuffle", "typesize": spec.itemsize, "blocksize": 0}
    codec = {
        "zstd": [{"name": "zstd", "configuration": {"level": spec.zstd_level, "checksum": False}}],
        "blosc-zstd": [{"name": "blosc", "configuration": {"cname": "zstd", **blosc}}],
        "blosc-lz4": [{"name": "blosc", "configuration": {"cname": "lz4", **blosc}}],
        "gzip": [{"name": "gzip", "configuration": {"level": 5}}],
        "none": [],
    }[spec.codec]
    return codec + ([{"name": "crc32c"}] if spec.crc32c else [])


def tensorstore_spec(path: Path, spec: VolumeSpec) -> dict:
    """A zarr3 spec: shards of inner chunks (256³ of 64³ by default), bytes → compressor →
    crc32c (zstd and crc32c by default), index + crc32c at the end."""
    shard = [spec.shard] * 3  # edge shards are partial, as the spec allows
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(spec.shape),
            "data_type": spec.dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard}},
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": [{
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [spec.chunk] * 3,
                    "codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        *inner_compressors(spec),
                    ],
                    "index_codecs": [
                        {"name": "bytes", "configuration": {"endian": "little"}},
                        {"name": "crc32c"},
                    ],
                    "index_location": "end",
                },
            }],
        },
    }


class _Done:
    """A finished write, shaped like a tensorstore future."""

    def result(self) -> None:
        return None


def _tensorstore_writer(path: Path, spec: VolumeSpec):
    import tensorstore as ts

    store = ts.open(tensorstore_spec(path, spec), create=True, delete_existing=True).result()
    return lambda block, data: store[block].write(data)


def _zarr_writer(path: Path, spec: VolumeSpec):
    """zarr-python 3's own sharded writer with the same codecs (one whole shard per call)."""
    import zarr
    from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

    made = []
    for codec in inner_compressors(spec):
        conf = codec.get("configuration", {})
        if codec["name"] == "zstd":
            made.append(ZstdCodec(level=conf["level"], checksum=False))
        elif codec["name"] == "blosc":
            made.append(BloscCodec(cname=conf["cname"], clevel=conf["clevel"], shuffle="shuffle",
                                   typesize=conf["typesize"]))
        elif codec["name"] == "gzip":
            made.append(GzipCodec(level=conf["level"]))
        else:
            made.append(Crc32cCodec())
    arr = zarr.create_array(store=zarr.storage.LocalStore(path), shape=spec.shape,
                            shards=(spec.shard,) * 3, chunks=(spec.chunk,) * 3, dtype=spec.dtype,
                            compressors=made, fill_value=0, zarr_format=3, overwrite=True)

    def write(block, data):
        arr[block] = data
        return _Done()

    return write


def _pieces(region: tuple[slice, ...], edge: int) -> Iterator[tuple[slice, ...]]:
    """``region`` cut into blocks of at most ``edge`` per axis, in C order."""
    grid = [range(s.start, s.stop, edge) for s in region]
    for z in grid[0]:
        for y in grid[1]:
            for x in grid[2]:
                yield tuple(slice(o, min(o + edge, s.stop))
                            for o, s in zip((z, y, x), region, strict=True))


def _shard_blocks(spec: VolumeSpec) -> Iterator[tuple[slice, ...]]:
    return _pieces(tuple(slice(0, n) for n in spec.shape), spec.shard)


def ensure_volume(data_dir: Path, spec: VolumeSpec, log=print) -> Path:
    """The path of the benchmark volume below ``data_dir``, written first if missing or stale."""
    path = data_dir / spec.name
    marker = path / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec.marker():
                return path
        except (OSError, ValueError):
            pass
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    t0 = time.perf_counter()
    log(f"writing {path} {spec.shape} {spec.dtype} with {spec.writer} (once; cached for later "
        "runs) ...")
    field = StructuredField(spec.shape, spec.seed)
    write = _tensorstore_writer(path, spec) if spec.writer == "tensorstore" else _zarr_writer(
        path, spec)
    blocks = list(_shard_blocks(spec))
    # Two numpy workers make blocks (the big ufuncs release the GIL) while the writer
    # compresses and writes the previous ones (tensorstore on its own threads).
    with ThreadPoolExecutor(2) as pool:
        made = [pool.submit(voxels, field, b, spec.dtype) for b in blocks[:3]]
        writes = []
        for i, block in enumerate(blocks):
            data = made[i].result()
            made[i] = None  # bounded memory: a few blocks in flight
            if i + 3 < len(blocks):
                made.append(pool.submit(voxels, field, blocks[i + 3], spec.dtype))
            writes.append(write(block, data))
            if len(writes) > 2:
                writes.pop(0).result()
        for fut in writes:
            fut.result()
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raw = math.prod(spec.shape) * spec.itemsize
    log(f"  wrote {nbytes / 2**20:.0f} MiB for {raw / 2**20:.0f} MiB of voxels "
        f"(compression {raw / nbytes:.2f}x) in {time.perf_counter() - t0:.1f} s")
    if spec.writer == "tensorstore":
        check_c_order(path, spec)
    marker.write_text(json.dumps(spec.marker(), indent=1))
    return path


# -- raw shard access (for the decode floor) ---------------------------------------------------

def shard_path(root: Path, shard: tuple[int, ...]) -> Path:
    return root.joinpath("c", *map(str, shard))


def read_shard_index(data: bytes, n_chunks: int) -> np.ndarray:
    """(offset, nbytes) per inner chunk from a shard's trailing index (bytes + 4-byte crc32c)."""
    size = n_chunks * 16
    raw = np.frombuffer(data[len(data) - size - 4:len(data) - 4], dtype="<u8")
    return raw.reshape(n_chunks, 2)


def check_c_order(root: Path, spec: VolumeSpec) -> None:
    """Assert the first shard stores its inner chunks in C order (what the plane reads rely on)."""
    per = spec.shard // spec.chunk
    index = read_shard_index(shard_path(root, (0, 0, 0)).read_bytes(), per ** 3)
    offsets = index[:, 0][index[:, 0] != np.iinfo(np.uint64).max]
    if not np.all(np.diff(offsets.astype(np.int64)) > 0):
        raise RuntimeError(f"{root}: inner chunks are not stored in C order; the request "
                           "counts of this benchmark assume they are")


def chunk_bytes_for(root: Path, spec: VolumeSpec, region: tuple[slice, ...]) -> list[bytes]:
    """The stored bytes of every inner chunk ``region`` touches (to time decoding alone)."""
    c, per_axis = spec.chunk, spec.shard // spec.chunk
    per = (per_axis,) * 3
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s in region]
    shards: dict[tuple[int, ...], tuple[bytes, np.ndarray]] = {}
    out = []
    for cz in ranges[0]:
        for cy in ranges[1]:
            for cx in ranges[2]:
                key = (cz // per_axis, cy // per_axis, cx // per_axis)
                if key not in shards:
                    data = shard_path(root, key).read_bytes()
                    shards[key] = (data, read_shard_index(data, math.prod(per)))
                data, index = shards[key]
                flat = np.ravel_multi_index((cz % per_axis, cy % per_axis, cx % per_axis), per)
                offset, nbytes = (int(v) for v in index[flat])
                out.append(data[offset:offset + nbytes])
    return out


def data_dir_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
