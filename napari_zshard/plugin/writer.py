"""npe2 writers ("sharded zarr" in File ▸ Save Layers) and the layer → OME-Zarr mapping that the
"Save as sharded zarr…" widget shares. The saving itself is napari-free: multiscale.write."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MetadataError, StoreError
from ..multiscale.staging import check_destination, holds_zarr_store
from ..multiscale.write import (
    DEFAULT_AXIS_NAMES,
    ImageSpec,
    WriteOptions,
    save_image,
    write_image,
)
from ..ome import Axis, Channel, ImageLabel
from ..ome.omero import GRAY
from .layer_data import LABELS_SUFFIX

LayerTuple = tuple[Any, dict[str, Any], str]
SAVABLE = ("image", "labels")


def zarr_path(path: str) -> str:
    """napari passes the name exactly as typed: append ``.zarr`` when it is missing."""
    path = os.fspath(path).rstrip("/")
    return path if path.endswith(".zarr") else path + ".zarr"


_AXIS_KINDS = {"t": "time", "time": "time", "c": "channel", "ch": "channel",
               "channel": "channel"}


def _axes(meta: dict[str, Any], ndim: int) -> tuple[Axis, ...]:
    labels = list(meta.get("axis_labels") or [])[-ndim:]
    units = [str(u) if u is not None else None for u in (meta.get("units") or [])][-ndim:]
    default = DEFAULT_AXIS_NAMES.get(ndim) or [f"dim_{i}" for i in range(ndim)]
    names = [lab if lab and not lab.startswith("axis ") and not lab.lstrip("-").isdigit()
             else default[i] for i, lab in enumerate(labels or default)]
    if len(set(names)) != len(names):
        names = list(default)
    axes = []
    for i, name in enumerate(names):
        kind = _AXIS_KINDS.get(name.lower(), "space")
        unit = units[i] if i < len(units) and kind != "channel" and units[i] != "pixel" \
            else None
        axes.append(Axis(name, kind, unit))
    return tuple(axes)


def _color_of(colormap: Any) -> str:
    """The top color of an image colormap as omero ``RRGGBB`` (``FFFFFF`` for gray and for
    what cannot be told). napari hands writers the colormap as a dict; scripts calling the
    writer directly may pass a name (``"magenta"``) or a napari ``Colormap``."""
    colors = colormap.get("colors") if isinstance(colormap, dict) else \
        getattr(colormap, "colors", None)
    if colors is None and isinstance(colormap, str):
        try:
            from napari.utils.colormaps import ensure_colormap

            colors = ensure_colormap(colormap).colors
        except (ImportError, KeyError, ValueError):
            colors = None
    if colors is None or not len(colors):
        return GRAY
    rgba = np.asarray(colors, dtype=float)[-1]
    return "".join(f"{round(float(c) * 255):02X}" for c in rgba[:3])


def _json_value(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/inf are not JSON: a missing value
    return value


def _label_info(meta: dict[str, Any]) -> ImageLabel:
    colormap = meta.get("colormap")
    colors = {}
    color_dict = getattr(colormap, "color_dict", None)
    if color_dict:
        for value, rgba in color_dict.items():
            if value is not None and value != 0:
                colors[int(value)] = tuple(float(c) for c in np.asarray(rgba)[:4])
    properties = []
    features = meta.get("features")
    if features is not None and len(features) and "index" in features:
        for row in features.to_dict("records"):
            entry = {"label-value": int(row.pop("index"))}
            entry.update({k: _json_value(v) for k, v in row.items()})
            properties.append(entry)
    if colors and properties:
        # Validators (ome-zarr-models) want colors and properties for the same label values:
        # give described labels the color napari shows them in, colored ones an empty entry.
        described = {p["label-value"] for p in properties}
        for value in sorted(described - set(colors)):
            rgba = np.asarray(colormap.map(np.array([value])))[0]
            colors[value] = tuple(float(c) for c in rgba[:4])
        properties += [{"label-value": v} for v in sorted(set(colors) - described)]
    return ImageLabel(colors=colors, properties=properties)


def _levels(data: Any, meta: dict[str, Any]) -> list[Any]:
    if not meta.get("multiscale"):
        return [data]
    if (meta.get("metadata") or {}).get("napari_zshard", {}).get("virtual_levels"):
        # opened with a pyramid too shallow for 3D view (the reader appended a virtual level):
        # save level 0 alone, so the save builds a pyramid down to a 3D-viewable level
        return [data[0]]
    return list(data)


#: omero colors of an RGB(A) layer's channels
RGBA_CHANNELS = (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"), ("A", "FFFFFF"))


def _channels_first(level: Any) -> Any:
    """An RGB(A) level (..., y, x, c) as (c, ..., y, x), lazily: OME-Zarr wants channels
    before space."""
    if isinstance(level, np.ndarray) or hasattr(level, "__array_function__"):
        return np.moveaxis(level, -1, 0)  # a view of numpy, a lazy dask array
    import dask.array as da

    return da.moveaxis(da.from_array(level, chunks="auto"), -1, 0)


def layer_spec(data: Any, meta: dict[str, Any], layer_type: str) -> tuple[list[Any], ImageSpec]:
    """A napari layer (data, meta, type) → the levels and :class:`ImageSpec` to save.

    An RGB(A) image is saved with a leading channel axis of red, green and blue channels
    (OME-Zarr has no RGB pixel type); it reopens as one layer per channel.
    """
    if layer_type not in SAVABLE:
        raise MetadataError(f"{meta.get('name', 'this layer')!r} is a {layer_type} layer: "
                            "sharded zarr saves image and labels layers only")
    levels = _levels(data, meta)
    rgb = layer_type == "image" and bool(meta.get("rgb"))
    if rgb:
        levels = [_channels_first(level) for level in levels]
    ndim = len(levels[0].shape) - rgb
    scale = tuple(float(s) for s in meta["scale"]) if meta.get("scale") is not None else None
    translate = tuple(float(t) for t in meta["translate"]) \
        if meta.get("translate") is not None else None
    axes = _axes(meta, ndim)
    if rgb:
        axes = (Axis("c", "channel"), *axes)
        scale = (1.0, *(scale or (1.0,) * ndim))
        translate = (0.0, *(translate or (0.0,) * ndim))
    spec = ImageSpec(name=str(meta.get("name") or layer_type), axes=axes, scale=scale,
                     translate=translate, kind=layer_type)
    if layer_type == "labels":
        spec.image_label = _label_info(meta)
    elif meta.get("contrast_limits") is not None:
        lo, hi = (float(v) for v in meta["contrast_limits"])
        visible = meta.get("visible") is not False
        spec.contrast_limits = (lo, hi)
        if rgb:
            spec.channels = [Channel(label=f"{spec.name} {letter}", color=color, window=(lo, hi),
                                     active=visible)
                             for letter, color in RGBA_CHANNELS[:levels[0].shape[0]]]
        else:
            spec.channels = [Channel(label=spec.name, color=_color_of(meta.get("colormap")),
                                     window=(lo, hi), active=visible)]
    return levels, spec


def plan_save(path: str, layers: Sequence[LayerTuple]):
    """Which layer becomes the image and which become its ``labels/``, as save arguments."""
    for _, meta, layer_type in layers:
        if layer_type not in SAVABLE:
            raise MetadataError(f"{meta.get('name', 'a layer')!r} is a {layer_type} layer: "
                                "sharded zarr saves image and labels layers only")
    images = [t for t in layers if t[2] == "image"]
    labels = [t for t in layers if t[2] == "labels"]
    if len(images) > 1:
        raise MetadataError("sharded zarr saves one image (with any number of labels) per "
                            "store: save the other images separately")
    if not images and len(labels) > 1:
        # OME-Zarr keeps label images in the labels/ group of the image they annotate
        raise MetadataError("sharded zarr saves labels layers together with the image they "
                            "belong to: select that image as well, or save each labels layer "
                            "on its own")
    check_destination(path)
    root = images[0] if images else labels.pop(0)
    levels, spec = layer_spec(*root)
    label_specs = {}
    for data, meta, layer_type in labels:
        label_levels, label_spec = layer_spec(data, meta, layer_type)
        # "cells (labels)" is how the reader names the labels "cells" of the image "cells"
        label_spec.name = label_spec.name.removesuffix(LABELS_SUFFIX) or label_spec.name
        name = _safe_label_name(label_spec.name, label_specs)
        label_specs[name] = (label_levels, label_spec)
    return zarr_path(path), levels, spec, label_specs


def _safe_label_name(name: str, taken: dict) -> str:
    clean = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "labels"
    candidate, i = clean, 1
    while candidate in taken:
        i += 1
        candidate = f"{clean}_{i}"
    return candidate


#: What a script is told when File ▸ Save Layers would replace a store (nobody to ask).
HOW_TO_OVERWRITE = (
    "it is only replaced when asked to: File ▸ Save Layers in the napari window asks; "
    "File ▸ IO utilities ▸ Save as sharded zarr… has an 'overwrite' box; from Python, "
    "napari_zshard.save_image(..., options=WriteOptions(overwrite=True)); from a shell, "
    "zshard convert SRC DST --overwrite. Or delete or rename it first.")


def write_layers(path: str, layer_data: list[LayerTuple]) -> list[str]:
    """File ▸ Save Layers ▸ sharded zarr: images and labels → one OME-Zarr 0.5 image.

    napari passes writers no "replace?" answer, so an existing store is handled here: inside
    a running napari window the user is asked (Replace / Cancel); from a script the save is
    refused, naming the ways to overwrite. A replacement is written beside the old store and
    swapped in when complete (``multiscale.staging``); only a Zarr store is ever replaced.
    """
    target, levels, spec, labels = plan_save(path, layer_data)
    options = WriteOptions()
    if holds_zarr_store(target):
        if not _window_is_running():
            raise StoreError(f"{target} already exists: {HOW_TO_OVERWRITE}")
        if not _ask_to_replace(target):
            warnings.warn(f"{target} was kept: Replace was not chosen, nothing was saved",
                          stacklevel=2)
            return []
        options.overwrite = True
    save_image(target, levels, spec, labels=labels or None, options=options)
    return [target]


def _window_is_running() -> bool:
    """Inside a running napari window: a napari viewer exists and this is the Qt thread, with
    its event loop running (napari's Save dialog). A script — ``viewer.layers.save`` before
    ``napari.run()``, ``npe2.write`` — has no loop running, and nobody to answer."""
    if "qtpy" not in sys.modules or "napari" not in sys.modules:
        return False  # no Qt loaded: no window
    from qtpy.QtCore import QThread
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    here = QThread.currentThread()
    if app is None or here != app.thread() or here.loopLevel() < 1:
        return False
    import napari

    return napari.current_viewer() is not None


def _ask_to_replace(target: str) -> bool:
    """Replace / Cancel, asked in a dialog over the napari window (Cancel is the default)."""
    from qtpy.QtWidgets import QApplication, QMessageBox

    box = QMessageBox(QApplication.activeWindow())
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Replace the existing store?")
    box.setText(f"{target} already exists.")
    box.setInformativeText("Replace it with the layers being saved? The existing store stays "
                           "as it is until the new one is complete.")
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(cancel)
    box.exec()
    return box.clickedButton() == replace


def save_steps(path: str, layer_data: list[LayerTuple], options: WriteOptions,
               image_method: str | None = None):
    """The same save as a generator of progress (for the widget's background worker).
    ``image_method`` downsamples the image's pyramid (labels always use the mode)."""
    target, levels, spec, labels = plan_save(path, layer_data)
    if spec.kind == "image" and image_method:
        spec.method = image_method
    return target, write_image(target, levels, spec, labels=labels or None, options=options)
