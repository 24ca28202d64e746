"""The viewer benchmark's volume: a sharded OME-Zarr 0.5 pyramid, written by napari-zshard's writer
or (``--writer zarr-python``) with every level's array rewritten by zarr-python with its own
defaults — its inner-chunk order and its zstd level 0 with crc32c — as ome-zarr-py and most
converters leave it, under the same OME metadata.

The voxels come from the read benchmark's ``StructuredField`` (cells on a dim, noisy background,
compressing about as much as real fluorescence data). Level 0 is generated block by block, each
coarser level is a 2x mean downsampling of the one above, and the whole pyramid is written with
:func:`napari_zshard.sample.write_image_pyramid` (64³ inner chunks, 256³ shards, zstd + crc32c).
The group carries an ``omero`` window, so no reader computes contrast limits at open time.

Generation is deterministic and cached: a marker file records the parameters and a store whose
marker matches is reused.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MARKER = "bench-viewer-volume.json"
GENERATOR_VERSION = 1  # bump when the data or the layout written below changes


@dataclass(frozen=True)
class PyramidSpec:
    shape: tuple[int, int, int]
    chunk: int = 64  # inner chunk edge (the decode unit)
    shard: int = 256  # shard edge (one object)
    min_edge: int = 128  # stop downsampling once y and x are at most this
    seed: int = 20240601
    writer: str = "zshard"  # or "zarr-python"

    @property
    def name(self) -> str:
        suffix = "" if self.writer == "zshard" else f"-{self.writer}"
        return "viewer-{}{}.zarr".format("x".join(map(str, self.shape)), suffix)

    def level_shapes(self) -> list[tuple[int, int, int]]:
        shapes = [self.shape]
        while max(shapes[-1][1:]) > self.min_edge and min(shapes[-1]) >= 2:
            shapes.append(tuple(n // 2 for n in shapes[-1]))  # type: ignore[arg-type]
        return shapes

    def marker(self) -> dict:
        fields = asdict(self)
        if self.writer == "zshard":  # markers written before there was a choice still match
            del fields["writer"]
        return {**fields, "shape": list(self.shape), "generator": GENERATOR_VERSION}


def downsample_mean(a: np.ndarray) -> np.ndarray:
    """2x mean downsampling along every axis (odd trailing planes dropped)."""
    s = tuple(n // 2 * 2 for n in a.shape)
    a = a[tuple(slice(0, n) for n in s)]
    out = np.empty(tuple(n // 2 for n in s), dtype=np.float32)
    # one z pair at a time: bounded float32 temporaries for a 512 MiB level
    for z in range(out.shape[0]):
        pair = a[2 * z:2 * z + 2].astype(np.float32)
        out[z] = pair.reshape(2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(0, 2, 4))
    return np.rint(out).astype(a.dtype)


def generate_level0(spec: PyramidSpec) -> np.ndarray:
    from volume import StructuredField  # the read benchmark's synthetic cells

    field = StructuredField(spec.shape, spec.seed)
    out = np.empty(spec.shape, dtype=np.uint16)
    edge = spec.shard
    blocks = [tuple(slice(o, min(o + edge, n)) for o, n in zip((z, y, x), spec.shape,
                                                                strict=True))
              for z in range(0, spec.shape[0], edge) for y in range(0, spec.shape[1], edge)
              for x in range(0, spec.shape[2], edge)]

    def fill(block):
        out[block] = field.block(block)

    with ThreadPoolExecutor(2) as pool:  # the big numpy ufuncs release the GIL
        list(pool.map(fill, blocks))
    return out


def omero_window(coarsest: np.ndarray) -> dict:
    lo, hi = np.percentile(coarsest, [1, 99.8])
    return {"min": 0, "max": 65535, "start": int(lo), "end": int(hi)}


def ensure_pyramid(data_dir: Path, spec: PyramidSpec, log=print) -> Path:
    """The path of the benchmark pyramid below ``data_dir``, written first if missing or stale."""
    from napari_zshard.sample import write_image_pyramid
    from napari_zshard.store import open_store

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
    log(f"writing {path}: {spec.shape} uint16 pyramid (once; cached for later runs) ...")
    levels = [generate_level0(spec)]
    for shape in spec.level_shapes()[1:]:
        levels.append(downsample_mean(levels[-1]))
        assert levels[-1].shape == shape
    omero = {"channels": [{"label": "cells", "color": "FFFFFF", "active": True,
                           "window": omero_window(levels[-1])}],
             "rdefs": {"model": "greyscale"}}
    write_image_pyramid(open_store(path), levels, name="cells", extra_attrs={"omero": omero},
                        chunks=(spec.chunk,) * 3, shards=(spec.shard,) * 3)
    if spec.writer == "zarr-python":
        rewrite_with_zarr_python(path, levels, spec)
    nbytes = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raw = sum(a.nbytes for a in levels)
    log(f"  wrote {nbytes / 2**20:.0f} MiB for {raw / 2**20:.0f} MiB of voxels "
        f"({len(levels)} levels, compression {raw / nbytes:.2f}x) in "
        f"{time.perf_counter() - t0:.1f} s")
    marker.write_text(json.dumps(spec.marker(), indent=1))
    return path


def window_of(path: Path) -> tuple[float, float]:
    """The ``omero`` window stored in the group (the contrast limits every contender uses)."""
    doc = json.loads((path / "zarr.json").read_text())
    window = doc["attributes"]["ome"]["omero"]["channels"][0]["window"]
    return float(window["start"]), float(window["end"])


def load_levels(path: Path) -> list[np.ndarray]:
    """Every level as an in-memory numpy array (for napari's in-memory floor)."""
    from napari_zshard import open_image

    return [np.asarray(a[...]) for a in open_image(str(path)).arrays]


def describe(spec: PyramidSpec) -> str:
    shapes = " > ".join("x".join(map(str, s)) for s in spec.level_shapes())
    codecs = ("zstd 3 + crc32c, C-order inner chunks" if spec.writer == "zshard" else
              "zarr-python's defaults: zstd 0, no inner crc32c, its inner-chunk order")
    return (f"{shapes} uint16, {spec.chunk}^3 chunks in {spec.shard}^3 shards (edge levels "
            f"clipped), {codecs}, {math.prod(spec.shape) * 2 / 2**20:.0f} MiB at level 0")


def row_chunk_bytes(path: Path, spec: PyramidSpec, z: int) -> list[memoryview]:
    """The stored zstd frames (crc32c stripped) of every level-0 inner chunk holding plane ``z``.

    Read straight from the shard files: each ends with its index, ``(offset, nbytes)`` as
    little-endian uint64 per inner chunk in C order, then a 4-byte crc32c. napari-zshard's
    inner chunks end with a crc32c of their own, zarr-python's do not.
    """
    c, s = spec.chunk, spec.shard
    per = tuple(min(s, n) // c for n in spec.shape)  # inner chunks per shard along each axis
    n_index = math.prod(per) * 16
    crc = 4 if spec.writer == "zshard" else 0
    frames = []
    for sy in range(-(-spec.shape[1] // s)):
        for sx in range(-(-spec.shape[2] // s)):
            data = (path / "0" / "c" / str(z // s) / str(sy) / str(sx)).read_bytes()
            index = np.frombuffer(data[len(data) - n_index - 4:len(data) - 4],
                                  dtype="<u8").reshape((*per, 2))
            for offset, nbytes in index[(z % s) // c].reshape(-1, 2):
                frames.append(memoryview(data)[int(offset):int(offset + nbytes) - crc])
    return frames


def decode_floor(frames: list[memoryview], chunk_nbytes: int, repeats: int = 5) -> float:
    """Median seconds to decompress ``frames`` with numcodecs zstd on all cores, into
    preallocated buffers: what any reader pays for a cold plane of this volume."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from numcodecs import Zstd

    codec = Zstd()
    outs = [np.empty(chunk_nbytes, dtype="B") for _ in frames]
    times = []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            list(pool.map(lambda fo: codec.decode(fo[0], out=fo[1]), zip(frames, outs,
                                                                           strict=True)))
            if i:  # the first run warms the pool and the codec
                times.append(time.perf_counter() - t0)
    return float(np.median(times))


def rewrite_with_zarr_python(path: Path, levels: list[np.ndarray], spec: PyramidSpec) -> None:
    """Each level's array written again by zarr-python with its default codecs, keeping the
    group's OME metadata (the datasets' paths are read from it)."""
    import zarr

    group = json.loads((path / "zarr.json").read_text())
    datasets = group["attributes"]["ome"]["multiscales"][0]["datasets"]
    for dataset, level in zip(datasets, levels, strict=True):
        old = json.loads((path / dataset["path"] / "zarr.json").read_text())
        shutil.rmtree(path / dataset["path"])
        shard = tuple(min(spec.shard, -(-n // spec.chunk) * spec.chunk) for n in level.shape)
        arr = zarr.create_array(str(path / dataset["path"]), shape=level.shape,
                                dtype=level.dtype, chunks=(spec.chunk,) * 3, shards=shard,
                                dimension_names=old.get("dimension_names"),
                                fill_value=0, zarr_format=3)
        arr[...] = level
