"""The napari geometry of an annotation edit: which level-0 voxels the field of view, a drawn
rectangle or typed numbers mean; whether a region is small enough to edit (and to show in 3D);
and how the read-only multiscale labels are masked inside the region being edited.

Everything here works on napari layers and the viewer's camera and dims, never on the store:
the widget (:mod:`napari_zshard.plugin.annotate.widget`) turns the region into an
``annotations.checkout`` and places the editable layer with the edit's own scale/translate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import AnnotationError

Region = tuple[slice, ...]

#: The largest region one edit holds (voxels): 2048 x 2048 pixels x 64 planes, the contract's
#: ``checkout(max_voxels=...)`` default; napari reads a whole plane of it on every paint call.
MAX_EDIT_VOXELS = 2048 * 2048 * 64
#: A region is shown in 3D only up to this many bytes: napari uploads it whole as one texture.
MAX_EDIT_3D_BYTES = 256 * 1024 * 1024


class RegionError(AnnotationError, ValueError):
    """A region the widget cannot check out (the message says why and what to do instead)."""


# -- text ------------------------------------------------------------------------------------
def region_text(region: Region) -> str:
    """``(slice(0, 8), slice(10, 50), ...)`` → ``"0:8, 10:50, ..."`` (what the form shows)."""
    return ", ".join(f"{s.start}:{s.stop}" for s in region)


def parse_region(text: str, shape: Sequence[int]) -> Region:
    """``"z0:z1, y0:y1, x0:x1"`` → slices; ``":"`` is the whole axis, ``"7"`` one plane.

    Bounds are not clipped: a region outside the volume is the user's mistake to hear about.
    """
    parts = [p.strip() for p in text.replace(";", ",").split(",")]
    if len(parts) != len(shape):
        raise RegionError(f"give {len(shape)} ranges (start:stop, one per axis, separated by "
                          f"commas), got {text!r}")
    out = []
    for axis, (part, n) in enumerate(zip(parts, shape, strict=True)):
        try:
            if ":" in part:
                lo, hi = (s.strip() for s in part.split(":", 1))
                start, stop = int(lo) if lo else 0, int(hi) if hi else int(n)
            else:
                start = int(part)
                stop = start + 1
        except ValueError:
            raise RegionError(f"axis {axis}: {part!r} is not start:stop (whole numbers)") from None
        if stop <= start:
            raise RegionError(f"axis {axis}: {start}:{stop} is empty")
        if start < 0 or stop > n:
            raise RegionError(f"axis {axis}: {start}:{stop} is outside the volume (0:{n})")
        out.append(slice(start, stop))
    return tuple(out)


def check_region_size(region: Region, *, max_voxels: int = MAX_EDIT_VOXELS) -> None:
    """Refuse a region larger than one edit may hold, saying how large it is and what fits."""
    shape = [s.stop - s.start for s in region]
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise RegionError(
            f"the region {' x '.join(map(str, shape))} is {voxels / 1e6:.0f} M voxels, more than "
            f"one edit holds ({max_voxels / 1e6:.0f} M, e.g. 2048 x 2048 pixels x 64 planes): "
            "zoom in, draw a smaller rectangle or take fewer planes")


def fits_3d(shape: Sequence[int], dtype: Any, *, budget: int = MAX_EDIT_3D_BYTES) -> bool:
    """Whether napari may render a region of ``shape`` whole in 3D view."""
    return math.prod(shape) * np.dtype(dtype).itemsize <= budget


# -- regions from the viewer -----------------------------------------------------------------
def _clip(lo: float, hi: float, n: int) -> slice:
    start = min(max(0, math.floor(lo)), n - 1)
    return slice(start, max(start + 1, min(n, math.ceil(hi))))


def _planes(center: float, depth: int, n: int) -> slice:
    """``depth`` planes around ``center``, shifted (not cut) at the volume's ends."""
    depth = max(1, min(int(depth), n))
    start = min(max(0, round(center) - depth // 2), n - depth)
    return slice(start, start + depth)


def _layer_point(layer, world: Sequence[float]) -> np.ndarray:
    return np.asarray(layer.world_to_data(tuple(world)), dtype=float)


def view_region(viewer, layer, *, depth: int) -> Region:
    """The level-0 voxels of ``layer`` under the canvas now, ``depth`` planes around the
    current plane on each axis not displayed (one plane on all but the last of them).

    The visible rectangle comes from the camera (center, zoom) and the canvas size in screen
    pixels, mapped through the layer's world transform, and is clipped to the volume.
    """
    if viewer.dims.ndisplay != 2:
        raise RegionError("the field of view is a 2D rectangle: switch to 2D view, or draw a "
                          "rectangle or type the region")
    height, width = canvas_size(viewer)
    zoom = camera(viewer).zoom
    displayed = list(viewer.dims.displayed)
    center = np.asarray(viewer.dims.point, dtype=float)
    cam = camera(viewer).center[-len(displayed):]
    for ax, c in zip(displayed, cam, strict=True):
        center[ax] = c
    half = {displayed[0]: height / zoom / 2, displayed[1]: width / zoom / 2}
    lo, hi = center.copy(), center.copy()
    for ax, h in half.items():
        lo[ax], hi[ax] = center[ax] - h, center[ax] + h
    return _box_region(layer, viewer, [lo, hi], depth=depth)


def shapes_region(viewer, layer, shapes, *, depth: int) -> Region:
    """The level-0 voxels of ``layer`` under the selected shapes of the Shapes layer
    ``shapes`` (else its last shape): their bounding box in the displayed plane, ``depth``
    planes around the plane they were drawn on (the current plane for 2D shapes)."""
    if len(shapes.data) == 0:
        raise RegionError(f"the Shapes layer {shapes.name!r} has no shape: draw a rectangle "
                          "over the part to edit")
    chosen = sorted(shapes.selected_data) or [len(shapes.data) - 1]
    corners = []
    world_nd = viewer.dims.ndim
    for i in chosen:
        for vertex in np.asarray(shapes.data[i], dtype=float):
            world = np.asarray(shapes.data_to_world(vertex), dtype=float)
            if world.size < world_nd:  # 2D shapes over a 3D image: at the current plane
                world = np.concatenate([np.asarray(viewer.dims.point)[:world_nd - world.size],
                                        world])
            corners.append(world)
    return _box_region(layer, viewer, corners, depth=depth)


def _box_region(layer, viewer, world_points: Sequence[np.ndarray], *, depth: int) -> Region:
    shape = tuple(layer.level_shapes[0]) if getattr(layer, "multiscale", False) else \
        tuple(layer.data.shape)
    points = np.stack([_layer_point(layer, p) for p in world_points])
    lo, hi = points.min(axis=0), points.max(axis=0)
    nd = len(shape)
    displayed = {ax - (viewer.dims.ndim - nd) for ax in viewer.dims.displayed}
    free = [ax for ax in range(nd) if ax not in displayed]
    if any(hi[ax] <= 0 or lo[ax] >= shape[ax] for ax in displayed):
        raise RegionError("the rectangle lies outside the image")
    region = []
    for ax in range(nd):
        if ax in displayed:
            sl = _clip(lo[ax], hi[ax], shape[ax])
        else:  # a plane position: the region is depth planes around it (z), one plane else
            planes = depth if ax == free[-1] else 1
            sl = _planes((lo[ax] + hi[ax]) / 2, planes, shape[ax])
        region.append(sl)
    return tuple(region)


def canvas_size(viewer) -> tuple[int, int]:
    """Canvas (height, width) in screen pixels (``viewer.canvas`` since napari 0.9)."""
    size = getattr(getattr(viewer, "canvas", None), "size", None) or getattr(
        viewer, "_canvas_size", None) or (600, 800)
    return int(size[0]), int(size[1])


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def focus(viewer, centre: Sequence[float], extent: Sequence[float]) -> None:
    """Show the world point ``centre`` (one value per data axis, the last axes displayed):
    the other axes' sliders move to it, and the camera centres on it and zooms so that
    ``extent`` (world units per axis) fills about a third of the canvas."""
    offset = viewer.dims.ndim - len(centre)
    displayed = [ax - offset for ax in viewer.dims.displayed]
    for ax, value in enumerate(centre):
        if ax not in displayed:
            viewer.dims.set_point(ax + offset, value)
    cam = camera(viewer)
    cam.center = tuple(centre[ax] for ax in displayed)
    cam.zoom = min(canvas_size(viewer)) / (3 * max(extent[ax] for ax in displayed))


# -- placing and masking ---------------------------------------------------------------------
def world_of(voxel: Sequence[float], *, region: Region, scale: Sequence[float],
             translate: Sequence[float]) -> tuple[float, ...]:
    """World coordinates of a level-0 voxel, for an edit placed at ``scale``/``translate``
    (``translate`` being where ``region``'s first voxel sits)."""
    return tuple(t + (v - s.start) * k
                 for v, s, k, t in zip(voxel, region, scale, translate, strict=True))


def level_region(region: Region, level_shape: Sequence[int], base_shape: Sequence[int]
                 ) -> Region:
    """The voxels of a coarser level that overlap ``region`` (a coarse voxel partly inside
    counts as inside: an erased object must not peek out at the region's border)."""
    out = []
    for s, n, n0 in zip(region, level_shape, base_shape, strict=True):
        f = n0 / n
        out.append(slice(math.floor(s.start / f), min(n, math.ceil(s.stop / f))))
    return tuple(out)


def _zero_inside(block: np.ndarray, *, box: Region, block_info=None) -> np.ndarray:
    where = block_info[0]["array-location"] if block_info else [(0, n) for n in block.shape]
    local = []
    for (lo, hi), s in zip(where, box, strict=True):
        a, b = max(lo, s.start), min(hi, s.stop)
        if b <= a:
            return block
        local.append(slice(a - lo, b - lo))
    out = np.array(block, copy=True)
    out[tuple(local)] = 0
    return out


def masked_levels(levels: Sequence[Any], region: Region) -> list[Any]:
    """The levels of a multiscale labels layer with ``region`` blanked (label 0) at every level,
    lazily: a block outside the region is passed through untouched, with no copy.

    The editable layer above shows the region; blanking it underneath is what lets an erased
    voxel look erased (label 0 is transparent, so the stored label would show through)."""
    import dask.array as da

    base = levels[0].shape
    out = []
    for level in levels:
        arr = level if isinstance(level, da.Array) else da.from_array(level, chunks="auto")
        box = level_region(region, arr.shape, base)
        out.append(arr.map_blocks(_zero_inside, box=box, dtype=arr.dtype,
                                  name=f"zshard-masked-{arr.name}-{region_text(box)}"))
    return out
