"""The merge, pass by pass, shard by shard (see the package docstring)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...engine.shard_writer import iter_shards
from ...store import Store
from ..labelimage import writable_store
from . import instance, semantic
from .contingency import PairTable, Stats, block_stats, pair_counts, reduce_pairs, reduce_stats
from .output import begin, csv_bytes, map_shards, publish, pyramid_steps
from .overrides import read_overrides
from .sources import Inputs, MergeInputError, open_inputs, slabs

#: conflict ids are values of the uint32 conflicts image
CONFLICT_ID_LIMIT = 2**32 - 1

MODES = ("semantic", "instance")
CONSENSUS_TABLE = "objects.csv"
CONFLICT_TABLE = "conflicts.csv"


@dataclass(frozen=True)
class MergeProgress:
    """Where a merge is: ``done`` of ``total`` shard steps (the total grows by the shards a
    second painting pass needs, when one is needed), in ``stage``."""

    done: int
    total: int
    stage: str


@dataclass
class MergeReport:
    mode: str
    inputs: tuple[str, ...]
    skipped: tuple[str, ...]  # listed label images without coverage (inputs="all")
    consensus_objects: int
    conflicts: int
    conflict_kinds: dict[str, int] = field(default_factory=dict)
    overrides_applied: int = 0
    seconds: float = 0.0


def _world(li_scale, li_translate, coords):
    return [float(t + c * s) for c, s, t in zip(coords, li_scale, li_translate, strict=True)]


def merge(url: str, **options: Any) -> MergeReport:
    """Merge the annotators' label images of the image at ``url``: :func:`merge_steps` run to
    its end (same options)."""
    steps = merge_steps(url, **options)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def merge_steps(url: str, *, inputs: list[str] | str = "all", output: str = "consensus",
                conflicts: str = "conflicts", mode: str = "semantic", quorum: int | None = None,
                classes: dict[str, dict[int, int]] | None = None, workers: int | None = None,
                client: Any = None, storage_options: dict | None = None
                ) -> Generator[MergeProgress, None, MergeReport]:
    """Merge the annotators' label images of the image at ``url`` into ``labels/<output>``
    and ``labels/<conflicts>`` (OME-Zarr 0.5 label images with pyramids) and their tables
    (``labels/<output>/zshard/objects.csv``, ``labels/<conflicts>/zshard/conflicts.csv``).

    ``inputs``: label image names, or "all" (every listed one with a coverage map);
    ``mode``: "semantic" (values are classes) or "instance" (values are objects);
    ``quorum``: votes a decision needs (default: a strict majority of those covering);
    ``classes``: instance mode, per input {object id: class} (class disagreements become
    conflicts); ``workers``: threads (default: one per core) or ``client``: a
    dask.distributed client. The outputs are the same bytes whatever the workers or store.

    Yields a :class:`MergeProgress` per shard of each pass and returns the
    :class:`MergeReport`. Closing it part-way stops the merge where it is: the outputs stay
    unlisted, with no zarr.json (never looking complete), and a rerun redoes them.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if output == conflicts:
        raise ValueError(f"output and conflicts must be two label images, both are {output!r}")
    if classes is not None and mode != "instance":
        raise ValueError("classes are for instance labels; in semantic mode a value is a class")
    if quorum is not None and quorum < 1:
        raise ValueError(f"quorum must be at least 1, not {quorum}")
    t0 = time.perf_counter()
    store = writable_store(url, storage_options)
    src = open_inputs(store, inputs, output=output)
    if conflicts in src.names:
        raise MergeInputError(f"{conflicts!r} is an input; it cannot be the conflicts output")
    workers = workers or os.cpu_count() or 1
    overrides = read_overrides(store, output)
    runner = _Semantic(src, quorum) if mode == "semantic" else _Instance(src, quorum, classes)
    shards = src.shards()
    out_c = begin(store, output, src.images[0])
    out_x = begin(store, conflicts, src.images[0])
    total = len(shards) * (2 if mode == "instance" else 1) + 2 * sum(
        sum(1 for _ in iter_shards(m)) for m in out_c.metas[1:])
    done = 0
    for _ in runner.count(workers=workers, client=client):  # instance: object statistics
        done += 1
        yield MergeProgress(done, total, "counting")
    per_shard: dict = {}

    def paint(shard, overlap_ids=None):
        region, cons, conf, extra = runner.paint(shard, overlap_ids)
        applied = _apply_overrides(cons, conf, runner.override_map(overrides))
        out_c.write0(shard, cons)
        out_x.write0(shard, conf)
        return shard, block_stats(cons, region), block_stats(conf, region), extra, applied

    for shard, cs, xs, extra, applied in map_shards(paint, shards, workers=workers,
                                                    client=client):
        per_shard[shard] = (cs, xs, extra, applied)
        done += 1
        yield MergeProgress(done, total, "painting")
    redo = runner.after_first_paint({s: v[2] for s, v in per_shard.items()})
    total += len(redo)
    for shard, cs, xs, extra, applied in map_shards(
            lambda s: paint(s, runner.overlap_ids), redo, workers=workers, client=client):
        per_shard[shard] = (cs, xs, extra, applied)
        done += 1
        yield MergeProgress(done, total, "painting overlaps")
    for out in (out_c, out_x):
        for _ in pyramid_steps(out, workers=workers, client=client):
            done += 1
            yield MergeProgress(done, total, "pyramids")
    ndim = src.meta.ndim
    cons_stats = reduce_stats([v[0] for _, v in sorted(per_shard.items())], ndim)
    conf_stats = reduce_stats([v[1] for _, v in sorted(per_shard.items())], ndim)
    li = src.images[0]
    tables_c = {CONSENSUS_TABLE: runner.consensus_table(cons_stats, li)}
    rows, kinds = runner.conflict_table(conf_stats, li)
    publish(out_c, tables_c)
    publish(out_x, {CONFLICT_TABLE: rows})
    report = MergeReport(mode=mode, inputs=src.names, skipped=src.skipped,
                         consensus_objects=len(cons_stats.ids) if mode == "instance" else 0,
                         conflicts=sum(kinds.values()), conflict_kinds=kinds,
                         overrides_applied=sum(1 for o in overrides if any(
                             v[3].get(o["key"], 0) for v in per_shard.values())),
                         seconds=time.perf_counter() - t0)
    _log_run(store, output, report, workers=workers, client=client)
    return report


def _apply_overrides(cons, conf, ov: dict[int, tuple[int, str]]) -> dict[str, int]:
    """Paint each overridden conflict (``ov``: conflict id → (value, override key))."""
    applied: dict[str, int] = {}
    for cid, (value, key) in ov.items():
        hit = conf == cid
        if hit.any():
            cons[hit] = value
            conf[hit] = 0
            applied[key] = int(hit.sum())
    return applied


def _log_run(store: Store, output: str, report: MergeReport, **info: Any) -> None:
    """Run information (time, workers) goes to a log object outside the outputs."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    doc = {**vars(report), "finished": stamp, "workers": info["workers"],
           "distributed": info["client"] is not None}
    store.write(f"labels/{output}/zshard/runs/{stamp}-{uuid.uuid4().hex[:8]}.json",
                json.dumps(doc, indent=2, default=list).encode())


class _Semantic:
    def __init__(self, src: Inputs, quorum: int | None):
        self.src, self.quorum = src, quorum
        self.overlap_ids = None
        meta = src.meta
        self.grid = tuple(-(-n // c) for n, c in zip(meta.shape, meta.chunk_shape, strict=True))
        self.covering: dict[int, int] = {}  # conflict id -> bit mask of covering annotators

    def count(self, *, workers: int, client: Any = None) -> Iterator[None]:
        return iter(())  # a per-voxel vote needs no counting pass

    def override_map(self, overrides) -> dict[int, tuple[int, str]]:
        return {int(o["key"].split(":")[1]): (int(o["value"]), o["key"]) for o in overrides
                if o["key"].startswith("semantic:")}

    def paint(self, shard, _overlap_ids):
        region, values, covered = self.src.read(shard)
        cons = np.zeros(values.shape[1:], np.uint32)
        ids = np.zeros(values.shape[1:], np.uint32)
        for local, sub in slabs(region):
            slab = (slice(None), *local)  # the slab in every input
            c, kind = semantic.vote(values[slab], covered[slab], quorum=self.quorum)
            cons[local] = c
            ids[local] = semantic.conflict_ids(kind, sub, self.src.meta.chunk_shape,
                                               self.grid)
        masks = {}
        for cid in np.unique(ids[ids > 0]).tolist():
            sel = ids == cid
            masks[cid] = sum(1 << i for i in range(len(values)) if covered[i][sel].any())
        return region, cons, ids, masks

    def after_first_paint(self, extras) -> list:
        for masks in extras.values():
            for cid, m in masks.items():
                self.covering[cid] = self.covering.get(cid, 0) | m
        return []

    def consensus_table(self, stats: Stats, li) -> bytes:
        rows = [[int(v), int(n)] for v, n in zip(stats.ids, stats.count, strict=True)]
        return csv_bytes(["value", "voxels"], rows)

    def conflict_table(self, stats: Stats, li):
        rows: list[list[Any]] = []
        kinds: dict[str, int] = {}
        for r, cid in enumerate(stats.ids.tolist()):
            kind = semantic.KIND_NAMES[cid % 2 or 2]
            kinds[kind] = kinds.get(kind, 0) + 1
            names = [n for i, n in enumerate(self.src.names) if self.covering.get(cid, 0) >> i & 1]
            rows.append(_conflict_row(cid, f"semantic:{cid}", kind, names, [], [], stats, r,
                                     li))
        return csv_bytes(CONFLICT_HEADER, rows), kinds


CONFLICT_HEADER = ["id", "key", "kind", "annotators", "source_ids", "ious", "voxels", "bbox_min",
                   "bbox_max", "centroid"]


def _conflict_row(cid, key, kind, names, sources, ious, stats: Stats | None, r, li):
    if stats is None or r is None:
        return [cid, key, kind, names, sources, ious, 0, "", "", ""]
    lo, hi = stats.lo[r], stats.hi[r] - 1
    centroid = stats.sums[r] / stats.count[r]
    return [cid, key, kind, names, sources, [round(x, 4) for x in ious], int(stats.count[r]),
            _world(li.scale, li.translate, lo), _world(li.scale, li.translate, hi),
            _world(li.scale, li.translate, centroid)]


class _Instance:
    def __init__(self, src: Inputs, quorum, classes):
        self.src = src
        self.overlap_ids: dict[tuple[int, int], int] = {}  # consensus pair → conflict id
        missing = set(classes or {}) - set(src.names)
        if missing:
            raise MergeInputError(f"classes given for label images that are not inputs: "
                                  f"{sorted(missing)}")
        self._options = (quorum, classes)  # (the runner goes to workers: no client here)

    def count(self, *, workers: int, client: Any = None) -> Iterator[None]:
        """Per-object statistics and pairwise contingency counts, shard by shard (yields
        after each), then the matching: the plan painting follows."""
        src = self.src
        quorum, classes = self._options
        k = len(src.names)

        def count_shard(shard):
            region, values, covered = src.read(shard)
            objs: list[list[Stats]] = [[] for _ in range(k)]
            prs: dict = {(i, j): [] for i in range(k) for j in range(i + 1, k)}
            for local, sub in slabs(region):
                slab = (slice(None), *local)  # the slab in every input
                v, c = values[slab], covered[slab]
                for i in range(k):
                    objs[i].append(block_stats(v[i], sub))
                for (i, j), parts in prs.items():
                    parts.append(pair_counts(v[i], v[j], c[i] & c[j]))
            ndim = len(region)
            return ([reduce_stats(o, ndim) for o in objs],
                    {key: reduce_pairs(parts) for key, parts in prs.items()})

        objs: list[list[Stats]] = [[] for _ in range(k)]
        prs: dict = {(i, j): [] for i in range(k) for j in range(i + 1, k)}
        for o, p in map_shards(count_shard, src.shards(), workers=workers, client=client):
            for i in range(k):
                objs[i].append(o[i])
            for key, v in p.items():
                prs[key].append(v)
            yield
        ndim = src.meta.ndim
        self.stats = [reduce_stats(o, ndim) for o in objs]
        tables = {key: PairTable(*reduce_pairs(v)) for key, v in prs.items()}
        cls = [(classes or {}).get(n) for n in src.names] if classes else None
        self.plan = instance.plan(k, self.stats, tables, quorum=quorum, classes=cls)
        # An overlap of consensus objects a < b gets the id first + a * (n + 1) + b: known
        # before painting, so one painting pass does (a second pass that numbers the
        # overlaps found by the first costs ~30 % of a merge); when those ids would not fit
        # the uint32 labels, they are numbered densely after a first pass instead.
        n = len(self.plan.clusters)
        first = len(self.plan.conflicts) + 1
        self._pair_base = (first, n + 1) if first + (n + 1) ** 2 < CONFLICT_ID_LIMIT else None
        self._cluster_of = {self._cluster_key(c): c for c in range(1, n + 1)}

    def override_map(self, overrides) -> dict[int, tuple[int, str]]:
        keys = {cf.key(self.src.names): cf.id for cf in self.plan.conflicts}
        keys.update({self._overlap_key(p): i for p, i in self.overlap_ids.items()})
        if self._pair_base is not None:  # overlaps have their ids before they are found
            for o in overrides:
                pair = self._pair_of_key(o["key"])
                if pair is not None:
                    keys[o["key"]] = int(self._pair_ids(np.array(pair[0]), np.array(pair[1])))
        return {keys[o["key"]]: (int(o["value"]), o["key"]) for o in overrides
                if o["key"] in keys}

    def _cluster_key(self, c: int) -> str:
        names = self.src.names
        return ";".join(f"{names[i]}:{a}" for i, a in self.plan.clusters[c - 1])

    def _overlap_key(self, pair) -> str:
        return "overlap:" + "|".join(self._cluster_key(c) for c in pair)

    def _pair_ids(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        assert self._pair_base is not None  # (called only when pairs have ids up front)
        first, width = self._pair_base
        return first + lo.astype(np.int64) * width + hi

    def _pair_of_key(self, key: str) -> tuple[int, int] | None:
        """The consensus pair an overlap conflict's key names (None: not an overlap of
        objects of this merge)."""
        if not key.startswith("overlap:"):
            return None
        named = key[len("overlap:"):].split("|")
        parts = [c for c in map(self._cluster_of.get, named) if c is not None]
        if len(named) != 2 or len(parts) != 2:
            return None
        a, b = sorted(parts)
        return a, b

    def paint(self, shard, overlap_ids):
        if self._pair_base is not None:
            overlap_ids = self._pair_ids
        elif overlap_ids is not None:
            table = dict(overlap_ids)

            def overlap_ids(lo, hi, table=table):
                return np.array([table[(int(a), int(b))] for a, b in zip(lo, hi, strict=True)],
                                dtype=np.int64)
        region, values, covered = self.src.read(shard)
        cons = np.zeros(values.shape[1:], np.uint32)
        codes = np.zeros(values.shape[1:], np.uint32)
        pairs: dict = {}
        for local, _ in slabs(region):
            slab = (slice(None), *local)  # the slab in every input
            c, x, p = instance.paint(self.plan, values[slab], covered[slab], overlap_ids)
            cons[local], codes[local] = c, x
            for key, n in p.items():
                pairs[key] = pairs.get(key, 0) + n
        return region, cons, codes, pairs

    def after_first_paint(self, extras) -> list:
        counts: dict = {}
        for pairs in extras.values():
            for p, n in pairs.items():
                counts[p] = counts.get(p, 0) + n
        if self._pair_base is not None:  # painted in the first pass already
            self.overlap_ids = {p: int(self._pair_ids(np.array(p[0]), np.array(p[1])))
                                for p in sorted(counts)}
            return []
        first = len(self.plan.conflicts) + 1
        self.overlap_ids = {p: first + n for n, p in enumerate(sorted(counts))}
        return sorted(s for s, pairs in extras.items() if pairs)

    def consensus_table(self, stats: Stats, li) -> bytes:
        names, rows = self.src.names, []
        for r, cid in enumerate(stats.ids.tolist()):
            lo, hi = stats.lo[r], stats.hi[r] - 1
            if cid <= len(self.plan.clusters):
                cls = self.plan.classes[cid - 1]
                sources = [f"{names[i]}:{a}" for i, a in self.plan.clusters[cid - 1]]
            else:  # a value a resolution painted
                cls, sources = None, ["resolved"]
            rows.append([cid, "" if cls is None else cls, int(stats.count[r]), sources,
                         _world(li.scale, li.translate, lo), _world(li.scale, li.translate, hi),
                         _world(li.scale, li.translate, stats.sums[r] / stats.count[r])])
        return csv_bytes(["id", "class", "voxels", "sources", "bbox_min", "bbox_max",
                          "centroid"], rows)

    def conflict_table(self, stats: Stats, li):
        names = self.src.names
        rows: list[list[Any]] = []
        kinds: dict[str, int] = {}
        listed = [(cf.id, cf.key(names), cf.kind, cf.members, cf.ious)
                  for cf in self.plan.conflicts]
        listed += [(i, self._overlap_key(p), "overlap",
                    tuple(m for c in p for m in self.plan.clusters[c - 1]), ())
                   for p, i in sorted(self.overlap_ids.items(), key=lambda kv: kv[1])]
        for cid, key, kind, members, ious in listed:
            kinds[kind] = kinds.get(kind, 0) + 1
            r = stats.row(cid)
            if r is None:  # hidden everywhere by a conflict of higher precedence
                r, st = 0, self._member_stats(members)
            else:
                st = stats
            rows.append(_conflict_row(cid, key, kind, sorted({names[i] for i, _ in members}),
                                      [f"{names[i]}:{a}" for i, a in members], list(ious),
                                      st, r, li))
        return csv_bytes(CONFLICT_HEADER, rows), kinds

    def _member_stats(self, members) -> Stats | None:
        rows = [(self.stats[i], self.stats[i].row(a)) for i, a in members]
        rows = [(s, r) for s, r in rows if r is not None]
        if not rows:
            return None
        return Stats(np.zeros(1, np.uint64), np.array([sum(int(s.count[r]) for s, r in rows)]),
                     np.min([s.lo[r] for s, r in rows], axis=0)[None],
                     np.max([s.hi[r] for s, r in rows], axis=0)[None],
                     np.sum([s.sums[r] for s, r in rows], axis=0)[None])
