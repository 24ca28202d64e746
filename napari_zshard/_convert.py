"""ImageNode → napari layer data tuples (plain data; importing napari is not needed here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .multiscale import ImageNode

#: The coarsest level napari may have to render whole in 3D view.
MAX_3D_BYTES = 512 * 1024 * 1024
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


def coarsest_too_big_for_3d(node: ImageNode) -> bool:
    return node.arrays[-1].nbytes > MAX_3D_BYTES


def _common(node: ImageNode) -> dict[str, Any]:
    caxis = node.channel_axis
    kwargs: dict[str, Any] = {
        "name": node.name,
        "multiscale": len(node.arrays) > 1,
        # The engine's chunk cache holds these bytes already: napari must not cache them twice.
        "cache": False,
        "metadata": {"napari_zshard": {
            "url": node.url, "levels": [list(a.shape) for a in node.arrays],
            "too_big_for_3d": coarsest_too_big_for_3d(node)}},
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


def image_layer(node: ImageNode) -> tuple[Any, dict[str, Any], str]:
    levels = node.levels()
    kwargs = _common(node)
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
    elif node.channels and node.channels[0].color:
        kwargs["colormap"] = _colormap_for(node.channels[0].color)
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
    levels = node.levels()
    kwargs = _common(node)
    kwargs.pop("multiscale")
    kwargs["multiscale"] = len(levels) > 1
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


def layer_data(nodes: list[ImageNode]) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data tuples for ``nodes``: each image, then its label images on top."""
    out = []
    for node in nodes:
        out.append(labels_layer(node) if node.is_labels else image_layer(node))
        out.extend(labels_layer(lab) for lab in node.labels)
    return out
