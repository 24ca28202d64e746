"""A generated sharded OME-Zarr 0.5 sample: cells in a 3D volume, a pyramid and a labels image.

Used by the README's main command, napari's File ▸ Open Sample and the tests; generated on first
use into a cache directory (a couple of seconds), then reused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .engine.create import create_array
from .engine.shard_writer import write_array_data
from .ome import Axis, Dataset, Multiscale
from .store import Store, open_store

SAMPLE_SHAPE = (128, 512, 512)
SAMPLE_VERSION = 2


def cache_dir() -> Path:
    """``$NAPARI_ZSHARD_CACHE``, else ``$XDG_CACHE_HOME/napari-zshard`` (``~/.cache/...``)."""
    if os.environ.get("NAPARI_ZSHARD_CACHE"):
        return Path(os.environ["NAPARI_ZSHARD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-zshard"


def make_cells(shape: Sequence[int] = SAMPLE_SHAPE, *, n_cells: int = 300, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 volume of bright ellipsoidal cells on textured background, and their labels."""
    rng = np.random.default_rng(seed)
    shape = tuple(shape)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    image = (300 + 120 * np.sin(z[:, None, None] / 9.0) * np.cos(y[None, :, None] / 23.0)
             * np.sin(x[None, None, :] / 17.0)).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint32)
    for label in range(1, n_cells + 1):
        center = rng.uniform(0, shape)
        radii = rng.uniform(6, 18, size=3) * np.array([0.7, 1, 1])
        lo = np.maximum(0, (center - radii).astype(int))
        hi = np.minimum(shape, (center + radii).astype(int) + 1)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        r2 = ((zz - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2 + \
            ((xx - center[2]) / radii[2]) ** 2
        inside = r2 <= 1
        box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        image[box] += np.where(inside, 2500 * (1.2 - r2), 0).astype(np.float32)
        labels[box][inside] = label
    image += rng.normal(0, 40, size=shape).astype(np.float32)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def _downsample_mean(a: np.ndarray) -> np.ndarray:
    s = tuple(n // 2 * 2 for n in a.shape)
    a = a[tuple(slice(0, n) for n in s)].astype(np.float32)
    return a.reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5)).astype(
        np.uint16)


def _group_json(attributes: dict) -> bytes:
    """A group's ``zarr.json``, produced by zarr-python's metadata model."""
    import zarr
    from zarr.storage import MemoryStore

    docs: dict = {}
    zarr.create_group(MemoryStore(docs), attributes=attributes, zarr_format=3)
    return docs["zarr.json"].to_bytes()


def write_image_pyramid(store: Store, levels: list[np.ndarray], *, name: str,
                        extra_attrs: dict | None = None, chunks=(64, 64, 64),
                        shards=(128, 256, 256)) -> None:
    axes = (Axis("z", "space", "micrometer"), Axis("y", "space", "micrometer"),
            Axis("x", "space", "micrometer"))
    datasets = []
    for i, level in enumerate(levels):
        sub = store.child(str(i))
        f = 2.0 ** i
        lchunks = tuple(min(c, n) for c, n in zip(chunks, level.shape, strict=True))
        # whole chunks per shard, no more than the level needs
        lshards = tuple(lc * min(s // c, -(-n // lc)) for lc, s, c, n in
                        zip(lchunks, shards, chunks, level.shape, strict=True))
        sub_store, meta = create_array(
            sub, shape=level.shape, dtype=level.dtype, chunks=lchunks, shards=lshards,
            dimension_names=[a.name for a in axes], overwrite=True)
        for _ in write_array_data(sub_store, meta, level):
            pass
        datasets.append(Dataset(str(i), (f, f, f), ((f - 1) / 2,) * 3 if i else None))
    ms = Multiscale(axes=axes, datasets=tuple(datasets), name=name)
    ome = {"version": "0.5", "multiscales": [ms.to_json()], **(extra_attrs or {})}
    store.write("zarr.json", _group_json({"ome": ome}))


def make_sample(path: str | os.PathLike | None = None, *, shape: Sequence[int] = SAMPLE_SHAPE,
                levels: int = 3) -> Path:
    """Generate (once) the sample store and return its path.

    The group is written last, so an interrupted generation never looks complete.
    """
    target = Path(path) if path is not None else \
        cache_dir() / f"sample-cells-v{SAMPLE_VERSION}-{'x'.join(map(str, shape))}.zarr"
    if (target / "zarr.json").is_file():
        return target
    image, labels = make_cells(shape)
    image_levels, label_levels = [image], [labels]
    for _ in range(levels - 1):
        image_levels.append(_downsample_mean(image_levels[-1]))
        label_levels.append(label_levels[-1][::2, ::2, ::2])
    store = open_store(target)
    window = {"min": 0, "max": 65535, "start": int(np.percentile(image_levels[-1], 1)),
              "end": int(np.percentile(image_levels[-1], 99.8))}
    label_store = store.child("labels")
    write_image_pyramid(label_store.child("cells"), label_levels, name="cells",
                        extra_attrs={"image-label": {"version": "0.5", "source":
                                                     {"image": "../../"}}})
    label_store.write("zarr.json", _group_json({"ome": {"version": "0.5", "labels": ["cells"]}}))
    omero = {"channels": [{"label": "cells", "color": "FFFFFF", "window": window,
                           "active": True}], "rdefs": {"model": "greyscale"}}
    write_image_pyramid(store, image_levels, name="cells", extra_attrs={"omero": omero})
    return target
