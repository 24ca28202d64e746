"""The commit of an :class:`~.edit.Edit`, and the replay of an interrupted one (repair).

Order, so that a commit killed at any point is finished by replaying its diff:
diff + intent (write-once) → level-0 shards (three-way merge, per shard CAS) → coarser levels
(per shard CAS, recomputed from finer data read inside the attempt) → record (write-once, the
commit point) → object-table delta. Replaying is a three-way merge again, so it is idempotent
and safe while a slow original still runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from ..engine.cache import forget_written
from ..engine.shard_update import ChunkEdit, decode_chunk, split_shard
from ..errors import ZShardError
from . import provenance as prov
from .apply import (
    ApplyResult,
    Diff,
    ShardResult,
    Summarize,
    apply_level0,
    identity,
    update_pyramid,
)
from .ids import claim_unreserved
from .labelimage import LabelImage

if TYPE_CHECKING:
    from .edit import CommitProgress, CommitReport, Conflict, Edit
    from .region import Snapshot

log = logging.getLogger(__name__)
Coords = tuple[int, ...]


def _diff_of(edit: Edit, snap: Snapshot) -> Diff:
    meta = edit._meta
    diff = Diff(meta.dtype, int(np.prod(meta.chunk_shape)))
    for c, ours_part in snap.items():
        base = edit._base_values(c)
        _, inner = edit.data.chunk_box(c)
        changed = ours_part != base[inner]
        pending = edit._pending.get(c)
        if pending is not None:
            changed &= ~pending[inner]
        if not changed.any():
            continue
        mask = np.zeros(base.shape, dtype=bool)
        mask[inner] = changed
        ours = base.copy()
        ours[inner] = ours_part
        idx = np.flatnonzero(mask).astype(np.uint32)  # an inner chunk holds < 2**31 bytes
        diff.put(c, idx, base.flat[idx], ours.flat[idx])
    return diff


def _summarizer(li: LabelImage, *, replay: bool) -> Summarize:
    """What a commit keeps of each merged chunk, made while its values are at hand: its
    conflicts grouped by (ours, theirs) with their global coordinates, its object-table
    changes and the box of the voxels it changed. A replay also counts the voxels the
    interrupted original had written already (they hold ours, and were the diff's base
    before it)."""
    cs = li.metas[0].chunk_shape

    def summarize(chunk: Coords, edit: ChunkEdit, theirs: np.ndarray, write: np.ndarray,
                  conflict: np.ndarray) -> tuple[list, dict, tuple | None]:
        origin = np.array([i * c for i, c in zip(chunk, cs, strict=True)])
        groups = []
        if conflict.any():
            coords = np.argwhere(conflict) + origin
            pairs = np.stack([edit.ours[conflict], theirs[conflict]], axis=1)
            for pair in np.unique(pairs, axis=0):
                hit = (pairs == pair).all(axis=1)
                groups.append((int(pair[0]), int(pair[1]), coords[hit]))
        if replay:
            sel = edit.mask & ~conflict
            before = np.where(write, theirs, edit.base)
        else:
            sel, before = write, theirs
        if not sel.any():
            return groups, {}, None
        return (groups, prov.object_delta([(origin, sel, before, edit.ours)]),
                prov.mask_box(origin, sel))

    return summarize


def _conflicts(li: LabelImage, groups: dict[tuple[str, str, int, int], list[np.ndarray]]
               ) -> list[Conflict]:
    from .edit import Conflict

    meta = li.metas[0]
    out_list = []
    history = prov.RecentHistory(li) if groups else None
    for (key, theirs_id, ours, theirs), parts in sorted(groups.items()):
        pts = np.concatenate(parts)
        first = pts[0]
        chunk = tuple(int(v) // n for v, n in zip(first, meta.chunk_shape, strict=True))
        index = int(np.ravel_multi_index(tuple(int(v) % n for v, n in zip(
            first, meta.chunk_shape, strict=True)), meta.chunk_shape))
        assert history is not None
        commit, annotator = history.who_wrote(key, theirs_id, chunk=chunk, index=index,
                                              value=theirs)
        lo, hi = pts.min(axis=0), pts.max(axis=0) + 1
        out_list.append(Conflict(
            voxels=len(pts), bbox=tuple(slice(int(a), int(b)) for a, b in zip(lo, hi,
                                                                               strict=True)),
            centroid=tuple(float(v) for v in pts.mean(axis=0)), ours=ours, theirs=theirs,
            their_commit=commit, their_annotator=annotator))
    return out_list


class Applied:
    """What a commit (or replay) did, gathered shard by shard so that the values a merge met
    are dropped as soon as the shard is accounted for (memory stays a shard's worth)."""

    def __init__(self, li: LabelImage, diff: Diff, *, replay: bool):
        self.li, self.diff, self.replay = li, diff, replay
        self.result: ApplyResult | None = None
        self.groups: dict[tuple[str, str, int, int], list[np.ndarray]] = {}
        self.delta: dict[int, dict] = {}
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.conflicts: list[Conflict] = []

    def add(self, shard: Coords, res: ShardResult) -> None:
        for o in res.outcomes.values():
            groups, delta, box = o.extra
            for ours, theirs, coords in groups:
                self.groups.setdefault((res.key, res.theirs_identity, ours, theirs),
                                       []).append(coords)
            prov.merge_delta(self.delta, delta)
            if box is not None:
                lo, hi = box
                self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
                self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
            o.extra = None

    def done(self, result: ApplyResult) -> Applied:
        self.result = result
        update_pyramid(self.li, result.changed_boxes, result)
        _forget_written_shards(self.li, result.identities)
        self.conflicts = _conflicts(self.li, self.groups)
        return self

    @property
    def changed_region(self) -> tuple[slice, ...] | None:
        if self.lo is None or self.hi is None:
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(self.lo, self.hi, strict=True))


def _forget_written_shards(li: LabelImage, keys) -> None:
    """Every array this process has open over the label image reads the shards this commit
    wrote again, at every level, and keeps what it cached of the others."""
    root = li.store.url.rstrip("/")
    for path, meta in zip(li.paths, li.metas, strict=True):
        prefix = f"{li.prefix}/{path}/"
        shards = [c for c in (meta.grid_coords(k[len(prefix):]) for k in keys
                              if k.startswith(prefix)) if c is not None]
        if shards:
            forget_written(f"{root}/{prefix.rstrip('/')}", shards)


def apply_all(li: LabelImage, diff: Diff, base_identities: dict[str, str] | None,
              *, replay: bool = False) -> Applied:
    applied = Applied(li, diff, replay=replay)
    for item in apply_level0(li, diff, base_identities=base_identities,
                             summarize=_summarizer(li, replay=replay)):
        if isinstance(item, ShardResult):
            applied.add(item.shard, item)
        else:
            return applied.done(item)
    raise AssertionError("apply_level0 ends with its ApplyResult")


def finish(li: LabelImage, commit_id: str, intent: dict, applied: Applied, *,
           repaired: bool) -> bool:
    """Write the record (the commit point) and the object delta; False when another process
    had already written the record."""
    result = applied.result
    assert result is not None
    when = prov.now().isoformat()
    # the object delta before the record: a commit killed between the two is replayed, and
    # the replay's delta (or the original's, whichever came first) is the one kept
    prov.write_object_delta(li, commit_id, intent.get("annotator") or "", when,
                            applied.delta, names=intent.get("names") or {})
    created = prov.write_record(
        li, commit_id, annotator=intent.get("annotator"), created=intent.get("created"),
        finished=when, message=intent.get("message", ""), region=intent.get("region"),
        voxels_written=result.voxels_written, shards_written=result.shards_written,
        bytes_written=result.bytes_written, shards=result.identities,
        base_shards=intent.get("base_shards", {}),
        conflicts=[c.to_json() for c in applied.conflicts], repaired=repaired,
        overrides=intent.get("overrides", []))
    return created


def replay(li: LabelImage, commit_id: str) -> bool:
    """Finish an interrupted commit from its intent and diff; False when there is nothing
    (left) to do."""
    found = prov.read_intent(li, commit_id)
    if found is None:
        return False
    intent, raw = found
    applied = apply_all(li, Diff.from_npz(raw), intent.get("base_shards"), replay=True)
    return finish(li, commit_id, intent, applied, repaired=True)


#: label image -> when this process last looked for interrupted commits (time.monotonic)
_last_stale_check: dict[str, float] = {}


def finish_stale(li: LabelImage) -> list[str]:
    """Finish the interrupted commits older than :data:`~.provenance.STALE_INTENT_SECONDS`;
    looked for at most once per that period per process (a listing per commit would cost
    every commit a LIST of the whole history)."""
    where = f"{li.store.url}/{li.prefix}"
    now = time.monotonic()
    last = _last_stale_check.get(where)
    if last is not None and now - last < prov.STALE_INTENT_SECONDS:
        return []
    _last_stale_check[where] = now
    done = []
    for cid in prov.interrupted(li, older_than=prov.STALE_INTENT_SECONDS):
        log.info("finishing the interrupted commit %s", cid)
        try:
            if replay(li, cid):
                done.append(cid)
        except (ZShardError, ValueError, OSError) as e:
            # someone else's unfinishable commit must not block this one; repair reports it
            log.warning("cannot finish the interrupted commit %s: %s", cid, e)
    return done


def run_commit(edit: Edit, message: str) -> Generator[CommitProgress, None, CommitReport]:
    finish_stale(edit.li)
    _gen, snap = edit.data.snapshot()
    with snap:  # closed when done, cancelled or failed: painting stops copying chunks
        return (yield from _run_commit(edit, message, snap))


def _run_commit(edit: Edit, message: str, snap: Snapshot
                ) -> Generator[CommitProgress, None, CommitReport]:
    from .edit import CommitProgress, CommitReport

    li = edit.li
    diff = _diff_of(edit, snap)
    level0 = li.metas[0]
    shards = {li.key(0, level0.object_key(shard)) for shard in level0.layout.shards_of(diff.chunks)}
    total = len(shards) + 1
    yield CommitProgress(0, total, True)
    if not diff.chunks:
        _settle(edit, snap, current_shards(edit))  # nothing to write: still pull
        return CommitReport(commit_id=None)
    commit_id = prov.new_commit_id(edit.slug)
    intent = {"annotator": edit.annotator, "annotator_slug": edit.slug,
              "created": prov.now().isoformat(), "message": message,
              "label_image": li.name, "region": [[s.start, s.stop] for s in edit.region],
              "base_shards": {k: edit.base_identities.get(k, "unknown") for k in sorted(shards)},
              "overrides": list(edit._overrides), "voxels": diff.voxels,
              "names": {str(v): n for v, n in sorted(edit.names.items())}}
    unreserved = claim_unreserved(li, np.unique(np.concatenate(
        [np.unique(o) for _, _, o in diff.chunks.values()])))
    if unreserved:
        log.warning("%s: ids %s were not taken from a reserved block; the reservation mark "
                    "now lies above them", li.name, unreserved[:10])
        intent["unreserved_ids"] = unreserved[:1000]
    prov.write_intent(li, commit_id, diff.to_npz(), **intent)
    edit._overrides.clear()
    yield CommitProgress(0, total, False)
    # apply shard by shard, reporting progress between shards
    applied = Applied(li, diff, replay=False)
    done = 0
    for item in apply_level0(li, diff, base_identities=edit.base_identities,
                             summarize=_summarizer(li, replay=False)):
        if isinstance(item, ShardResult):
            applied.add(item.shard, item)
            done += 1
            yield CommitProgress(done, total, False)
        else:
            applied.done(item)
    result = applied.result
    assert result is not None
    finish(li, commit_id, intent, applied, repaired=False)
    _settle(edit, snap, result.shards)
    edit._pending_conflicts.extend(applied.conflicts)
    yield CommitProgress(total, total, False)
    changed = applied.changed_region
    return CommitReport(commit_id=commit_id, voxels_written=result.voxels_written,
                        unreserved_ids=unreserved,
                        shards_written=result.shards_written,
                        bytes_written=result.bytes_written, conflicts=applied.conflicts,
                        changed_region=changed)


def current_shards(edit: Edit) -> dict[Coords, ShardResult]:
    """The level-0 shards of the edit's region as stored now (for a pull without a write)."""
    from ..store import FullRequest

    li, meta = edit.li, edit._meta
    shards = sorted(meta.layout.shards_of(edit.data.all_chunks()))
    keys = [li.key(0, meta.object_key(s)) for s in shards]
    raws = [r.whole for r in li.store.read_many([FullRequest(k) for k in keys])]
    return {s: ShardResult(shard=s, key=k, base_identity=None,
                           theirs_identity=identity(raw), new=raw, outcomes={})
            for s, k, raw in zip(shards, keys, raws, strict=True)}


def _settle(edit: Edit, snap: Snapshot, shards: dict[Coords, ShardResult]
            ) -> None:
    """After a commit: the base of what was written (and of colleagues' changes) becomes the
    store's state, colleagues' changes are pulled where the user did not paint since the
    snapshot, conflicts stay pending."""
    li, data, meta = edit.li, edit.data, edit._meta
    by_shard = meta.layout.shards_of(data.all_chunks())
    for shard, chunks in by_shard.items():
        if shard not in shards:
            continue
        res = shards[shard]
        split = split_shard(res.new, meta, key=res.key, where=li.store.url)
        edit.base_identities[res.key] = identity(res.new)
        for c in chunks:
            _, flat = meta.layout.locate(c)
            new_full = decode_chunk(split[flat], meta, key=res.key, where=li.store.url)
            old_full = edit._base_values(c)
            local, inner = data.chunk_box(c)
            out = res.outcomes.get(flat)
            zeros = np.zeros(meta.chunk_shape, dtype=bool)
            written = (out.written_mask() if out is not None else zeros)[inner]
            conflict_full = out.conflict_mask() if out is not None else zeros
            conflict = conflict_full[inner]
            pend_full = edit._pending.get(c)
            pend_old = (pend_full if pend_full is not None else zeros)[inner]
            nv, old = new_full[inner], old_full[inner]
            with data.lock:
                cur = data.values_view()[local]
                before = snap.get(c, old)
                painted_since = cur != before
                pull = ~painted_since & ~conflict & ~pend_old
                cur[pull] = nv[pull]
                keep_old = painted_since & ~written & ~conflict & (nv != old)
                if keep_old.any():
                    base_full = new_full.copy()
                    base_full[inner] = np.where(keep_old, old, nv)
                    edit._base[c] = None if (base_full == meta.fill_value).all() else \
                        meta.chunk_codecs.encode(base_full)
                    base_part = base_full[inner]
                else:
                    stored = split[flat]
                    edit._base[c] = None if stored is None else bytes(stored)
                    base_part = nv
                pending = conflict_full | (pend_full if pend_full is not None else zeros)
                if pending.any():
                    edit._pending[c] = pending
                if np.array_equal(cur, base_part) and not pending.any():
                    data.mark_clean([c])
                else:
                    data.mark_dirty([c])
