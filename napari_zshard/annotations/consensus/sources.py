"""The inputs of a merge: which label images, checked against the image, read shard by shard
with their coverage applied."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ...engine import EngineCache, open_array
from ...engine.metadata import ArrayMeta
from ...engine.shard_writer import iter_shards
from ...errors import AnnotationError, MetadataError, UnsupportedLabelImageError
from ...ome import parse_multiscales
from ...store import Store
from ..coverage import COVERAGE_OBJECT, RESERVED_NAMES, Coverage, coverage_of
from ..labelimage import LabelImage, label_images, open_label_image

Coords = tuple[int, ...]


class MergeInputError(AnnotationError, ValueError):
    """The inputs of a merge cannot be merged (named in the message)."""


@dataclass
class Inputs:
    """The annotators' label images (sorted by name: the order ids and ties depend on)."""

    store: Store
    names: tuple[str, ...]
    images: tuple[LabelImage, ...]
    coverages: tuple[Coverage, ...]
    skipped: tuple[str, ...]  # listed label images without any coverage ("all" only)
    meta: ArrayMeta  # level 0 of the first input: the grid every pass walks
    arrays: tuple = ()  # level 0 of each input, opened once, without cache

    def shards(self) -> list[Coords]:
        return list(iter_shards(self.meta))

    def read(self, shard: Coords) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
        """(region, values (k, ...) with 0 outside coverage, coverage (k, ...)) of a shard
        (the inputs' own dtype: 4 x 8 MiB for a 128³ uint32 shard; the arithmetic is done
        in :func:`slabs`)."""
        region = self.meta.layout.shard_region(shard)
        vals, covs = [], []
        for arr, cov in zip(self.arrays, self.coverages, strict=True):
            c = cov.mask(region)
            v = np.array(arr[region])
            v[~c] = 0
            vals.append(v)
            covs.append(c)
        return region, np.stack(vals), np.stack(covs)


def _image_level0(store: Store) -> tuple[tuple[int, ...], tuple[float, ...]]:
    from ...engine.metadata import parse_json, parse_v3

    raw = store.read("zarr.json")
    if raw is None:
        raise MetadataError(f"{store.url}: no OME-Zarr image here (no zarr.json)")
    ms = parse_multiscales(parse_json(raw, "zarr.json").get("attributes") or {},
                           f"{store.url}/zarr.json")
    if not ms:
        raise MetadataError(f"{store.url}/zarr.json: not an OME-Zarr image (no multiscales)")
    ds = ms[0].datasets[0]
    meta = parse_v3(parse_json(store.read(f"{ds.path}/zarr.json") or b"{}", ds.path),
                    f"{store.url}/{ds.path}/zarr.json")
    return meta.shape, tuple(float(s) for s in ds.scale)


def _level0_scale(li: LabelImage) -> tuple[float, ...]:
    from ...engine.metadata import parse_json

    doc = parse_json(li.store.read(f"{li.prefix}/zarr.json") or b"{}", li.prefix)
    ms = parse_multiscales(doc.get("attributes") or {}, f"{li.store.url}/{li.prefix}")
    return tuple(float(s) for s in ms[0].datasets[0].scale)


def open_inputs(store: Store, inputs: Sequence[str] | str, *, output: str) -> Inputs:
    """Check and open the inputs; ``"all"`` takes every listed label image but the outputs
    and those without coverage."""
    listed = label_images(store)
    everything = isinstance(inputs, str) and inputs == "all"
    if isinstance(inputs, str) and not everything:
        inputs = [inputs]
    names = [n for n in listed if n not in RESERVED_NAMES and n != output] if everything \
        else list(inputs)
    if not names:
        raise MergeInputError(f"{store.url}: nothing to merge (no annotator label images"
                              f"{'' if everything else ' given'}; listed: {listed or 'none'})")
    for n in names:
        if n in RESERVED_NAMES or n == output:
            raise MergeInputError(f"{n!r} is a merge output, not an annotator's label image")
    if len(set(names)) != len(names):
        raise MergeInputError(f"inputs named twice: {names}")
    names = sorted(names)
    shape, scale = _image_level0(store)
    images, covs, bad, skipped, kept = [], [], [], [], []
    for n in names:
        try:
            li = open_label_image(store, n)
        except (MetadataError, UnsupportedLabelImageError) as e:
            raise MergeInputError(f"input {n!r} is not a label image that can be merged: {e}"
                                  ) from e
        if everything and li.store.read(li.zshard_key(COVERAGE_OBJECT)) is None:
            skipped.append(n)  # never reviewed anything (e.g. a label image of another kind)
            continue
        li_scale = _level0_scale(li)
        if li.metas[0].shape != shape or not np.allclose(li_scale, scale):
            bad.append(f"{n} (shape {li.metas[0].shape}, scale {li_scale})")
            continue
        cov = coverage_of(li)
        if not cov.any:
            if everything:
                skipped.append(n)
                continue
            raise MergeInputError(f"input {n!r} has no coverage: nobody marked any region of it "
                                  "as reviewed (mark_reviewed), so it has no votes to give")
        images.append(li)
        covs.append(cov)
        kept.append(n)
    if bad:
        raise MergeInputError(f"inputs that do not match the image (shape {shape}, scale "
                              f"{scale}): {', '.join(bad)}")
    if not kept:
        raise MergeInputError(f"{store.url}: no input has any coverage (skipped: {skipped})")
    metas = {(li.metas[0].chunk_shape, li.metas[0].grid_shape) for li in images}
    if len(metas) > 1:
        raise MergeInputError(f"inputs with different chunking/sharding: {metas}")
    return Inputs(store=store, names=tuple(kept), images=tuple(images), coverages=tuple(covs),
                  skipped=tuple(skipped), meta=images[0].metas[0],
                  arrays=tuple(open_array(li.store.child(f"{li.prefix}/{li.paths[0]}"),
                                          readahead=False, cache=EngineCache(0))
                               for li in images))


#: voxels per slab of the per-voxel arithmetic (a few arrays of k x this many int64 each)
SLAB_VOXELS = 1 << 18


def slabs(region: tuple[slice, ...]
          ) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """(local, global) slices of ``region`` in slabs along axis 0 of about
    :data:`SLAB_VOXELS` voxels: the temporaries of a vote stay a few MiB per thread."""
    plane = int(np.prod([s.stop - s.start for s in region[1:]]))
    depth = max(1, SLAB_VOXELS // max(1, plane))
    n = region[0].stop - region[0].start
    for lo in range(0, n, depth):
        hi = min(n, lo + depth)
        local = (slice(lo, hi), *(slice(None) for _ in region[1:]))
        yield local, (slice(region[0].start + lo, region[0].start + hi), *region[1:])
