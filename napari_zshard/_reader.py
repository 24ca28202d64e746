"""npe2 reader: sniff a path or URL, return lazy multiscale layers (or None, quietly)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._convert import layer_data, too_big_warning
from .multiscale import open_nodes, sniff
from .store.url import carries_credentials, redact_text, redact_url

log = logging.getLogger(__name__)


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """Return :func:`read_zarr` when every path holds Zarr data this plugin opens, else None.

    napari offers every folder to every reader that accepts directories: answer quietly.
    """
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(isinstance(p, str) for p in paths):
        return None
    if not all(sniff(p) for p in paths):
        # A URL carrying a password or token is claimed even so: napari's own "no reader" and
        # "returned no data" messages quote the path as typed; read_zarr's are redacted.
        return read_zarr if any(carries_credentials(p) for p in paths) else None
    return read_zarr


def read_zarr(path: str | list[str]) -> list:
    """Layers of every image at ``path``. A broken store is reported, the others still open."""
    paths = path if isinstance(path, list) else [path]
    layers: list = []
    errors, too_big = [], []
    for p in paths:
        try:
            opened = layer_data(open_nodes(p))
        except Exception as e:  # reported to the user below, never a traceback dump
            # (no traceback: libraries below quote URLs, passwords included, in theirs)
            message = redact_text(str(e), p)
            log.debug("cannot open %s: %s: %s", redact_url(p), type(e).__name__, message)
            errors.append(f"{redact_url(p)}: {message}")
            continue
        layers.extend(opened)
        # a coarsest level too big for 3D view: the layer got a small virtual level; say so
        too_big.extend(w for _, kwargs, _ in opened if (w := too_big_warning(kwargs, p)))
    if errors:
        from napari.utils.notifications import show_error

        show_error("napari-zshard could not open:\n" + "\n".join(errors))
        if not layers and any(carries_credentials(p) for p in paths):
            return [(None,)]  # napari's "no layers, no error" value: it would quote the URL
    if too_big:
        from napari.utils.notifications import show_warning

        for text in too_big:
            show_warning(text)
    return layers
