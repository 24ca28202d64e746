"""Points and shapes drawn over an image, exported by several people with provenance.

Each named geometry layer of an image lives beside its label images, never inside a Zarr node::

    <image>/zshard/geometry/<layer-slug>/layer.json                kind, name, world transform
    <image>/zshard/geometry/<layer-slug>/head.json                 sequence number + commit
    <image>/zshard/geometry/<layer-slug>/deltas/<seq>-<commit>.csv one write-once delta each
    <image>/zshard/geometry/<layer-slug>/table.csv                 compaction (every 64 exports)

Rows are napari's own CSV layout (points: ``index, axis-0, axis-1, …``; shapes: ``index,
shape-type, vertex-index, axis-0, …``, one row per vertex) plus the feature columns and ours:
``zshard_id`` (a stable id per point/shape, ``<annotator slug>-<random>``, so no two
annotators ever pick the same), ``op`` (add, modify, delete), ``author``/``created`` (first
export) and ``modified_by``/``modified``. An export writes only what changed against what it
was loaded from; a point someone else changed or deleted since is a conflict, left as theirs.
Deltas are write-once and form a chain (each names its parent on its first line); the one
object exports contend on is ``head.json``, a few bytes swapped by compare-and-swap
(:meth:`Store.update`): an export whose head moved meanwhile folds the newer deltas, checks
its conflicts again and retries under a new commit id. So every export sees the same linear
history, and its conflicts are decided once, at its swap.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConcurrentUpdateError
from ..store import Store
from .labelimage import writable_store
from .provenance import new_commit_id, now
from .slug import annotator_slug

KINDS = ("points", "shapes")
_OURS = ("zshard_id", "op", "author", "created", "modified_by", "modified")


@dataclass
class Geometry:
    """A geometry layer as stored: what :func:`load_geometry` returns, ready for napari
    (``Points(g.data, features=g.features, scale=g.scale, translate=g.translate)``, or
    ``Shapes(g.data, shape_type=g.shape_types, …)``)."""

    name: str
    kind: str
    data: list[np.ndarray] | np.ndarray
    features: dict[str, list]
    shape_types: list[str]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    versions: dict[str, str] = field(default_factory=dict)  # zshard_id -> commit of its state

    @property
    def ids(self) -> list[str]:
        return list(self.features.get("zshard_id", []))


@dataclass(frozen=True)
class GeometryConflict:
    zshard_id: str
    reason: str  # "changed by <commit>" / "deleted by <commit>"


@dataclass(frozen=True)
class GeometryReport:
    commit_id: str | None  # None: nothing changed, nothing written
    added: int
    modified: int
    deleted: int
    conflicts: list[GeometryConflict]
    ids: list[str]  # the stable id of every object exported, in the order given
    bytes_written: int


def layer_prefix(name: str) -> str:
    """Where the geometry layer ``name`` lives in its image's store."""
    return f"zshard/geometry/{annotator_slug(name)}"


def geometry_layers(url: str, *, storage_options: dict | None = None) -> list[str]:
    """Names of the geometry layers stored with the image at ``url``."""
    from ..store import open_store

    store = open_store(url, storage_options)
    names = []
    for key, _ in store.list_prefix("zshard/geometry"):
        if key.endswith("/layer.json"):
            doc = json.loads(store.read(key) or b"{}")
            names.append(doc.get("zshard", {}).get("name", key.split("/")[-2]))
    return sorted(names)


def _objects(kind: str, data: Any, shape_types: Sequence[str] | None) -> list[np.ndarray]:
    if kind == "points":
        arr = np.asarray(data, dtype=float)
        if arr.ndim != 2:
            raise ValueError(f"points must be an (N, D) array, got shape {arr.shape}")
        return [row[None, :] for row in arr]
    objs = [np.asarray(v, dtype=float) for v in data]
    if any(o.ndim != 2 for o in objs):
        raise ValueError("every shape must be a (vertices, D) array")
    if shape_types is None or len(shape_types) != len(objs):
        raise ValueError("shapes need one shape type per shape")
    return objs


def _rows(kind: str, zid: str, obj: np.ndarray, shape_type: str, feats: dict[str, Any],
          ours: dict[str, str], index: int) -> list[list[Any]]:
    head = [index] if kind == "points" else [index, shape_type]
    out = []
    for v, vertex in enumerate(obj):
        where = [] if kind == "points" else [v]
        out.append([*head, *where, *(repr(float(c)) for c in vertex),
                    *feats.values(), *(ours[k] if k != "zshard_id" else zid for k in _OURS)])
    return out


def _header(kind: str, ndim: int, feature_names: Sequence[str]) -> list[str]:
    head = ["index"] if kind == "points" else ["index", "shape-type", "vertex-index"]
    return [*head, *(f"axis-{i}" for i in range(ndim)), *feature_names, *_OURS]


def _head(store: Store, prefix: str) -> tuple[int, str | None]:
    raw = store.read(f"{prefix}/head.json")
    if raw is None:
        return 0, None
    doc = json.loads(raw)["zshard"]
    return int(doc["seq"]), doc["commit"]


def _read_chain(store: Store, prefix: str, seq: int, commit: str | None
                ) -> list[tuple[str, list[dict[str, str]]]]:
    """The deltas from the first export to ``commit`` (at ``seq``), oldest first; when a
    compaction (``table.csv``) lies on that chain, it comes first, as one delta, and only the
    deltas after it are read."""
    snap = _snapshot(store, prefix)
    chain = []
    while commit is not None and seq > 0:
        if snap is not None and (seq, commit) == snap[0]:
            chain.append(snap[1])
            break
        raw = store.read(f"{prefix}/deltas/{seq:08d}-{commit}.csv")
        if raw is None:
            raise FileNotFoundError(f"{store.url}/{prefix}: delta {seq} ({commit}) is missing")
        first, _, body = raw.decode().partition("\n")
        chain.append((commit, list(csv.DictReader(io.StringIO(body)))))
        parent = first.removeprefix("#parent=")
        commit, seq = (parent or None), seq - 1
    return chain[::-1]


def _snapshot(store: Store, prefix: str):
    """((seq, commit), (None, rows)) of the layer's compaction, or None. Its rows carry the
    commit of each object's state in a ``version`` column."""
    raw = store.read(f"{prefix}/table.csv")
    if raw is None:
        return None
    first, _, body = raw.decode().partition("\n")
    fields = dict(part.split("=", 1) for part in first.removeprefix("#").split(",") if "=" in part)
    if "seq" not in fields or "commit" not in fields:
        return None
    return (int(fields["seq"]), fields["commit"]), (None, list(csv.DictReader(io.StringIO(body))))


def _fold(deltas) -> tuple[dict[str, list[dict[str, str]]], dict[str, str], dict[str, str]]:
    """Current rows per id, the commit of each id's current state, and of each deletion (a
    compaction's rows, commit None, bring their own ``version``)."""
    state: dict[str, list[dict[str, str]]] = {}
    versions: dict[str, str] = {}
    deleted: dict[str, str] = {}
    for commit, rows in deltas:
        grouped: dict[str, list[dict[str, str]]] = {}
        for r in rows:
            grouped.setdefault(r["zshard_id"], []).append(r)
        for zid, group in grouped.items():
            version = commit or group[0].pop("version")
            for r in group[1:]:
                r.pop("version", None)
            if group[0]["op"] == "delete":
                state.pop(zid, None)
                deleted[zid] = version
            else:
                state[zid] = group
                deleted.pop(zid, None)
            versions[zid] = version
    return state, versions, deleted


def compact_geometry(url: str, *, name: str, storage_options: dict | None = None) -> int:
    """Fold the layer's history into ``table.csv`` (the deltas stay: they are the history),
    so that a load reads the table and the deltas after it. Safe at any time and by several
    people at once: a table is a state at one point of the chain, and a load uses it only
    when that point is on the chain it reads. Returns the number of objects."""
    store = writable_store(url, storage_options)
    prefix = layer_prefix(name)
    head = _head(store, prefix)
    if head[1] is None:
        return 0
    state, versions, deleted = _fold(_read_chain(store, prefix, *head))
    rows = [{**r, "version": versions[zid]} for zid, group in state.items() for r in group]
    rows += [{"zshard_id": zid, "op": "delete", "version": v} for zid, v in deleted.items()]
    names = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    buf.write(f"#seq={head[0]},commit={head[1]}\n")
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    store.write(f"{prefix}/table.csv", buf.getvalue().encode())
    return len(state)


#: an export that makes the chain this long since the last compaction compacts it
COMPACT_EVERY = 64


def load_geometry(url: str, *, name: str, storage_options: dict | None = None) -> Geometry:
    """The geometry layer ``name`` as every export so far left it."""
    from ..store import open_store

    store = open_store(url, storage_options)
    prefix = layer_prefix(name)
    raw = store.read(f"{prefix}/layer.json")
    if raw is None:
        raise KeyError(f"{store.url}: no geometry layer named {name!r}")
    info = json.loads(raw)["zshard"]
    state, versions, _ = _fold(_read_chain(store, prefix, *_head(store, prefix)))
    kind = info["kind"]
    ndim = len(info["scale"])
    axes = [f"axis-{i}" for i in range(ndim)]
    skip = {"index", "shape-type", "vertex-index", "op", *axes}
    objs, types = [], []
    features: dict[str, list] = {}
    ids = list(state)  # in the order they were first exported
    for zid in ids:
        rows = sorted(state[zid], key=lambda r: int(r.get("vertex-index") or 0))
        objs.append(np.array([[float(r[a]) for a in axes] for r in rows]))
        types.append(rows[0].get("shape-type", "point"))
        for k, v in rows[0].items():
            if k not in skip:
                features.setdefault(k, []).append(v)
    for k, values in features.items():
        if k in _OURS:
            continue
        with contextlib.suppress(ValueError):
            features[k] = [float(v) for v in values]
    data: list[np.ndarray] | np.ndarray = (
        np.concatenate(objs) if kind == "points" and objs
        else np.empty((0, ndim)) if kind == "points" else objs)
    return Geometry(name=info["name"], kind=kind, data=data, features=features,
                    shape_types=types, scale=tuple(info["scale"]),
                    translate=tuple(info["translate"]),
                    versions={z: versions[z] for z in ids})


def export_geometry(url: str, *, name: str, kind: str, data: Any, annotator: str,
                    shape_types: Sequence[str] | None = None,
                    features: Mapping[str, Sequence[Any]] | None = None,
                    base: Geometry | None = None, scale: Sequence[float] | None = None,
                    translate: Sequence[float] | None = None, message: str = "",
                    storage_options: dict | None = None, tries: int = 20) -> GeometryReport:
    """Export a points or shapes layer: what changed against ``base`` (what it was loaded
    from; None: every object is new), as one write-once delta.

    Objects carry their stable id in ``features["zshard_id"]`` (missing or empty: new, an id
    is made). An object changed or deleted by someone else since ``base`` is a conflict and
    keeps their state. Objects of ``base`` missing from ``data`` are deleted.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    store = writable_store(url, storage_options)
    objs = _objects(kind, data, shape_types)
    feats = {k: list(v) for k, v in (features or {}).items()}
    if any(len(v) != len(objs) for v in feats.values()):
        raise ValueError(f"every feature needs one value per {kind[:-1]} ({len(objs)})")
    given = [str(z) if z not in (None, "") and str(z) != "nan" else ""
             for z in feats.pop("zshard_id", [""] * len(objs))]
    for k in _OURS:
        feats.pop(k, None)
    ndim = objs[0].shape[1] if objs else (len(scale) if scale is not None else 3)
    prefix = layer_prefix(name)
    slug = annotator_slug(annotator)
    store.create_exclusive(f"{prefix}/layer.json", json.dumps({"zshard": {
        "kind": kind, "name": name,
        "scale": [float(s) for s in (scale if scale is not None else (1.0,) * ndim)],
        "translate": [float(t) for t in (translate if translate is not None
                                         else (0.0,) * ndim)]}}, indent=1).encode())
    for _attempt in range(tries):
        head = _head(store, prefix)
        state, versions, deleted = _fold(_read_chain(store, prefix, *head))
        report, rows = _changes(kind, objs, shape_types, given, feats, base, state, versions,
                                deleted, annotator, slug, ndim)
        if not rows:
            return report
        buf = io.StringIO()
        buf.write(f"#parent={head[1] or ''}\n")
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(_header(kind, ndim, list(feats)))
        writer.writerows(rows)
        payload = buf.getvalue().encode()
        seq = head[0] + 1
        store.create_exclusive(f"{prefix}/deltas/{seq:08d}-{report.commit_id}.csv", payload)
        new_head = json.dumps({"zshard": {"seq": seq, "commit": report.commit_id}}).encode()
        won: list[bool] = []

        def swap(current: bytes | None, head=head, new_head=new_head, won=won) -> bytes | None:
            moved = (current is not None) != (head[1] is not None) or (
                current is not None and json.loads(current)["zshard"]["commit"] != head[1])
            won[:] = [not moved]
            return current if moved else new_head

        store.update(f"{prefix}/head.json", swap)
        if won[-1]:
            if seq % COMPACT_EVERY == 0:
                compact_geometry(url, name=name, storage_options=storage_options)
            if message:
                store.create_exclusive(f"{prefix}/deltas/{report.commit_id}.json", json.dumps(
                    {"zshard": {"commit": report.commit_id, "annotator": annotator,
                                "message": message}}).encode())
            return dataclasses.replace(report, bytes_written=len(payload))
        store.delete(f"{prefix}/deltas/{seq:08d}-{report.commit_id}.csv")  # not in the chain
    raise ConcurrentUpdateError(f"{store.url}/{prefix}: other exports kept winning for "
                                f"{tries} tries; nothing of this export was written",
                                key=f"{prefix}/head.json", tries=tries)


def _changes(kind, objs, shape_types, given, feats, base, state, versions, deleted,
             annotator, slug, ndim) -> tuple[GeometryReport, list[list[Any]]]:
    """The rows an export writes against the folded ``state``, and its report."""
    base_versions = base.versions if base is not None else {}
    when = now().isoformat(timespec="seconds")
    commit = new_commit_id(slug)
    ids, rows, conflicts = [], [], []
    added = modified = removed = 0
    for i, obj in enumerate(objs):
        zid = given[i] or f"{slug}-{secrets.token_hex(6)}"
        given[i] = zid  # a retry keeps the ids it made
        ids.append(zid)
        row_feats = {k: v[i] for k, v in feats.items()}
        stype = shape_types[i] if shape_types is not None else "point"
        if zid not in state and zid not in deleted:
            ours = {"op": "add", "author": annotator, "created": when,
                    "modified_by": annotator, "modified": when}
            rows += _rows(kind, zid, obj, stype, row_feats, ours, i)
            added += 1
            continue
        if versions.get(zid) != base_versions.get(zid):
            conflicts.append(GeometryConflict(zid, ("deleted" if zid in deleted else "changed")
                                              + f" by {versions.get(zid)}"))
            continue
        old = state[zid]
        new_rows = _rows(kind, zid, obj, stype, row_feats, {
            "op": "modify", "author": old[0]["author"], "created": old[0]["created"],
            "modified_by": annotator, "modified": when}, i)
        if _same(old, new_rows, _header(kind, obj.shape[1], list(row_feats))):
            continue
        rows += new_rows
        modified += 1
    width = len(_header(kind, ndim, list(feats))) - len(_OURS)
    for zid in base_versions:
        if zid in ids or (zid not in state and zid not in deleted):
            continue
        if versions.get(zid) != base_versions[zid]:
            conflicts.append(GeometryConflict(zid, f"changed by {versions.get(zid)}"))
            continue
        old = state[zid][0]
        rows.append([*([""] * width), zid, "delete", old["author"], old["created"], annotator,
                     when])
        removed += 1
    return GeometryReport(commit if rows else None, added, modified, removed, conflicts, ids,
                          0), rows


def _same(old: list[dict[str, str]], new_rows: list[list[Any]], header: list[str]) -> bool:
    """Whether an object's stored rows already say what ``new_rows`` would (ours aside)."""
    if len(old) != len(new_rows):
        return False
    for o, n in zip(sorted(old, key=lambda r: int(r.get("vertex-index") or 0)), new_rows,
                    strict=True):
        for k, v in zip(header, n, strict=True):
            if k in _OURS or k == "index":
                continue
            if k.startswith("axis-") or k == "vertex-index":
                if float(o.get(k) or 0) != float(v):
                    return False
            elif str(o.get(k)) != str(v):
                return False
    return True
