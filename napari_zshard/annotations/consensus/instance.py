"""Instance merge: a value is an object, and ids mean nothing across annotators.

* **Match**: two objects of different annotators match when their IoU, counted over the
  voxels both annotators covered, is strictly above 0.5 (at most one match per annotator
  pair and object, since two objects cannot both overlap more than half of a third).
* **Cluster**: matches are joined in order of decreasing IoU, ties by (annotator, id), and a
  join is skipped when the cluster would hold two objects of one annotator (chains broken
  deterministically).
* **Quorum**: an annotator covers a cluster when it is a member or covered at least half of
  the cluster's largest member; the default quorum is a strict majority of those covering.
  A cluster with quorum becomes one consensus object: the voxels more than half of its members
  marked. Consensus ids number the quorum clusters in order of their smallest member
  (annotators by name, then id): a pure function of the inputs.
* **Conflicts**, in precedence order (what the conflicts image shows where they overlap; the
  table lists them all): an object X overlapping two or more objects Y of another annotator
  by at least :data:`SPLIT_SHARE` of the smaller one (not all in X's cluster) is a ``merge``
  by X's annotator when at least two other annotators have X as several objects, else a
  ``split`` by the one annotator who has it as several (with two annotators: always split);
  ``class`` (members of a quorum cluster disagree on the class, when classes are given),
  ``overlap`` (a voxel two consensus objects claim; it goes to the one with more votes,
  then the lower id) and
  ``no_quorum`` (a cluster below quorum whose objects are in no split/merge).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .clusters import join_best_first
from .contingency import PairTable, Stats

#: share of the smaller object two unmatched objects must overlap to count as a split/merge:
#: 0.4, not 0.5, because a genuine piece drawn with boundaries ±2 voxels off on objects ~15
#: voxels across overlaps the others' whole object by only 40-50 % of its size, while
#: neighbours touching through such boundary noise overlap by well under 40 % (tests/)
SPLIT_SHARE = 0.4
KINDS = ("split", "merge", "class", "overlap", "no_quorum")  # precedence, first wins
RANK = {k: i + 1 for i, k in enumerate(KINDS)}
Member = tuple[int, int]  # (annotator index, object id)


@dataclass
class Conflict:
    kind: str
    members: tuple[Member, ...]  # the source objects
    ious: tuple[float, ...] = ()
    id: int = 0

    def key(self, names: tuple[str, ...]) -> str:
        return self.kind + ":" + ";".join(f"{names[i]}:{a}" for i, a in self.members)


@dataclass
class Plan:
    """Everything the painting pass needs, small: per annotator, id -> consensus id and
    id -> conflict code."""

    k: int
    consensus: list[tuple[np.ndarray, ...]]  # per annotator (ids, consensus ids[, dense])
    members: np.ndarray  # bit mask of member annotators per consensus id (index 0 unused)
    codes: list[tuple[np.ndarray, ...]]  # per annotator (ids, rank << 32 | conflict[, dense])
    clusters: list[tuple[Member, ...]]  # per consensus id - 1
    classes: list[int | None]
    conflicts: list[Conflict] = field(default_factory=list)


def plan(k: int, stats: list[Stats], pairs: dict[tuple[int, int], PairTable], *,
         quorum: int | None, classes: list[Mapping[int, int] | None] | None = None) -> Plan:
    nodes = [(i, int(a)) for i in range(k) for a in stats[i].ids]
    size = {(i, int(a)): int(c) for i in range(k) for a, c in zip(stats[i].ids, stats[i].count,
                                                                   strict=True)}
    edges, overlaps = [], []
    for (i, j), t in sorted(pairs.items()):
        a, b, n, sa, sb = t.overlaps()
        union = sa + sb - n
        for x, y, nn, u, s1, s2 in zip(a.tolist(), b.tolist(), n.tolist(), union.tolist(),
                                       sa.tolist(), sb.tolist(), strict=True):
            if 2 * nn > u:
                edges.append((-nn / u, i, x, j, y))
            if nn >= SPLIT_SHARE * min(s1, s2):
                overlaps.append((i, x, j, y, nn / u))
    edges.sort()
    groups = join_best_first(nodes, (((i, x), (j, y)) for _, i, x, j, y in edges),
                             owner=lambda n: n[0])
    clusters = sorted(tuple(sorted(g)) for g in groups)

    def covers(j: int, rep: Member) -> bool:
        i, a = rep
        if i == j:
            return True
        t = pairs[(min(i, j), max(i, j))]
        keys, sums = t.row if i < j else t.col
        pos = int(np.searchsorted(keys, a))
        got = int(sums[pos]) if pos < len(keys) and keys[pos] == a else 0
        return 2 * got >= size[rep]

    quorate, cluster_of = [], {}
    for c in clusters:
        rep = max(c, key=lambda m: (size[m], -m[0], -m[1]))
        n_cov = sum(1 for j in range(k) if any(m[0] == j for m in c) or covers(j, rep))
        need = quorum if quorum is not None else n_cov // 2 + 1
        if len(c) >= need:
            quorate.append(c)
        for m in c:
            cluster_of[m] = c
    in_consensus = {m: cid + 1 for cid, c in enumerate(quorate) for m in c}

    conflicts: dict[tuple, Conflict] = {}
    by_obj: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    for i, x, j, y, iou in overlaps:
        by_obj.setdefault((i, x, j), []).append((y, iou))
        by_obj.setdefault((j, y, i), []).append((x, iou))
    involved: set[Member] = set()
    events = [((i, x), j, ys) for (i, x, j), ys in sorted(by_obj.items())
              if len(ys) >= 2 and not all(cluster_of[(j, y)] is cluster_of[(i, x)]
                                          for y, _ in ys)]
    seen_by = Counter(one for one, _, _ in events)  # annotators who have X as several objects
    for one, j, ys in events:
        others = tuple((j, y) for y, _ in sorted(ys))
        # several annotators have apart what X's annotator joined: a merge; else one
        # annotator cut what the others have as one: a split
        key = ("merge", (one,)) if seen_by[one] >= 2 else ("split", others)
        cf = conflicts.setdefault(key, Conflict(key[0], ()))
        cf.members = tuple(sorted({*cf.members, one, *others}))
        cf.ious = cf.ious + tuple(iou for _, iou in sorted(ys))
        involved.update(cf.members)
    cons_class: list[int | None] = []
    for c in quorate:
        if classes is None:
            cons_class.append(None)
            continue
        votes = [(classes[i] or {}).get(a) for i, a in c]
        counted = Counter(v for v in votes if v is not None)
        best = min(counted.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counted else None
        cons_class.append(best)
        if len(counted) > 1:
            conflicts[("class", c)] = Conflict("class", c)
    for c in clusters:
        if c[0] not in in_consensus and not set(c) & involved:
            conflicts[("no_quorum", c)] = Conflict("no_quorum", c)
    ordered = sorted(conflicts.values(), key=lambda cf: (RANK[cf.kind], cf.members))
    for number, cf in enumerate(ordered, 1):
        cf.id = number
    code: dict[Member, int] = {}
    for cf in ordered:
        for m in cf.members:
            v = (RANK[cf.kind] << 32) | cf.id
            code[m] = min(code.get(m, v), v)
    per_cons, per_code = [], []
    for i in range(k):
        ids = stats[i].ids
        per_cons.append(with_dense(ids, np.array([in_consensus.get((i, int(a)), 0)
                                                  for a in ids], dtype=np.int64)))
        per_code.append(with_dense(ids, np.array([code.get((i, int(a)), 0) for a in ids],
                                                 dtype=np.int64)))
    members = np.array([0] + [sum(1 << i for i, _ in c) for c in quorate], dtype=np.int64)
    return Plan(k=k, consensus=per_cons, members=members, codes=per_code, clusters=quorate,
                classes=cons_class, conflicts=ordered)


#: ids below this are looked up in a dense table (a gather, ~10x faster than a search);
#: 4 M ids x 8 bytes = 32 MiB per annotator and table at most
DENSE_IDS = 1 << 22


def lookup(table: tuple[np.ndarray, ...], values: np.ndarray) -> np.ndarray:
    """``out[id]`` per voxel (0 for 0 and unknown ids) of a (sorted ids, out) table."""
    keys, out = table[0], table[1]
    if not len(keys):
        return np.zeros(values.shape, np.int64)
    dense = table[2] if len(table) > 2 else None
    if dense is not None:
        return dense[np.minimum(values, len(dense) - 1)]
    pos = np.clip(np.searchsorted(keys, values), 0, len(keys) - 1)
    return np.where((keys[pos] == values) & (values != 0), out[pos], 0)


def with_dense(keys: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, ...]:
    """The table, plus a dense copy when its ids are small (the last entry stays 0: ids
    beyond the table are clipped onto it)."""
    if not len(keys) or int(keys[-1]) + 2 > DENSE_IDS:
        return keys, out
    dense = np.zeros(int(keys[-1]) + 2, np.int64)
    dense[keys.astype(np.int64)] = out
    dense[0] = 0
    return keys, out, dense


def paint(p: Plan, values: np.ndarray, covered: np.ndarray,
          overlap_id: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
          ) -> tuple[np.ndarray, np.ndarray, dict[tuple[int, int], int]]:
    """(consensus ids, conflict codes, overlapping consensus pairs with voxel counts) of a
    block; ``overlap_id(lo, hi)`` (the conflict id of each overlapping pair of consensus ids;
    None: not known yet, a later pass paints them) paints the overlaps.

    A voxel belongs to a consensus object when more than half of the object's members
    *that covered the voxel* marked it: where one member never looked, the others decide."""
    k = p.k
    cid = np.stack([lookup(p.consensus[i], values[i]) for i in range(k)])
    # per voxel and annotator i: how many annotators put the same consensus object there
    # (equality is symmetric: each pair compared once), and how many of that object's members
    # looked at it; small counts in int16 (k <= 2**15 annotators) move less memory
    votes = np.ones(cid.shape, np.int16)
    looked = np.zeros(cid.shape, np.int16)
    for i in range(k):
        for j in range(i + 1, k):
            same = cid[i] == cid[j]
            votes[i] += same
            votes[j] += same
    mask = p.members[cid]
    for i in range(k):
        for j in range(k):
            looked[i] += covered[j] & ((mask[i] >> j) & 1).astype(bool)
    claim = (cid > 0) & (2 * votes > looked)
    score = np.where(claim, votes.astype(np.int64) * (1 << 40) - cid, -1)
    best = score.argmax(axis=0)
    cons = np.where(claim.any(axis=0), np.take_along_axis(cid, best[None], 0)[0], 0)
    second = claim & (cid != cons[None])
    overlap = second.any(axis=0)
    pairs: dict[tuple[int, int], int] = {}
    codes = np.stack([lookup(p.codes[i], values[i]) for i in range(k)])
    codes = np.where(codes > 0, codes, np.iinfo(np.int64).max).min(axis=0)
    if overlap.any():
        other = np.where(second, cid, np.iinfo(np.int64).max).min(axis=0)
        lo, hi = np.minimum(cons, other)[overlap], np.maximum(cons, other)[overlap]
        keys, counts = np.unique(lo * (1 << 32) + hi, return_counts=True)
        pairs = {(int(x >> 32), int(x & 0xFFFFFFFF)): int(n) for x, n in
                 zip(keys, counts, strict=True)}
        if overlap_id is not None:
            oc = (RANK["overlap"] << 32) | overlap_id(lo, hi).astype(np.int64)
            codes[overlap] = np.minimum(codes[overlap], oc)
    codes[codes == np.iinfo(np.int64).max] = 0
    return cons, codes & 0xFFFFFFFF, pairs
