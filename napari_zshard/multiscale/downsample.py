"""Pyramid levels: which axes to halve, and how (mean for images, mode for labels).

Anisotropic data (say 4 µm in z, 0.5 µm in x/y) is downsampled only along its fine axes until
it is roughly isotropic, then along all spatial axes. Labels use the mode of each block, so a
coarse voxel always holds a label value that occurs in its block of the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHODS = ("mean", "mode", "max", "min", "nearest")
#: the coarsest level is at most this many voxels along every spatial axis (napari's 3D view)
COARSEST_EDGE = 256


def level_factors(shape: Sequence[int], scale: Sequence[float] | None = None, *,
                  spatial: Sequence[bool] | None = None, coarsest_edge: int = COARSEST_EDGE,
                  max_levels: int = 12) -> list[tuple[int, ...]]:
    """Per-level downsampling factors (1 or 2 per axis), level 1 first, until every spatial
    axis is at most ``coarsest_edge`` long (or cannot shrink further)."""
    nd = len(shape)
    spatial = list(spatial) if spatial is not None else [i >= nd - 3 for i in range(nd)]
    sizes = list(shape)
    voxel = [float(s) for s in (scale or [1.0] * nd)]
    out: list[tuple[int, ...]] = []
    while len(out) < max_levels and any(
            sp and n > coarsest_edge for sp, n in zip(spatial, sizes, strict=True)):
        spatial_voxels = [v for v, sp in zip(voxel, spatial, strict=True) if sp]
        coarsest, finest = max(spatial_voxels), min(spatial_voxels)
        isotropic = coarsest < 2 * finest
        factors = []
        for i in range(nd):
            # anisotropic: halve only axes that stay no coarser than ~the coarsest one
            fine = isotropic or voxel[i] * 2 <= coarsest * 1.5
            factors.append(2 if spatial[i] and sizes[i] > 1 and fine else 1)
        if all(f == 1 for f in factors):
            break
        out.append(tuple(factors))
        sizes = [-(-n // f) for n, f in zip(sizes, factors, strict=True)]
        voxel = [v * f for v, f in zip(voxel, factors, strict=True)]
    return out


def _blocks(data: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """View ``data`` (edge-padded to multiples of ``factors``) as (..., n_i, f_i, ...) with the
    block axes moved last and flattened: shape (*out_shape, prod(factors))."""
    pad = [(0, (-n) % f) for n, f in zip(data.shape, factors, strict=True)]
    if any(p[1] for p in pad):
        data = np.pad(data, pad, mode="edge")
    split = []
    for n, f in zip(data.shape, factors, strict=True):
        split += [n // f, f]
    view = data.reshape(split)
    nd = data.ndim
    order = [2 * i for i in range(nd)] + [2 * i + 1 for i in range(nd)]
    out_shape = tuple(n // f for n, f in zip(data.shape, factors, strict=True))
    return view.transpose(order).reshape(*out_shape, math.prod(factors))


#: blocks handled at once by :func:`block_mode` (bounds its temporaries to a few MiB)
_MODE_BATCH = 1 << 18


def block_mode(blocks: np.ndarray) -> np.ndarray:
    """The most frequent value of each block (last axis); ties go to the smallest value.

    Uniform blocks (all of a label's interior, all of the background: nearly every block of
    a segmentation) are their own mode; only the mixed ones are sorted and counted, a batch
    at a time, so the temporaries stay small whatever the size of ``blocks``."""
    blocks = np.asarray(blocks)
    k = blocks.shape[-1]
    flat = blocks.reshape(-1, k)
    out = flat[:, 0].copy()
    for start in range(0, len(flat), _MODE_BATCH):
        part = flat[start:start + _MODE_BATCH]
        mixed = (part != part[:, :1]).any(axis=1)
        if mixed.any():
            out[start:start + _MODE_BATCH][mixed] = _sorted_mode(part[mixed])
    return out.reshape(blocks.shape[:-1])


def _sorted_mode(blocks: np.ndarray) -> np.ndarray:
    k = blocks.shape[-1]
    s = np.sort(blocks, axis=-1)
    counts = np.zeros(s.shape, dtype=np.int32)
    for j in range(k):  # k is small (8 in 3D): count each sorted entry's occurrences
        counts += s == s[..., j:j + 1]
    best = np.argmax(counts, axis=-1)  # first maximum = smallest value among the ties
    return np.take_along_axis(s, best[..., None], axis=-1)[..., 0]


def downsample(data: np.ndarray, factors: Sequence[int], method: str = "mean") -> np.ndarray:
    """Downsample a block of data by integer ``factors`` with ``method``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if all(f == 1 for f in factors):
        return data
    if method == "nearest":
        return data[tuple(slice(None, None, f) for f in factors)]
    blocks = _blocks(np.asarray(data), factors)
    if method == "mode":
        return block_mode(blocks)
    if method == "max":
        return blocks.max(axis=-1)
    if method == "min":
        return blocks.min(axis=-1)
    mean = blocks.mean(axis=-1, dtype=np.float64)
    if data.dtype.kind in "iub":
        mean = np.rint(mean)
    return mean.astype(data.dtype)
