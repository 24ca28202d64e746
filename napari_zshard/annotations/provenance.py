"""Commit intents and records (write-once objects), the log, repair of interrupted commits,
and the per-object table (write-once CSV deltas plus compaction).

Layout inside a label image (``labels/<name>/zshard/``)::

    commits/<commit-id>/diff.npz     what changed: per inner chunk, voxel indexes, base, ours
    commits/<commit-id>/intent.json  written before the first shard (who, when, why, where)
    commits/<commit-id>/record.json  written after the last shard: the commit point
    objects/deltas/<commit-id>.csv   per-object changes of one commit
    objects/table.csv                compaction of the deltas (one row per object)
    ids.json                         reserved label-id blocks

A commit id is ``<UTC time>-<annotator slug>-<random>``: sortable by time, portable characters.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store import Store
from .labelimage import LabelImage

#: the diff of a commit: an .npz of per-chunk zstd frames (zlib took 2/3 of a big commit)
DIFF_NAME = "diff.npz"
#: An intent without a record older than this is finished by the next commit (seconds).
STALE_INTENT_SECONDS = 60.0
TABLE_COLUMNS = ("id", "name", "author", "created", "modified_by", "modified", "voxels",
                 "bbox")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_commit_id(slug: str) -> str:
    return f"{now():%Y%m%dT%H%M%S%fZ}-{slug}-{secrets.token_hex(3)}"


def commit_time(commit_id: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(commit_id.split("-", 1)[0], "%Y%m%dT%H%M%S%fZ").replace(
            tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _doc(kind: str, **fields: Any) -> bytes:
    return json.dumps({"zshard": {"kind": kind, **fields}}, indent=1, sort_keys=True).encode()


def _load(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    out = doc.get("zshard") if isinstance(doc, dict) else None
    return out if isinstance(out, dict) else None


def write_intent(li: LabelImage, commit_id: str, diff_npz: bytes, **fields: Any) -> None:
    li.store.create_exclusive(li.zshard_key(f"commits/{commit_id}/{DIFF_NAME}"), diff_npz)
    li.store.create_exclusive(
        li.zshard_key(f"commits/{commit_id}/intent.json"),
        _doc("intent", commit=commit_id, diff=f"commits/{commit_id}/{DIFF_NAME}", **fields))


def write_record(li: LabelImage, commit_id: str, **fields: Any) -> bool:
    """The commit point; False when a record exists already (a repair, or the original,
    finished it first)."""
    return li.store.create_exclusive(li.zshard_key(f"commits/{commit_id}/record.json"),
                                      _doc("record", commit=commit_id, **fields))


@dataclass(frozen=True)
class CommitRecord:
    """One commit as the log shows it."""

    commit_id: str
    label_image: str
    annotator: str | None
    created: str | None
    finished: str | None
    message: str
    status: str  # "committed" | "interrupted"
    voxels_written: int = 0
    shards_written: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    repaired: bool = False
    region: list[list[int]] | None = None
    shards: dict[str, dict[str, str]] = field(default_factory=dict)


def commit_ids(li: LabelImage) -> dict[str, set[str]]:
    """commit id -> the object names it has (intent.json, record.json, the diff)."""
    out: dict[str, set[str]] = {}
    prefix = li.zshard_key("commits")
    for key, _size in li.store.list_prefix(prefix):
        rel = key[len(prefix):].strip("/").split("/")
        if len(rel) == 2:
            out.setdefault(rel[0], set()).add(rel[1])
    return out


def read_log(li: LabelImage) -> list[CommitRecord]:
    out = []
    for cid, names in sorted(commit_ids(li).items()):
        intent = _load(li.store.read(li.zshard_key(f"commits/{cid}/intent.json"))) \
            if "intent.json" in names else None
        record = _load(li.store.read(li.zshard_key(f"commits/{cid}/record.json"))) \
            if "record.json" in names else None
        src = record or intent
        if src is None:
            continue
        out.append(CommitRecord(
            commit_id=cid, label_image=li.name, annotator=src.get("annotator"),
            created=src.get("created"), finished=(record or {}).get("finished"),
            message=src.get("message", ""),
            status="committed" if record else "interrupted",
            voxels_written=int((record or {}).get("voxels_written", 0)),
            shards_written=int((record or {}).get("shards_written", 0)),
            conflicts=list((record or {}).get("conflicts", [])),
            repaired=bool((record or {}).get("repaired", False)),
            region=src.get("region"), shards=dict((record or {}).get("shards", {}))))
    out.sort(key=lambda r: (r.created or "", r.commit_id))
    return out


def interrupted(li: LabelImage, *, older_than: float = 0.0, exclude: Iterable[str] = ()
                ) -> list[str]:
    """Commits with an intent but no record (started longer than ``older_than`` s ago)."""
    skip = set(exclude)
    out = []
    limit = now() - dt.timedelta(seconds=older_than)
    for cid, names in sorted(commit_ids(li).items()):
        if cid in skip or "intent.json" not in names or "record.json" in names:
            continue
        started = commit_time(cid)
        if older_than and started is not None and started > limit:
            continue
        out.append(cid)
    return out


def read_intent(li: LabelImage, commit_id: str) -> tuple[dict[str, Any], bytes] | None:
    intent = _load(li.store.read(li.zshard_key(f"commits/{commit_id}/intent.json")))
    if intent is None:
        return None
    diff = li.store.read(li.zshard_key(intent.get("diff", f"commits/{commit_id}/{DIFF_NAME}")))
    if diff is None:
        return None
    return intent, diff


class RecentHistory:
    """The newest ``limit`` committed records and, on demand, their diffs (read once per
    commit's conflict report, however many conflicts it has)."""

    def __init__(self, li: LabelImage, *, limit: int = 25):
        from ..store import FullRequest

        self.li = li
        ids = [cid for cid, names in sorted(commit_ids(li).items(), reverse=True)
               if "record.json" in names][:limit]
        raws = li.store.read_many([FullRequest(li.zshard_key(f"commits/{cid}/record.json"))
                                   for cid in ids])
        self.records = [(cid, _load(raw.whole) or {}) for cid, raw in zip(ids, raws,
                                                                         strict=True)]
        self._diffs: dict[str, Any] = {}

    def _diff(self, cid: str):
        from .apply import Diff

        if cid not in self._diffs:
            raw = self.li.store.read(self.li.zshard_key(f"commits/{cid}/{DIFF_NAME}"))
            self._diffs[cid] = Diff.from_npz(raw) if raw is not None else None
        return self._diffs[cid]

    def who_wrote(self, key: str, identity: str, *, chunk: tuple[int, ...], index: int,
                  value: int) -> tuple[str | None, str | None]:
        """Who wrote ``value`` into voxel ``index`` of level-0 inner chunk ``chunk`` of shard
        ``key``: the newest commit whose diff set it so; else the one that left the shard as
        ``identity``; else (None, None). Older history is not searched."""
        touching = [(cid, rec) for cid, rec in self.records
                    if key in (rec.get("shards") or {})]
        for cid, rec in touching:
            diff = self._diff(cid)
            found = diff.chunks.get(chunk) if diff is not None else None
            if found is None:
                continue
            hit = np.flatnonzero(found[0] == index)
            if hit.size and int(found[2][hit[0]]) == value:
                return cid, rec.get("annotator")
        for cid, rec in touching:
            if rec["shards"][key].get("after") == identity:
                return cid, rec.get("annotator")
        return None, None


# -- the object table -------------------------------------------------------------------------
def mask_box(origin: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global (lo, hi) of the True voxels of ``mask`` (a chunk at ``origin``)."""
    lo, hi = [], []
    for ax in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != ax)))
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    return origin + lo, origin + hi


def object_delta(written: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                 ) -> dict[int, dict[str, Any]]:
    """Per label value: voxels gained/lost and the bbox of the voxels it gained, from the
    per-chunk (origin, changed mask, before, after) of a commit. Chunk by chunk, so a fully
    repainted region never needs coordinates of its voxels."""
    out: dict[int, dict[str, Any]] = {}

    def row(v: int) -> dict[str, Any]:
        return out.setdefault(v, {"voxels": 0, "lo": None, "hi": None})

    for origin, sel, before, after in written:
        a, b = after[sel], before[sel]
        for values, sign in ((a, 1), (b, -1)):
            counts: list[int] | np.ndarray
            if values.min() == values.max():  # a chunk painted with one label: the usual case
                uniq, counts = values[:1], [values.size]
            else:
                uniq, counts = np.unique(values, return_counts=True)
            for v, n in zip(uniq.tolist(), list(counts), strict=True):
                if v:
                    row(v)["voxels"] += sign * int(n)
        for v in (a[:1] if a.min() == a.max() else np.unique(a)).tolist():
            if not v:
                continue
            lo, hi = mask_box(origin, sel & (after == v))
            r = row(v)
            r["lo"] = lo if r["lo"] is None else np.minimum(r["lo"], lo)
            r["hi"] = hi if r["hi"] is None else np.maximum(r["hi"], hi)
    return out


def merge_delta(into: dict[int, dict[str, Any]], part: dict[int, dict[str, Any]]) -> None:
    """Add the per-object changes ``part`` to ``into``."""
    for v, r in part.items():
        row = into.setdefault(v, {"voxels": 0, "lo": None, "hi": None})
        row["voxels"] += r["voxels"]
        if r["lo"] is not None:
            row["lo"] = r["lo"] if row["lo"] is None else np.minimum(row["lo"], r["lo"])
            row["hi"] = r["hi"] if row["hi"] is None else np.maximum(row["hi"], r["hi"])


def _bbox_text(lo, hi) -> str:
    if lo is None:
        return ""
    return ";".join(f"{int(a)}:{int(b)}" for a, b in zip(lo, hi, strict=True))


def write_object_delta(li: LabelImage, commit_id: str, author: str, when: str,
                       delta: dict[int, dict[str, Any]], *,
                       names: dict[str, str] | None = None) -> None:
    """The write-once per-object changes of one commit; ``names``: the class or name the
    annotator gave objects (label value as text -> name), also for objects it did not paint."""
    names = names or {}
    rows = dict(delta)
    for text in names:
        rows.setdefault(int(text), {"voxels": 0, "lo": None, "hi": None})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(TABLE_COLUMNS)
    for v, row in sorted(rows.items()):
        w.writerow([v, names.get(str(v), ""), author, when, author, when, row["voxels"],
                    _bbox_text(row["lo"], row["hi"])])
    li.store.create_exclusive(li.zshard_key(f"objects/deltas/{commit_id}.csv"),
                              buf.getvalue().encode())


def object_table(li: LabelImage) -> list[dict[str, Any]]:
    """One row per object: the compacted table plus every delta not yet compacted into it."""
    return _merged_rows(li)[0]


def _merged_rows(li: LabelImage) -> tuple[list[dict[str, Any]], list[str], set[int]]:
    """(rows, the commit ids of every delta folded in, ids that lost voxels since the last
    compaction: their boxes may have shrunk)."""
    from ..store import FullRequest

    rows: dict[int, dict[str, Any]] = {}
    table = li.store.read(li.zshard_key("objects/table.csv"))
    done: set[str] = set()
    if table:
        text = table.decode()
        first, _, rest = text.partition("\n")
        if first.startswith("#compacted="):
            done = set(filter(None, first[len("#compacted="):].split(",")))
            text = rest
        for r in csv.DictReader(io.StringIO(text)):
            rows[int(r["id"])] = {**r, "id": int(r["id"]), "voxels": int(r["voxels"])}
    prefix = li.zshard_key("objects/deltas")
    deltas = sorted(k for k, _ in li.store.list_prefix(prefix) if k.endswith(".csv"))
    folded = [k.rsplit("/", 1)[1][:-4] for k in deltas]
    todo = [k for k, cid in zip(deltas, folded, strict=True) if cid not in done]
    shrunk: set[int] = set()
    for result in li.store.read_many([FullRequest(k) for k in todo]):
        for r in csv.DictReader(io.StringIO((result.whole or b"").decode())):
            v, n = int(r["id"]), int(r["voxels"])
            if n < 0:
                shrunk.add(v)
            old = rows.get(v)
            if old is None:
                rows[v] = {**r, "id": v, "voxels": n}
                continue
            old["voxels"] += n
            old["modified_by"], old["modified"] = r["modified_by"], r["modified"]
            if r.get("name"):  # the latest name given wins (older deltas have no column)
                old["name"] = r["name"]
            old["bbox"] = _union(old.get("bbox", ""), r.get("bbox", ""))
    return [rows[v] for v in sorted(rows)], sorted(set(folded) | done), shrunk


#: a shrunk object's box is recomputed at compaction when its old box holds at most this
#: many voxels (else the union of what it gained is kept: a box that may be too large)
RECOMPUTE_BOX_VOXELS = 1 << 26


def _recompute_box(li: LabelImage, row: dict[str, Any]) -> str:
    from .apply import read_box

    if row["voxels"] <= 0 or not row.get("bbox"):
        return ""
    box = tuple(slice(*map(int, p.split(":"))) for p in row["bbox"].split(";"))
    if int(np.prod([s.stop - s.start for s in box])) > RECOMPUTE_BOX_VOXELS:
        return row["bbox"]
    hit = np.argwhere(read_box(li.store, li, 0, box) == row["id"])
    if not hit.size:
        return ""
    lo = hit.min(axis=0) + [s.start for s in box]
    hi = hit.max(axis=0) + 1 + [s.start for s in box]
    return _bbox_text(lo, hi)


def _union(a: str, b: str) -> str:
    if not a:
        return b
    if not b:
        return a
    pa = [tuple(map(int, p.split(":"))) for p in a.split(";")]
    pb = [tuple(map(int, p.split(":"))) for p in b.split(";")]
    return ";".join(f"{min(x[0], y[0])}:{max(x[1], y[1])}" for x, y in zip(pa, pb, strict=True))


def compact_objects(li: LabelImage) -> int:
    """Fold every delta into ``objects/table.csv`` (deltas stay: they are the history),
    recomputing the boxes of objects that lost voxels. Returns the number of objects."""
    rows, done, shrunk = _merged_rows(li)
    for row in rows:
        if row["id"] in shrunk:
            row["bbox"] = _recompute_box(li, row)
    buf = io.StringIO()
    buf.write("#compacted=" + ",".join(done) + "\n")
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    li.store.write(li.zshard_key("objects/table.csv"), buf.getvalue().encode())
    _write_properties(li, rows)
    return len(rows)


#: objects listed in ``image-label.properties`` (the rest are in the table only: the label
#: image's zarr.json stays small)
MAX_PROPERTIES = 2000


def _write_properties(li: LabelImage, rows: list[dict[str, Any]]) -> None:
    """``image-label.properties`` of the label image: one entry per object (the first
    :data:`MAX_PROPERTIES` by id), our fields under ``zshard``; updated by compare-and-swap
    so that nothing else in the label image's ``zarr.json`` is lost."""
    props = [{"label-value": int(r["id"]), "zshard": {
        "author": r.get("author"), "created": r.get("created"),
        "modified_by": r.get("modified_by"), "modified": r.get("modified"),
        "voxels": int(r["voxels"])}} for r in rows if int(r["voxels"]) > 0][:MAX_PROPERTIES]
    key = f"{li.prefix}/zarr.json"

    def put(current: bytes | None) -> bytes | None:
        if current is None:
            return None
        doc = json.loads(current)
        ome = doc.setdefault("attributes", {}).setdefault("ome", {})
        label = ome.setdefault("image-label", {"version": "0.5"})
        kept = [p for p in label.get("properties") or [] if isinstance(p, dict)
                and "zshard" not in p]  # someone else's entries stay
        ours = {p["label-value"] for p in props}
        label["properties"] = [p for p in kept if p.get("label-value") not in ours] + props
        return json.dumps(doc, indent=2).encode()

    li.store.update(key, put, tries=50)


def store_of(li: LabelImage) -> Store:
    return li.store
