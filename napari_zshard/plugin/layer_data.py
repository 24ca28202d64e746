"""ImageNode → napari layer data tuples (plain data; importing napari is not needed here)."""

from __future__ import annotations

import math
import shlex
from typing import Any

import numpy as np

from ..multiscale import ImageNode
from ..multiscale.downsample import level_factors
from .consensus_layers import arrange

#: The coarsest level napari may have to render whole in 3D view (bytes of one volume).
MAX_3D_BYTES = 512 * 1024 * 1024
#: Up to this many bytes per volume, a coarsest level too big for 3D is shown in 3D through a
#: strided preview of it (one read of about that much); above, reading it would take minutes
#: and the preview is blank.
MAX_PREVIEW_BYTES = 4 * 1024 ** 3
#: Below this many elements the coarsest level is read whole to compute contrast limits.
SMALL_LEVEL = 4 * 1024 * 1024


def _drop(values, axis: int | None):
    if values is None or axis is None:
        return values
    return tuple(v for i, v in enumerate(values) if i != axis)


def _range_of(arr) -> tuple[float, float]:
    if arr.size <= SMALL_LEVEL:
        data = np.asarray(arr[...])
    else:  # the middle plane of the coarsest level: one read, whatever the volume size
        mid = tuple(n // 2 for n in arr.shape[:-2])
        data = np.asarray(arr[mid])
    if data.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    return (lo, hi) if hi > lo else (lo, lo + 1)


def contrast_limits(node: ImageNode) -> list[tuple[float, float]] | tuple[float, float]:
    """From ``omero`` windows, else the limits stored at write time, else the coarsest level."""
    caxis = node.channel_axis
    n_channels = node.shape[caxis] if caxis is not None else 1
    windows = [c.window for c in node.channels]
    if len(windows) >= n_channels and all(windows[:n_channels]):
        limits = [w for w in windows[:n_channels]]
    elif node.contrast_limits is not None:
        limits = [node.contrast_limits] * n_channels
    else:
        coarse = node.arrays[-1]
        if caxis is None:
            limits = [_range_of(coarse)]
        else:
            limits = []
            for c in range(n_channels):
                index = tuple(c if i == caxis else slice(None) for i in range(coarse.ndim))
                limits.append(_range_of(_ChannelView(coarse, index)))
    return limits if caxis is not None else limits[0]


class _ChannelView:
    """One channel of an array, sliceable like the array minus the channel axis."""

    def __init__(self, arr, index):
        self.arr, self.index = arr, index
        self.shape = tuple(n for n, i in zip(arr.shape, index, strict=True)
                           if isinstance(i, slice))
        self.size = math.prod(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if key == (Ellipsis,):
            key = ()
        it = iter(key)
        full = tuple(i if not isinstance(i, slice) else next(it, slice(None)) for i in self.index)
        return self.arr[full]


def volume_bytes(node: ImageNode, shape: tuple[int, ...] | None = None) -> int:
    """Bytes of one 3D picture of a level of ``node`` (its spatial axes only; the coarsest
    level by default): what napari reads and renders whole in 3D view."""
    shape = node.arrays[-1].shape if shape is None else shape
    return math.prod(shape[i] for i in node.spatial_axes) * node.dtype.itemsize


def coarsest_too_big_for_3d(node: ImageNode) -> bool:
    return volume_bytes(node) > MAX_3D_BYTES


def preview_strides(node: ImageNode) -> tuple[int, ...] | None:
    """Per-axis steps that subsample the coarsest stored level to a 3D-renderable volume
    (every spatial axis at most ``COARSEST_EDGE``, at most ``MAX_3D_BYTES``; other axes kept),
    or None when that level is small enough already (or cannot shrink)."""
    if not coarsest_too_big_for_3d(node):
        return None
    coarse = node.arrays[-1].shape
    spatial = [i in node.spatial_axes for i in range(len(coarse))]
    voxel = None  # the coarsest level's voxel size: anisotropic data is halved where fine
    if node.scale is not None and len(node.scale) == len(coarse):
        voxel = [s * n0 / max(1, n) for s, n0, n in zip(node.scale, node.shape, coarse,
                                                        strict=True)]
    strides = [1] * len(coarse)
    for factors in level_factors(coarse, voxel, spatial=spatial):
        strides = [s * f for s, f in zip(strides, factors, strict=True)]

    def shape() -> tuple[int, ...]:
        return tuple(-(-n // s) for n, s in zip(coarse, strides, strict=True))

    while volume_bytes(node, shape()) > MAX_3D_BYTES and any(
            sp and n > 1 for sp, n in zip(spatial, shape(), strict=True)):
        strides = [s * 2 if sp and n > 1 else s
                   for s, sp, n in zip(strides, spatial, shape(), strict=True)]
    return tuple(strides) if math.prod(shape()) < math.prod(coarse) else None


def virtual_levels(node: ImageNode, coarsest: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """The level appended below the stored ones so that napari's 3D view, which renders the
    coarsest level whole, gets a small one; and its description for the layer metadata.

    One level only, so 2D view keeps to the stored levels unless zoomed far out. It is a
    strided subsample of ``coarsest`` (a lazy dask slice: aliased, never averaged, so labels
    stay labels) when the coarsest stored level is affordable to read (``MAX_PREVIEW_BYTES``),
    else a blank dask array of the fill value that reads nothing.
    """
    strides = preview_strides(node)
    if strides is None:
        return [], []
    import dask.array as da

    stored = node.arrays[-1]
    shape = tuple(-(-n // s) for n, s in zip(stored.shape, strides, strict=True))
    size = volume_bytes(node)
    if size <= MAX_PREVIEW_BYTES:
        level = coarsest[tuple(slice(None, None, s) for s in strides)]
        kind = "strided"
        reason = (f"the coarsest stored level {tuple(stored.shape)} is {_size(size)} per volume, "
                  f"above {_size(MAX_3D_BYTES)} (3D view renders it whole): "
                  f"{_steps(node, strides)} of it")
    else:
        fill = stored.fill_value if stored.fill_value is not None else 0
        chunks = (1,) * max(0, len(shape) - 2) + shape[-2:]  # one plane per block
        level = da.full(shape, fill, dtype=stored.dtype, chunks=chunks)
        kind = "blank"
        reason = (f"the coarsest stored level {tuple(stored.shape)} is {_size(size)} per volume, "
                  f"above {_size(MAX_PREVIEW_BYTES)}: reading even a preview of it would take "
                  "minutes, so 3D view shows the fill value")
    info = {"level": len(node.arrays), "shape": list(shape), "strides": list(strides),
            "kind": kind, "preview": _steps(node, strides), "reason": reason}
    return [level], [info]


def _steps(node: ImageNode, strides: tuple[int, ...]) -> str:
    """``one voxel in 4 along z, y, x`` (``one voxel in 2 along z, 4 along y, 4 along x``)."""
    axes = [(node.axes[i].name, strides[i]) for i in node.spatial_axes]
    if len({s for _, s in axes}) == 1:
        return f"one voxel in {axes[0][1]} along {', '.join(n for n, _ in axes)}"
    return "one voxel in " + ", ".join(f"{s} along {n}" for n, s in axes)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def too_big_warning(kwargs: dict[str, Any], src: str) -> str | None:
    """What the user is told when a layer's coarsest stored level is too big for 3D view."""
    meta = kwargs.get("metadata", {}).get("napari_zshard", {})
    if not meta.get("too_big_for_3d"):
        return None
    name = kwargs["name"] if isinstance(kwargs["name"], str) else ", ".join(kwargs["name"])
    coarsest = tuple(meta["levels"][-1])
    virtual = meta.get("virtual_levels") or []
    if virtual and virtual[0]["kind"] == "strided":
        shows = f"3D view shows a strided preview ({virtual[0]['preview']}, aliased)"
    elif virtual:
        shows = "3D view stays blank (reading even a preview would take minutes)"
    else:
        shows = "3D view has to read and render it whole"
    return (f"{name}: the coarsest stored level {coarsest} is {_size(meta['volume_bytes'])} per "
            f"volume, too large to render in 3D; {shows}. To see it in 3D, build a pyramid down "
            f"to a 3D-viewable level: zshard convert {shlex.quote(src)} DST.zarr "
            "--rebuild-pyramid (or File ▸ IO Utilities ▸ Save as sharded zarr…), then open "
            "DST.zarr.")


def _common(node: ImageNode) -> dict[str, Any]:
    caxis = node.channel_axis
    kwargs: dict[str, Any] = {
        "name": node.name,
        # The engine's chunk cache holds these bytes already: napari must not cache them twice.
        "cache": False,
        "metadata": {"napari_zshard": {
            "url": node.url, "levels": [list(a.shape) for a in node.arrays],
            "too_big_for_3d": coarsest_too_big_for_3d(node), "volume_bytes": volume_bytes(node),
        }},
    }
    names = [a.name for a in node.axes]
    if caxis is None:
        kwargs["axis_labels"] = tuple(names)
    units = [a.unit for a in node.axes]
    if all(units) and caxis is None:
        kwargs["units"] = tuple(units)
    if node.scale is not None:
        kwargs["scale"] = _drop(node.scale, caxis)
    if node.translate is not None:
        kwargs["translate"] = _drop(node.translate, caxis)
    return kwargs


def _levels(node: ImageNode, kwargs: dict[str, Any]) -> list[Any]:
    """The stored levels, then any virtual level 3D view needs (recorded in the metadata)."""
    levels = node.levels()
    extra, info = virtual_levels(node, levels[-1])
    if extra:
        levels += extra
        kwargs["metadata"]["napari_zshard"]["virtual_levels"] = info
    kwargs["multiscale"] = len(levels) > 1
    return levels


def image_layer(node: ImageNode) -> tuple[Any, dict[str, Any], str]:
    kwargs = _common(node)
    levels = _levels(node, kwargs)
    kwargs["contrast_limits"] = contrast_limits(node)
    caxis = node.channel_axis
    if caxis is not None:
        n = node.shape[caxis]
        kwargs["channel_axis"] = caxis
        labels = [c.label for c in node.channels][:n]
        kwargs["name"] = [lab or f"{node.name} [{i}]" for i, lab in
                          enumerate(labels + [None] * (n - len(labels)))]
        colors = [c.color for c in node.channels][:n]
        if len(colors) == n and all(colors):
            kwargs["colormap"] = [_colormap_for(c) for c in colors]
        if len(node.channels) >= n:  # omero "active": the channel is shown
            kwargs["visible"] = [c.active for c in node.channels[:n]]
    elif node.channels:
        if node.channels[0].color:
            kwargs["colormap"] = _colormap_for(node.channels[0].color)
        kwargs["visible"] = node.channels[0].active
    return (levels if len(levels) > 1 else levels[0], kwargs, "image")


def _colormap_for(hex_color: str):
    """A napari colormap (name, or a black→color ramp) for an ``omero`` color."""
    named = {"FFFFFF": "gray", "FF0000": "red", "00FF00": "green", "0000FF": "blue",
             "FF00FF": "magenta", "00FFFF": "cyan", "FFFF00": "yellow"}
    hex_color = hex_color.upper().lstrip("#")
    if hex_color in named:
        return named[hex_color]
    try:
        rgb = [int(hex_color[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    except ValueError:
        return "gray"
    return {"colors": [[0, 0, 0, 1], [*rgb, 1]], "name": f"omero-{hex_color}"}


def labels_layer(node: ImageNode) -> tuple[Any, dict[str, Any], str]:
    kwargs = _common(node)
    levels = _levels(node, kwargs)
    info = node.image_label
    if info is not None and info.colors:
        color_dict: dict[Any, Any] = {int(k): tuple(v) for k, v in info.colors.items()}
        color_dict.setdefault(None, (0, 0, 0, 0))
        kwargs["colormap"] = color_dict
    if info is not None and info.properties:
        columns = sorted({k for p in info.properties for k in p if k != "label-value"})
        features: dict[str, list] = {"index": [p["label-value"] for p in info.properties]}
        for col in columns:
            features[col] = [p.get(col) for p in info.properties]
        kwargs["features"] = features
    return (levels if len(levels) > 1 else levels[0], kwargs, "labels")


#: Appended to a label image's layer name when its image has the same name: napari would
#: otherwise call it "cells [1]" next to the image "cells". The writer drops it again.
LABELS_SUFFIX = " (labels)"


def layer_data(nodes: list[ImageNode]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples for ``nodes``: each image, then its label images on top."""
    out = []
    for node in nodes:
        first = labels_layer(node) if node.is_labels else image_layer(node)
        out.append(first)
        names = first[1]["name"]
        taken = set(names) if isinstance(names, list) else {names}
        labels = []
        for lab in node.labels:
            data, kwargs, kind = labels_layer(lab)
            if kwargs["name"] in taken:
                kwargs["name"] += LABELS_SUFFIX
            taken.add(kwargs["name"])
            labels.append((data, kwargs, kind))
        # a merged store (consensus and conflicts): conflicts on top, the others hidden
        out.extend(arrange(labels, node.labels))
    return out
