"""Opening (or creating) the label image an annotation edits: ``labels/<name>`` of an
OME-Zarr 0.5 image, one sharded Zarr v3 array per pyramid level."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.create import create_array
from ..engine.metadata import ArrayMeta, parse_json, parse_v2, parse_v3
from ..errors import MetadataError, ReadOnlyStoreError, UnsupportedLabelImageError
from ..ome import parse_label_names, parse_multiscales
from ..store import Store, open_store, validate_name
from ..store.url import protocol_of

#: where our own objects live inside a label image (not a Zarr node: no zarr.json)
ZSHARD_DIR = "zshard"


@dataclass(frozen=True)
class LabelImage:
    """A label image's levels and where they sit in the world."""

    image_url: str
    name: str
    store: Store  # the image's root store
    prefix: str  # "labels/<name>"
    paths: tuple[str, ...]  # dataset paths, finest first
    metas: tuple[ArrayMeta, ...]
    factors: tuple[tuple[int, ...], ...]  # level i+1 from level i
    scale: tuple[float, ...]  # level 0 of the image
    translate: tuple[float, ...]

    def key(self, level: int, rel: str) -> str:
        return f"{self.prefix}/{self.paths[level]}/{rel}"

    def zshard_key(self, rel: str) -> str:
        return f"{self.prefix}/{ZSHARD_DIR}/{rel}"


def writable_store(url: str, storage_options: dict[str, Any] | None) -> Store:
    """The image's store, refused up front (before anyone paints) when it cannot take a safe
    commit."""
    protocol = protocol_of(str(url))
    if protocol in ("http", "https"):
        raise ReadOnlyStoreError(
            f"{url}: an HTTP(S) store is read-only; annotations need a store that can be written "
            "(a local folder or s3://). Copy it first, e.g. with `zshard convert`.")
    if protocol in ("gs", "gcs"):
        raise ReadOnlyStoreError(
            f"{url}: committing annotations to GCS is refused until its conditional writes are "
            "implemented and tested; use a local folder or s3://")
    store = open_store(url, storage_options)
    from ..store.local import LocalStore

    if isinstance(store, LocalStore) and store.root.is_dir() and not os.access(
            store.root, os.W_OK):
        raise ReadOnlyStoreError(f"{store.root} is not writable by this user; annotations "
                                 "cannot be committed to it")
    if store.read_only:
        raise ReadOnlyStoreError(f"{store.url} is opened read-only; annotations cannot be "
                                 "committed to it")
    return store


def _group_attrs(store: Store, key: str) -> dict[str, Any] | None:
    raw = store.read(key)
    if raw is None:
        return None
    doc = parse_json(raw, f"{store.url}/{key}")
    return doc.get("attributes") or {}


def _level_transform(ms_doc, level: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    ds = ms_doc.datasets[level]
    scale = tuple(float(s) for s in ds.scale)
    trans = tuple(float(t) for t in (ds.translation or (0.0,) * len(scale)))
    return scale, trans


def open_label_image(store: Store, name: str, *, create: bool = False) -> LabelImage:
    """The label image ``labels/<name>`` of the image at ``store`` (made when ``create``)."""
    validate_name(name, what="label image name")
    attrs = _group_attrs(store, "zarr.json")
    if attrs is None:
        if store.read(".zattrs") is not None or store.read(".zgroup") is not None:
            raise UnsupportedLabelImageError(
                f"{store.url} is a Zarr v2 image; annotations write sharded Zarr v3. Convert it "
                f"first: zshard convert {store.url} OUT.zarr")
        raise MetadataError(f"{store.url}: no OME-Zarr image here (no zarr.json)")
    image_ms = parse_multiscales(attrs, f"{store.url}/zarr.json")
    if not image_ms:
        raise MetadataError(f"{store.url}/zarr.json: not an OME-Zarr image (no multiscales)")
    prefix = f"labels/{name}"
    label_attrs = _group_attrs(store, f"{prefix}/zarr.json")
    if label_attrs is None and store.read(f"{prefix}/.zattrs") is not None:
        raise UnsupportedLabelImageError(
            f"{store.url}/{prefix} is a Zarr v2 label image; annotations write sharded Zarr v3. "
            f"Convert the image first: zshard convert {store.url} OUT.zarr")
    if label_attrs is None:
        if not create:
            known = label_images(store)
            raise MetadataError(
                f"{store.url} has no label image {name!r} (it has: {known or 'none'}); pass "
                "create=True to make a new one")
        _create(store, name, image_ms[0])
        label_attrs = _group_attrs(store, f"{prefix}/zarr.json") or {}
    _list_label_image(store, name)
    ms = parse_multiscales(label_attrs, f"{store.url}/{prefix}/zarr.json")
    if not ms:
        raise MetadataError(f"{store.url}/{prefix}/zarr.json: label image without multiscales")
    paths, metas = [], []
    for ds in ms[0].datasets:
        key = f"{prefix}/{ds.path}"
        raw = store.read(f"{key}/zarr.json")
        if raw is None:
            if store.read(f"{key}/.zarray") is not None:
                raise UnsupportedLabelImageError(
                    f"{store.url}/{key} is a Zarr v2 array; annotations write sharded Zarr v3. "
                    f"Convert it first: zshard convert {store.url} OUT.zarr")
            raise MetadataError(f"{store.url}/{key}: level listed but missing")
        meta = parse_v3(parse_json(raw, f"{store.url}/{key}/zarr.json"),
                        f"{store.url}/{key}/zarr.json")
        if meta.sharding is None:
            raise UnsupportedLabelImageError(
                f"{store.url}/{key} is not sharded; annotations commit per shard. Rewrite it "
                f"sharded first: zshard convert {store.url} OUT.zarr")
        if meta.dtype.kind not in "iu":
            raise UnsupportedLabelImageError(
                f"{store.url}/{key}: labels must be integers, not {meta.dtype}")
        paths.append(ds.path)
        metas.append(meta)
    factors = []
    for i in range(1, len(metas)):
        s0, _ = _level_transform(ms[0], i - 1)
        s1, _ = _level_transform(ms[0], i)
        f = tuple(max(1, round(b / a)) if a else 1 for a, b in zip(s0, s1, strict=True))
        factors.append(f)
    scale, translate = _level_transform(image_ms[0], 0)
    return LabelImage(image_url=store.url, name=name, store=store, prefix=prefix,
                      paths=tuple(paths), metas=tuple(metas), factors=tuple(factors),
                      scale=scale, translate=translate)


def _create(store: Store, name: str, image_ms) -> None:
    """A new label image with the image's levels, chunking, sharding and transforms."""
    from ..multiscale.write import group_json

    prefix = f"labels/{name}"
    dims = tuple(a.name for a in image_ms.axes)
    for ds in image_ms.datasets:
        raw = store.read(f"{ds.path}/zarr.json")
        if raw is None:
            if store.read(f"{ds.path}/.zarray") is not None:
                raw_v2 = parse_json(store.read(f"{ds.path}/.zarray") or b"{}", ds.path)
                parse_v2(raw_v2, ds.path)
                raise UnsupportedLabelImageError(
                    f"{store.url} is a Zarr v2 image; annotations write sharded Zarr v3. "
                    f"Convert it first: zshard convert {store.url} OUT.zarr")
            raise MetadataError(f"{store.url}/{ds.path}: image level missing")
        meta = parse_v3(parse_json(raw, ds.path), f"{store.url}/{ds.path}/zarr.json")
        if meta.sharding is None:
            raise UnsupportedLabelImageError(
                f"{store.url}/{ds.path} is not sharded; a label image is made with the image's "
                f"sharding. Rewrite it sharded first: zshard convert {store.url} OUT.zarr")
        level = store.child(f"{prefix}/{ds.path}")
        if level.read("zarr.json") is None:
            create_array(level, shape=meta.shape, dtype=np.uint32, chunks=meta.chunk_shape,
                         shards=meta.grid_shape, fill_value=0, dimension_names=dims,
                         overwrite=True)
    ms = {"axes": [a.to_json() for a in image_ms.axes],
          "datasets": [d.to_json() for d in image_ms.datasets], "name": name}
    ome = {"version": "0.5", "multiscales": [ms],
           "image-label": {"version": "0.5", "source": {"image": "../../"}}}
    store.create_exclusive(f"{prefix}/zarr.json", group_json({"ome": ome}))


def label_images(url_or_store: str | Store, *, storage_options: dict | None = None
                 ) -> list[str]:
    """The names listed in ``labels/zarr.json``."""
    store = url_or_store if isinstance(url_or_store, Store) else open_store(
        url_or_store, storage_options)
    attrs = _group_attrs(store, "labels/zarr.json")
    return parse_label_names(attrs) if attrs else []


def _list_label_image(store: Store, name: str) -> None:
    """Add ``name`` to ``labels/zarr.json`` by compare-and-swap: two people creating label
    images at once both end up listed."""
    from ..multiscale.write import group_json

    def add(current: bytes | None) -> bytes | None:
        doc = json.loads(current) if current else {}
        attrs = doc.get("attributes") or {}
        ome = attrs.get("ome")
        if not isinstance(ome, dict):
            ome = {"version": "0.5"}
        names = [n for n in ome.get("labels") or [] if isinstance(n, str)]
        if name in names:
            return current
        ome = {**ome, "labels": [*names, name]}
        if current is None:
            return group_json({**attrs, "ome": ome})
        doc["attributes"] = {**attrs, "ome": ome}
        return json.dumps(doc, indent=2).encode()

    raw = store.read("labels/zarr.json")
    if raw is not None and name in parse_label_names(
            parse_json(raw, "labels/zarr.json").get("attributes") or {}):
        return
    store.update("labels/zarr.json", add)
