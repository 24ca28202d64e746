"""npe2 reader: sniff a path or URL, return lazy multiscale layers (or None, quietly)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import MetadataError, ZShardError
from ..multiscale import open_nodes, probe
from ..store.url import carries_credentials, redact_text, redact_url
from .layer_data import layer_data, too_big_warning

log = logging.getLogger(__name__)


def get_reader(path: str | list[str]) -> Callable[[Any], list] | None:
    """Return :func:`read_zarr` when every path holds Zarr data this plugin opens, else None.

    napari offers every folder to every reader that accepts directories: answer quietly for
    what is not Zarr, or is Zarr another reader opens (HCS plates, bioformats2raw layouts).
    Zarr whose metadata is broken is claimed: the reader it returns raises the
    :class:`MetadataError` naming the file and what is wrong, which napari shows, instead of
    napari's "no reader could open it".
    """
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(isinstance(p, str) for p in paths):
        return None
    for p in paths:
        try:
            if probe(p) is None:
                # A URL carrying a password or token is claimed even so: napari's own "no
                # reader" and "returned no data" messages quote the path as typed; ours are
                # redacted.
                return read_zarr if any(carries_credentials(q) for q in paths) else None
        except MetadataError as e:
            return _broken(MetadataError(redact_text(str(e), p)))
    return read_zarr


def _broken(error: MetadataError) -> Callable[..., list]:
    def read_broken(path: Any, **_: Any) -> list:
        raise error

    return read_broken


def read_zarr(path: str | list[str]) -> list:
    """Layers of every image at ``path``. When some paths fail and others open, the failures
    are reported and the rest open; when nothing opens, the error is raised (napari shows
    it)."""
    paths = path if isinstance(path, list) else [path]
    layers: list = []
    errors: list[tuple[Exception, str]] = []  # the error, and what to show of it
    too_big = []
    for p in paths:
        try:
            opened = layer_data(open_nodes(p))
        except Exception as e:  # reported to the user below, never a traceback dump
            # (no traceback: libraries below quote URLs, passwords included, in theirs)
            message = redact_text(str(e), p)
            log.debug("cannot open %s: %s: %s", redact_url(p), type(e).__name__, message)
            errors.append((e, f"{redact_url(p)}: {message}"))
            continue
        layers.extend(opened)
        # a coarsest level too big for 3D view: the layer got a small virtual level; say so
        too_big.extend(w for _, kwargs, _ in opened if (w := too_big_warning(kwargs, p)))
    report = "napari-zshard could not open:\n" + "\n".join(line for _, line in errors)
    secret = any(carries_credentials(p) for p in paths)
    if errors and not layers and not secret:
        if len(errors) == 1:
            raise errors[0][0]
        raise ZShardError(report)
    if errors:
        from napari.utils.notifications import show_error

        show_error(report)
        if not layers:
            return [(None,)]  # napari's "no layers, no error" value: it would quote the URL
    if too_big:
        from napari.utils.notifications import show_warning

        for text in too_big:
            show_warning(text)
    return layers
