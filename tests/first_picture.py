"""Is a picture blank? What a user sees first (the README's command, the notebook, File ▸ Open
Sample) is checked on its pixels: lit (the cells image) and coloured (the labels over it)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Picture:
    shape: tuple[int, ...]
    lit: float  # fraction of pixels that are not black (the canvas around the data is)
    coloured: float  # fraction of pixels that are clearly not grey: labels over a grey image
    grey_levels: int  # distinct grey values: an image, not a flat fill


def describe_picture(picture: bytes | np.ndarray) -> Picture:
    """``picture``: PNG bytes or an (h, w, 3|4) uint8 array, e.g. a napari screenshot."""
    if isinstance(picture, bytes):
        import imageio.v3 as iio

        picture = iio.imread(io.BytesIO(picture), extension=".png")
    rgb = np.asarray(picture)[..., :3].astype(int)
    spread = rgb.max(axis=-1) - rgb.min(axis=-1)
    grey = rgb[spread < 8][:, 0]
    return Picture(shape=rgb.shape, lit=float((rgb.max(axis=-1) > 4).mean()),
                   coloured=float((spread > 40).mean()), grey_levels=len(np.unique(grey)))
