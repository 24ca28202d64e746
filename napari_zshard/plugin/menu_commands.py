"""Menu commands: make napari-zshard the remembered reader for Zarr folders and URLs."""

from __future__ import annotations

PLUGIN = "napari-zshard"
#: napari matches local folders as ``*.zarr/`` (after realpath) and URLs as ``*.zarr``.
ZARR_PATTERNS = ("*.zarr", "*.zarr/")


def use_as_default_zarr_reader() -> None:
    """Remember napari-zshard as the reader of ``.zarr`` folders and URLs (napari settings)."""
    from napari.settings import get_settings
    from napari.utils.notifications import show_info

    plugins = get_settings().plugins
    mapping = dict(plugins.extension2reader)
    mapping.update({pattern: PLUGIN for pattern in ZARR_PATTERNS})
    plugins.extension2reader = mapping
    show_info("napari-zshard now opens .zarr folders and URLs (drag-and-drop and File ▸ Open).")
