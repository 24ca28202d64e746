"""What is at a URL: the Zarr arrays there and, where the store can be listed, their stored objects.

One listing serves a whole hierarchy: a group's store is listed once, the metadata keys in it
name the arrays, and every other key is attributed to the array it belongs to. Stores that
cannot be listed (plain HTTP) still yield their arrays from the metadata: consolidated metadata
or the OME-Zarr ``multiscales`` datasets.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..engine.array import read_array_meta
from ..engine.metadata import ArrayMeta, parse_json
from ..errors import MetadataError, StoreError, UnsafeKeyError, ZShardError
from ..store import FullRequest, Store, open_store, validate_key

log = logging.getLogger(__name__)

_METADATA_NAMES = ("zarr.json", ".zarray")


class StoredObject(NamedTuple):
    """One shard (or, for unsharded arrays, one chunk) found in the store."""

    key: str  # relative to the array
    coords: tuple[int, ...]  # position in the shard (or chunk) grid
    size: int | None  # bytes, when the listing reported it


@dataclass
class ArrayNode:
    """One array of a survey: where it is, its metadata, and what it has stored."""

    path: str  # relative to the surveyed URL; "" for the URL itself
    store: Store  # rooted at the array
    meta: ArrayMeta | None  # None when ``error`` says why the engine cannot read it
    error: ZShardError | None = None
    objects: list[StoredObject] | None = None  # None when the store cannot be listed

    @property
    def url(self) -> str:
        return self.store.url

    @property
    def possible_objects(self) -> int:
        return math.prod(self.meta.grid_extent()) if self.meta else 0


@dataclass
class Survey:
    """The arrays at a URL (the array itself, or every array below a group)."""

    url: str
    store: Store
    node_type: str  # "array" | "group"
    arrays: list[ArrayNode]
    listing_error: str | None = None  # why stored objects could not be listed

    @property
    def listable(self) -> bool:
        return self.listing_error is None


def survey(url: str | os.PathLike | Store, *, storage_options: dict[str, Any] | None = None
           ) -> Survey:
    """Find the arrays at ``url`` and list their stored shards (or chunks) where possible.

    Raises
    ------
    StoreError
        The location does not exist or cannot be read.
    MetadataError
        There is no Zarr array or group at ``url``, or its own metadata is invalid.
    """
    store = url if isinstance(url, Store) else open_store(url, storage_options)
    _check_exists(store)
    node_type, root_doc = _root_node(store)
    if node_type == "array":
        node = _open_node(store, "", strict=True)
        listing, error = _list(store, _data_prefix(node.meta))
        if listing is not None and node.meta is not None:
            node.objects = _grid_objects(node.meta, listing)
        return Survey(store.url, store, "array", [node], error)
    listing, error = _list(store, "")
    if listing is not None:
        keys = [key for key, _ in listing]
        paths = _array_paths_from_listing(store, keys)
    else:
        paths = _array_paths_from_metadata(store, root_doc)
    nodes = [_open_node(store.child(p), p, strict=False) for p in sorted(paths, key=_natural)]
    if listing is not None:
        for node in nodes:
            if node.meta is not None:
                prefix = node.path + "/"
                node.objects = _grid_objects(node.meta, ((k[len(prefix):], s) for k, s in listing
                                                         if k.startswith(prefix)))
    return Survey(store.url, store, "group", nodes, error)


def _check_exists(store: Store) -> None:
    from ..store.local import LocalStore

    if isinstance(store, LocalStore) and not store.root.is_dir():
        what = "is not a directory" if store.root.exists() else "does not exist"
        raise StoreError(f"{store.root} {what}")


def _root_node(store: Store) -> tuple[str, dict[str, Any]]:
    raw = store.read("zarr.json")
    if raw is not None:
        doc = parse_json(raw, f"{store.url}/zarr.json")
        if doc.get("node_type") not in ("array", "group"):
            raise MetadataError(f"{store.url}/zarr.json: node_type must be 'array' or 'group', "
                                f"got {doc.get('node_type')!r}")
        return doc["node_type"], doc
    if store.read(".zarray") is not None:
        return "array", {}
    if store.read(".zgroup") is not None:
        attrs = store.read(".zattrs")
        return "group", {"attributes": parse_json(attrs, f"{store.url}/.zattrs") if attrs else {}}
    raise MetadataError(f"{store.url}: no Zarr array or group here "
                        "(no zarr.json, .zarray or .zgroup)")


def _open_node(store: Store, path: str, *, strict: bool) -> ArrayNode:
    """Read an array's metadata; a group's child with bad metadata is recorded, not raised."""
    try:
        return ArrayNode(path, store, read_array_meta(store))
    except MetadataError as e:
        if strict:
            raise
        return ArrayNode(path, store, None, e)
    except ZShardError as e:  # UnsupportedCodecError: readable through zarr-python only
        return ArrayNode(path, store, None, e)


def _list(store: Store, prefix: str) -> tuple[list[tuple[str, int]] | None, str | None]:
    try:
        return list(store.list_prefix(prefix)), None
    except (StoreError, OSError, NotImplementedError) as e:
        log.debug("cannot list %s: %s", store.url, e)
        return None, str(e) or type(e).__name__


def _data_prefix(meta: ArrayMeta | None) -> str:
    """The key prefix under which all of an array's objects live (lists less than the root)."""
    if meta is not None and meta.key_prefix and meta.key_separator == "/":
        return meta.key_prefix
    return ""


def grid_coords(meta: ArrayMeta, key: str) -> tuple[int, ...] | None:
    """The grid position encoded in ``key``; None if ``key`` is not one of the array's objects."""
    if meta.ndim == 0:
        return () if key == meta.object_key(()) else None
    parts = key.split(meta.key_separator)
    if meta.key_prefix:
        if parts[0] != meta.key_prefix:
            return None
        parts = parts[1:]
    if len(parts) != meta.ndim or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    coords = tuple(int(p) for p in parts)
    if any(c >= n for c, n in zip(coords, meta.grid_extent(), strict=True)):
        return None
    return coords if meta.object_key(coords) == key else None


def _grid_objects(meta: ArrayMeta, listing: Iterable[tuple[str, int]]) -> list[StoredObject]:
    found = []
    for key, size in listing:
        coords = grid_coords(meta, key)
        if coords is not None:
            found.append(StoredObject(key, coords, size))
    found.sort(key=lambda o: o.coords)
    return found


def all_objects(meta: ArrayMeta) -> Iterator[StoredObject]:
    """Every object the array could store, for stores that cannot be listed (size unknown)."""
    import itertools

    for coords in itertools.product(*(range(n) for n in meta.grid_extent())):
        yield StoredObject(meta.object_key(coords), coords, None)


def _array_paths_from_listing(store: Store, keys: list[str]) -> list[str]:
    paths = {k.rsplit("/", 1)[0] for k in keys if "/" in k and k.rsplit("/", 1)[1] == ".zarray"}
    v3 = [k for k in keys if "/" in k and k.rsplit("/", 1)[1] == "zarr.json"]
    results = store.read_many([FullRequest(k) for k in v3])
    for key, result in zip(v3, results, strict=True):
        path = key.rsplit("/", 1)[0]
        try:
            doc = parse_json(result.whole or b"", f"{store.url}/{key}")
        except MetadataError:
            paths.add(path)  # reported as an array with bad metadata
            continue
        if doc.get("node_type") != "group":
            paths.add(path)
    return sorted(paths)


def _array_paths_from_metadata(store: Store, doc: dict[str, Any]) -> list[str]:
    """Child arrays named by consolidated metadata or OME-Zarr multiscales (unlisted stores)."""
    found: list[str] = []
    consolidated = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    found += [p for p, d in consolidated.items()
              if isinstance(d, dict) and d.get("node_type") == "array"]
    if doc.get("zarr_format") != 3:
        raw = store.read(".zmetadata")
        meta = (parse_json(raw, f"{store.url}/.zmetadata").get("metadata") or {}) if raw else {}
        found += [k.rsplit("/", 1)[0] for k in meta if k.endswith("/.zarray")]
    attrs = doc.get("attributes") or {}
    multiscales = (attrs.get("ome") or attrs).get("multiscales") or []
    for ms in multiscales if isinstance(multiscales, list) else []:
        for ds in ms.get("datasets") or [] if isinstance(ms, dict) else []:
            if isinstance(ds, dict) and isinstance(ds.get("path"), str):
                found.append(ds["path"])
    safe = []
    for path in dict.fromkeys(found):
        try:
            safe.append(validate_key(path, what="array path"))
        except UnsafeKeyError as e:
            log.warning("%s: ignoring %s", store.url, e)
    return safe


def _natural(path: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", path)]
