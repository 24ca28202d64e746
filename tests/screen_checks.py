"""A volume whose planes are recognisable on screen, and how to read them back off a screenshot."""

import numpy as np

from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_writer import write_array_data


def left_right_volume(n_planes=64, size=128):
    """Plane z shows 40+z on its left half and 250-z on its right half."""
    z = np.arange(n_planes, dtype=np.int32)[:, None, None]
    vol = np.empty((n_planes, size, size), np.uint8)
    vol[:, :, : size // 2] = 40 + (z % 200)
    vol[:, :, size // 2:] = 250 - (z % 200)
    return vol


def write_volume(path, vol, chunks=(16, 32, 32), shards=(32, 64, 64)):
    store, meta = create_array(path, shape=vol.shape, dtype=vol.dtype, chunks=chunks,
                               shards=shards)
    for _ in write_array_data(store, meta, vol):
        pass
    return path


def screen_halves(viewer):
    """Mean colour of the left and right quarter-points of the canvas's middle row; None while
    that row is still all black (nothing drawn yet, e.g. async slicing still loading)."""
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    row = shot[shot.shape[0] // 2]
    content = np.flatnonzero(row.sum(axis=1) > 0)
    if content.size == 0:
        return None
    lo, hi = content[0], content[-1]
    width = hi - lo
    return row[lo + width // 4].mean(), row[lo + 3 * width // 4].mean()


def shows_plane(viewer, vol, z, tolerance=3):
    halves = screen_halves(viewer)
    if halves is None:
        return False
    left, right = halves
    return abs(left - vol[z, 0, 0]) <= tolerance and abs(right - vol[z, 0, -1]) <= tolerance
