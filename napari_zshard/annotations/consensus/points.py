"""Points several annotators placed in one geometry layer, merged into consensus points.

Each annotator exports into the same named points layer (:mod:`..geometry`; every row knows
its author). Points of different annotators closer than ``tolerance`` (world units, after the
layer's scale) are candidates for one consensus point; pairs are joined nearest first (ties by
the points' ids), never two points of one annotator in one group. A group placed by at least
``quorum`` annotators (default: a strict majority of those who placed any point in the layer)
becomes a consensus point at the mean of its members, with how many annotators placed it; the
rest are listed as unmatched. Deterministic: the same layer gives the same bytes.

Written beside the layer: ``consensus.csv`` (napari's points CSV layout plus ``annotators``
and ``sources``) and ``unmatched.csv``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from ..geometry import layer_prefix, load_geometry
from ..labelimage import writable_store
from .clusters import join_best_first


@dataclass(frozen=True)
class PointsConsensus:
    data: np.ndarray  # (N, D) consensus points, data coordinates of the layer
    annotators: list[int]  # how many annotators placed each
    sources: list[list[str]]  # the zshard ids of its members
    unmatched: list[str]  # zshard ids of points in no group with quorum
    quorum: int


def merge_points(url: str, *, name: str, tolerance: float, quorum: int | None = None,
                 storage_options: dict | None = None) -> PointsConsensus:
    """Merge the annotators' points of the geometry layer ``name`` (see the module docstring)
    and write ``consensus.csv`` and ``unmatched.csv`` beside it."""
    if not tolerance > 0:
        raise ValueError(f"tolerance must be a distance above 0, not {tolerance!r}")
    g = load_geometry(url, name=name, storage_options=storage_options)
    if g.kind != "points":
        raise ValueError(f"{name!r} is a {g.kind} layer; merge_points merges points")
    ids = g.ids
    authors = list(g.features.get("author", []))
    order = sorted(range(len(ids)), key=lambda i: (authors[i], ids[i]))
    pts = np.asarray(g.data, dtype=float)[order] if len(ids) else np.empty((0, len(g.scale)))
    ids = [ids[i] for i in order]
    authors = [authors[i] for i in order]
    people = sorted(set(authors))
    quorum = quorum if quorum is not None else len(people) // 2 + 1
    if quorum < 1:
        raise ValueError(f"quorum must be at least 1, not {quorum}")
    world = pts * np.asarray(g.scale, dtype=float)
    pairs = []
    for i in range(len(ids)):
        d = np.sqrt(((world[i + 1:] - world[i]) ** 2).sum(axis=1))
        for k in np.nonzero(d <= tolerance)[0]:
            j = i + 1 + int(k)
            if authors[i] != authors[j]:
                pairs.append((float(d[k]), ids[i], ids[j], i, j))
    pairs.sort()
    groups = join_best_first(list(range(len(ids))), ((i, j) for _, _, _, i, j in pairs),
                             owner=lambda i: authors[i])
    data: list[np.ndarray] = []
    counts: list[int] = []
    sources: list[list[str]] = []
    unmatched: list[str] = []
    for idx in groups:
        if len(idx) >= quorum:
            data.append(pts[idx].mean(axis=0))
            counts.append(len(idx))
            sources.append([ids[i] for i in idx])
        else:
            unmatched.extend(ids[i] for i in idx)
    result = PointsConsensus(np.array(data).reshape(-1, pts.shape[1]), counts, sources,
                             sorted(unmatched), quorum)
    _write(url, name, result, storage_options)
    return result


def _write(url: str, name: str, result: PointsConsensus, storage_options: dict | None) -> None:
    store = writable_store(url, storage_options)
    ndim = result.data.shape[1]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", *(f"axis-{i}" for i in range(ndim)), "annotators", "sources"])
    for k, (p, n, src) in enumerate(zip(result.data, result.annotators, result.sources,
                                        strict=True)):
        w.writerow([k, *(repr(float(c)) for c in p), n, ";".join(src)])
    store.write(f"{layer_prefix(name)}/consensus.csv", buf.getvalue().encode())
    store.write(f"{layer_prefix(name)}/unmatched.csv",
                ("zshard_id\n" + "".join(f"{z}\n" for z in result.unmatched)).encode())
