"""napari viewers on stores: the notebook one-liner (what ``napari.view_path`` used to be,
opening with this plugin), refreshing what others committed, and ``zshard view``."""

from __future__ import annotations

import os
import time
from typing import Any

LAYER_KEYS = {"name", "contrast_limits", "colormap", "opacity", "blending", "visible",
              "gamma", "rendering"}


def view_path(path: str | os.PathLike | list, **kwargs: Any):
    """Open ``path`` (a local path or URL, or a list of them) in a new napari viewer.

    Keyword arguments that napari's ``Viewer`` takes (``title``, ``ndisplay``, ``show``...) go to
    the viewer; the rest go to ``viewer.open`` as layer keyword arguments.

    >>> viewer = napari_zshard.view_path("s3://bucket/volume.zarr")   # doctest: +SKIP
    """
    import inspect

    import napari

    viewer_params = set(inspect.signature(napari.Viewer).parameters)
    viewer_kwargs = {k: v for k, v in kwargs.items() if k in viewer_params}
    layer_kwargs = {k: v for k, v in kwargs.items() if k not in viewer_params}
    viewer = napari.Viewer(**viewer_kwargs)
    paths = [os.fspath(p) for p in path] if isinstance(path, list) else os.fspath(path)
    viewer.open(paths, plugin="napari-zshard", **layer_kwargs)
    return viewer


def refresh_layers(viewer_or_layers) -> int:
    """Show what others committed to the stores of the layers this plugin opened.

    Every level of each layer checks its shards again when next read (one index request per
    shard, once) and reads again only the shards whose identity changed; the layers then
    redraw. Commits made from this process show without it. Returns how many layers were
    refreshed.

    >>> napari_zshard.refresh_layers(viewer)   # doctest: +SKIP
    """
    layers = getattr(viewer_or_layers, "layers", viewer_or_layers)
    refreshed = 0
    for layer in layers:
        levels = layer.data if getattr(layer, "multiscale", False) else [layer.data]
        sources = [s for s in (getattr(level, "_source", None) for level in levels)
                   if s is not None]
        for source in sources:
            source.refresh()
        if sources:
            layer.refresh()
            refreshed += 1
    return refreshed


def show_store(path: str | None, *, ndisplay: int = 2, screenshot: str | None = None) -> str:
    """``zshard view``: open napari on ``path`` (default: the generated sample) and run it
    until the window closes; with ``screenshot``, save what the canvas shows to that file and
    close instead (for machines without a display, under ``xvfb-run``). Returns what was shown.
    """
    from ..sample import make_sample

    t0 = time.perf_counter()
    path = path or str(make_sample())
    import napari

    viewer = view_path(path, ndisplay=ndisplay, show=True, title=f"napari-zshard — {path}")
    if not screenshot:
        napari.run()
        return path
    from qtpy.QtWidgets import QApplication

    for _ in range(20):  # let the canvas draw the first picture
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(screenshot, canvas_only=True)
    layers = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in viewer.layers)
    viewer.close()
    return (f"{path}: {layers}; screenshot {screenshot} after "
            f"{time.perf_counter() - t0:.1f} s")
