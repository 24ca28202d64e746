"""Opening what a path or URL holds: OME-Zarr 0.5/0.4 images with labels, plain arrays, groups.

``sniff`` tells, cheaply and quietly, whether a location is something this package opens;
``open_nodes`` returns one :class:`ImageNode` per image found there.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from ..engine import ShardedArray, open_arrays
from ..engine.metadata import parse_json, parse_v2, parse_v3
from ..errors import MetadataError, StoreError, UnsupportedCodecError
from ..ome import Axis, parse_image_label, parse_label_names, parse_multiscales, parse_omero
from ..store import FullRequest, Store, open_store
from .node import ImageNode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    """What the metadata at the root of a store says it is."""

    kind: str  # "array" | "group"
    zarr_format: int
    attributes: dict[str, Any]
    doc: dict[str, Any]


def read_node(store: Store, *, zarr_json: bytes | None = None) -> NodeInfo | None:
    """Read ``zarr.json`` (v3) or ``.zattrs``/``.zgroup``/``.zarray`` (v2); None if neither.
    ``zarr_json``: the root's ``zarr.json``, when the caller already fetched it."""
    raw = zarr_json if zarr_json is not None else store.read("zarr.json")
    if raw is not None:
        doc = parse_json(raw, f"{store.url}/zarr.json")
        kind = doc.get("node_type")
        if kind not in ("array", "group") or doc.get("zarr_format") != 3:
            raise MetadataError(f"{store.url}/zarr.json: not a Zarr v3 array or group")
        return NodeInfo(kind, 3, doc.get("attributes") or {}, doc)
    zarray, zgroup, zattrs = (r.whole for r in store.read_many(
        [FullRequest(".zarray"), FullRequest(".zgroup"), FullRequest(".zattrs")]))
    if zarray is not None:
        kind, name, meta = "array", ".zarray", zarray
    elif zgroup is not None:
        kind, name, meta = "group", ".zgroup", zgroup
    else:
        return None
    attrs = parse_json(zattrs, f"{store.url}/.zattrs") if zattrs else {}
    return NodeInfo(kind, 2, attrs, parse_json(meta, f"{store.url}/{name}"))


# napari asks a reader whether it can open a path, then asks it to open it: what the first
# question read is kept for a few seconds so the second does not fetch it again.
_SNIFFED_TTL = 10.0
_sniffed: dict[str, tuple[float, Store, NodeInfo]] = {}


#: Zarr layouts other readers open (HCS plates and wells, bioformats2raw's series): declined.
_LEFT_TO_OTHERS = ("plate", "well", "bioformats2raw.layout", "series")


def _left_to_others(info: NodeInfo) -> bool:
    attrs = info.attributes
    ome = attrs.get("ome")
    if not isinstance(ome, dict):
        ome = {}
    if parse_multiscales(attrs, ""):
        return False
    return any(key in ome or key in attrs for key in _LEFT_TO_OTHERS)


def _check_array(store: Store, info: NodeInfo) -> None:
    """Raise :class:`MetadataError` when an array's metadata is broken (a codec chain the
    engine lacks is fine: zarr-python reads it)."""
    try:
        if info.zarr_format == 3:
            parse_v3(info.doc, f"{store.url}/zarr.json")
        else:
            parse_v2(info.doc, f"{store.url}/.zarray", info.attributes)
    except UnsupportedCodecError:
        pass


def probe(url: str | os.PathLike,
          storage_options: dict[str, Any] | None = None) -> NodeInfo | None:
    """What is at ``url``, for a reader deciding whether to claim it: the node when this
    package opens it; None, quietly, when it is not Zarr (or cannot be reached) or is a Zarr
    layout left to other readers (HCS plates, bioformats2raw); :class:`MetadataError` naming
    the file when its Zarr metadata is broken, so the user learns why rather than that every
    reader refused it."""
    try:
        store = open_store(url, storage_options)
    except Exception:
        return None
    recent = _sniffed.get(store.url)
    if recent is not None and time.monotonic() - recent[0] <= _SNIFFED_TTL:
        return recent[2]
    try:
        info = read_node(store)
    except MetadataError:
        raise
    except Exception:
        return None
    if info is None or _left_to_others(info):
        return None
    if info.kind == "array":
        _check_array(store, info)
    now = time.monotonic()
    for key in [k for k, (t, _, _) in _sniffed.items() if now - t > _SNIFFED_TTL]:
        _sniffed.pop(key, None)
    _sniffed[store.url] = (now, store, info)
    return info


def sniff(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``url`` holds Zarr data this package opens. Never raises, logs or prints."""
    try:
        return probe(url, storage_options) is not None
    except MetadataError:
        return False


def _recently_sniffed(store: Store) -> NodeInfo | None:
    entry = _sniffed.pop(store.url, None)
    if entry is None or time.monotonic() - entry[0] > _SNIFFED_TTL:
        return None
    return entry[2]


def _name_of(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[:-5] if base.endswith(".zarr") else base


def _stored_contrast(attrs: dict[str, Any]) -> tuple[float, float] | None:
    ours = attrs.get("napari_zshard")
    if not isinstance(ours, dict):
        ours = {}
    cl = ours.get("contrast_limits")
    if isinstance(cl, list) and len(cl) == 2 and all(isinstance(v, (int, float)) for v in cl):
        return float(cl[0]), float(cl[1])
    return None


def open_multiscale(store: Store, info: NodeInfo, *, name: str | None = None,
                    with_labels: bool = True, **array_options: Any) -> ImageNode:
    """An OME-Zarr multiscale image group (0.5 or 0.4) as an :class:`ImageNode`."""
    where = store.url
    multiscales = parse_multiscales(info.attributes, where)
    if not multiscales:
        raise MetadataError(f"{where}: group has no OME multiscales metadata")
    ms = multiscales[0]
    paths = [d.path.strip("/") for d in ms.datasets]
    # one round trip for every level's metadata and, for a v3 image, its labels group
    want_labels = with_labels and info.zarr_format == 3 and info.attributes.get(
        "ome", {}).get("image-label") is None
    keys = [f"{p}/zarr.json" for p in paths] + (["labels/zarr.json"] if want_labels else [])
    raws = [r.whole for r in store.read_many([FullRequest(k) for k in keys])]
    arrays = open_arrays(store, paths, zarr_jsons=raws[:len(paths)], **array_options)
    ndim = arrays[0].ndim
    for d, a in zip(ms.datasets, arrays, strict=True):
        if a.ndim != ndim:
            raise MetadataError(f"{where}: level {d.path!r} has {a.ndim} axes, level 0 {ndim}")
    axes = ms.axes if len(ms.axes) == ndim else tuple(Axis(n) for n in "tczyx"[-ndim:])
    node = ImageNode(
        url=where, name=name or ms.name or _name_of(where), arrays=arrays, axes=axes,
        scale=ms.datasets[0].scale, translate=ms.datasets[0].translation,
        channels=parse_omero(info.attributes), image_label=parse_image_label(info.attributes),
        contrast_limits=_stored_contrast(info.attributes),
    )
    if with_labels and not node.is_labels:
        if want_labels:
            labels_json = raws[-1]
            if labels_json is None:  # a v3 image without labels: no v2 probing
                return node
        else:
            labels_json = None
        node.labels = _open_labels(store, labels_json, **array_options)
    return node


def _open_labels(store: Store, labels_json: bytes | None = None,
                 **array_options: Any) -> list[ImageNode]:
    labels_store = store.child("labels")
    try:
        info = read_node(labels_store, zarr_json=labels_json)
    except (MetadataError, StoreError) as e:
        log.warning("ignoring the labels of %s: %s", store.url, e)
        return []
    if info is None:
        return []
    out = []
    for label_name in parse_label_names(info.attributes):
        sub = labels_store.child(label_name)
        try:
            sub_info = read_node(sub)
            if sub_info is None:
                raise MetadataError(f"{sub.url}: listed in labels/ but not found")
            node = open_multiscale(sub, sub_info, name=label_name, with_labels=False,
                                   **array_options)
        except (MetadataError, StoreError) as e:
            log.warning("ignoring label image %s: %s", sub.url, e)
            continue
        if node.image_label is None:
            from ..ome import ImageLabel

            node.image_label = ImageLabel()
        out.append(node)
    return out


def _single_array_node(store: Store, arr: ShardedArray, info: NodeInfo) -> ImageNode:
    names = arr.meta.dimension_names or ()
    axes = tuple(Axis(n) if n else Axis("zyx"[-arr.ndim:][i] if arr.ndim <= 3 else f"dim_{i}")
                 for i, n in enumerate(names or (None,) * arr.ndim))
    return ImageNode(url=store.url, name=_name_of(store.url), arrays=[arr], axes=axes,
                     contrast_limits=_stored_contrast(info.attributes))


def _child_arrays(store: Store, info: NodeInfo) -> list[str]:
    consolidated = info.doc.get("consolidated_metadata")
    if isinstance(consolidated, dict) and isinstance(consolidated.get("metadata"), dict):
        return sorted(k for k, v in consolidated["metadata"].items()
                      if "/" not in k and isinstance(v, dict) and v.get("node_type") == "array")
    try:
        listing = list(store.list_prefix(""))
    except StoreError as e:
        raise MetadataError(f"{store.url}: a group without OME metadata or consolidated "
                            "metadata cannot be listed here; open one of its arrays by URL"
                            ) from e
    names = set()
    for key, _ in listing:
        parts = key.split("/")
        if len(parts) == 2 and parts[1] in ("zarr.json", ".zarray"):
            names.add(parts[0])
    return sorted(names)


def _is_pyramid(arrays: list[ShardedArray]) -> bool:
    if len(arrays) < 2:
        return False
    a0 = arrays[0]
    for prev, cur in itertools.pairwise(arrays):
        if cur.ndim != a0.ndim or cur.dtype != a0.dtype:
            return False
        shrinks = all(c <= p for c, p in zip(cur.shape, prev.shape, strict=True))
        if not shrinks or cur.shape == prev.shape:
            return False
    return True


def open_nodes(url: str | os.PathLike | Store, *, storage_options: dict[str, Any] | None = None,
               **array_options: Any) -> list[ImageNode]:
    """Every image at ``url``: an OME-Zarr image (with its labels), a plain array, or the
    arrays of a group (one node each, or one multiscale node when they form a pyramid)."""
    store = url if isinstance(url, Store) else open_store(url, storage_options)
    info = _recently_sniffed(store) or read_node(store)
    if info is None:
        raise MetadataError(f"{store.url}: no Zarr array or group here")
    if info.kind == "array":
        (arr,) = open_arrays(store, [""], **array_options)
        return [_single_array_node(store, arr, info)]
    if parse_multiscales(info.attributes, store.url):
        return [open_multiscale(store, info, **array_options)]
    names = _child_arrays(store, info)
    if not names:
        raise MetadataError(f"{store.url}: group holds no arrays and no OME multiscales")
    arrays = open_arrays(store, names, **array_options)
    order = sorted(range(len(arrays)), key=lambda i: -arrays[i].size)
    ranked = [arrays[i] for i in order]
    if _is_pyramid(ranked):
        node = _single_array_node(store, ranked[0], info)
        node.arrays = ranked
        return [node]
    nodes = []
    for n, arr in zip(names, arrays, strict=True):
        node = _single_array_node(store.child(n), arr, info)
        node.name = f"{_name_of(store.url)}/{n}"
        nodes.append(node)
    return nodes


def open_image(url: str | os.PathLike, *, storage_options: dict[str, Any] | None = None,
               **array_options: Any) -> ImageNode:
    """The (first) image at ``url``, with its levels, metadata and labels. napari-free.

    >>> node = open_image("https://example.org/cells.zarr")    # doctest: +SKIP
    >>> node.levels()            # list of dask arrays, largest first
    >>> node.scale, node.axes, node.channels, node.labels
    """
    return open_nodes(url, storage_options=storage_options, **array_options)[0]
