"""What a reshard reads: every array at the source (pyramid levels, label images, or one plain
array) and every group above them, with their attributes in OME-Zarr 0.5 form."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from ..engine import ShardedArray
from ..errors import MetadataError, StoreError
from ..multiscale.open import open_nodes, read_node
from ..store import Store, open_store
from .errors import SourceError

log = logging.getLogger(__name__)

#: OME-Zarr 0.4 keys that 0.5 moves under ``attributes["ome"]``.
_OME_KEYS = ("multiscales", "omero", "labels", "image-label", "plate", "well",
             "bioformats2raw.layout")


@dataclass(frozen=True)
class SourceArray:
    """One array to reshard."""

    path: str  # relative to the source; "" when the source is this array
    level: int  # position in its pyramid, 0 = full resolution
    array: ShardedArray
    dimension_names: tuple[str | None, ...] | None = None


@dataclass
class SourceTree:
    """The arrays and groups found at the source, deepest groups first, the root last."""

    url: str
    store: Store
    arrays: list[SourceArray]
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> attributes

    @property
    def root_is_array(self) -> bool:
        return len(self.arrays) == 1 and self.arrays[0].path == ""


def ome_05_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """Group attributes as OME-Zarr 0.5 writes them: 0.4 keys move under ``ome`` (their own
    ``version`` fields dropped); attributes already in 0.5 form and foreign ones stay."""
    if "ome" in attributes or not any(k in attributes for k in _OME_KEYS):
        return dict(attributes)
    ome: dict[str, Any] = {"version": "0.5"}
    rest = {}
    for key, value in attributes.items():
        if key not in _OME_KEYS:
            rest[key] = value
        elif isinstance(value, list):
            ome[key] = [{k: v for k, v in item.items() if k != "version"}
                        if isinstance(item, dict) else item for item in value]
        elif isinstance(value, dict):
            ome[key] = {k: v for k, v in value.items() if k != "version"}
        else:
            ome[key] = value
    return {**rest, "ome": ome}


def _relative(root: Store, store: Store) -> str:
    base = root.url.rstrip("/")
    if store.url.rstrip("/") == base:
        return ""
    if not store.url.startswith(base + "/"):
        raise MetadataError(f"{store.url} lies outside the source {root.url}")
    return store.url[len(base) + 1:].strip("/")


def open_source(url: str | os.PathLike, storage_options: dict[str, Any] | None = None
                ) -> SourceTree:
    """Find what there is to reshard at ``url``; raise :class:`SourceError` when nothing."""
    try:
        store = open_store(url, storage_options)
        nodes = open_nodes(store)
    except MetadataError as e:
        raise SourceError(f"the source {os.fspath(url)} holds no Zarr array or OME-Zarr image "
                          f"that can be resharded: {e}") from e
    except StoreError as e:
        raise SourceError(f"cannot read the source {os.fspath(url)}: {e}") from e
    found = []
    for node in nodes:
        for image in [node, *node.labels]:
            axis_names = tuple(a.name for a in image.axes)
            for level, arr in enumerate(image.arrays):
                grouped = image.url.rstrip("/") != arr.store.url.rstrip("/")
                found.append((_relative(store, arr.store), level, arr,
                              axis_names if grouped else None))
    groups: dict[str, dict[str, Any]] = {}
    parents = {p for path, *_ in found if path for p in _parents(path)}
    for path in sorted(parents, key=lambda p: (-p.count("/"), p)):  # deepest first, root last
        info = read_node(store.child(path) if path else store)
        if info is not None and info.kind == "group":
            groups[path] = ome_05_attributes(info.attributes)
    arrays = []
    for path, level, arr, names in found:
        dims = arr.meta.dimension_names
        parent = groups.get(path.rpartition("/")[0], {})
        if dims is None and names and len(names) == arr.ndim and "multiscales" in (
                parent.get("ome") or {}):
            dims = names  # OME-Zarr 0.5 names the dimensions of its arrays after the axes
        arrays.append(SourceArray(path, level, arr, dims))
    return SourceTree(store.url, store, arrays, groups)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts))]
