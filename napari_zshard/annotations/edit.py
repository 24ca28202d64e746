"""Checking out a region of a label image, and committing what changed in it.

The base is taken at checkout: every shard the region meets is read once, its identity kept,
and the stored (encoded) inner chunks of the region kept as they are — compact, and exactly
what the three-way merge compares with. A commit snapshots the dirty chunks (painting goes
on), writes a diff and an intent, merges per level-0 shard under compare-and-swap, updates the
coarser levels, then writes the record (the commit point) and the object-table delta.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..engine.shard_update import decode_chunk, split_shard
from ..errors import AnnotationError, LabelValueError
from ..store import FullRequest
from .apply import identity, shard_of
from .ids import reserve_block
from .labelimage import LabelImage, open_label_image, writable_store
from .region import EditableRegion
from .slug import annotator_slug

log = logging.getLogger(__name__)
Coords = tuple[int, ...]


@dataclass(frozen=True)
class Conflict:
    """Voxels someone else changed since the checkout, to another value than ours."""

    voxels: int
    bbox: tuple[slice, ...]
    centroid: tuple[float, ...]
    ours: int
    theirs: int
    their_commit: str | None
    their_annotator: str | None

    def to_json(self) -> dict[str, Any]:
        return {"voxels": self.voxels, "bbox": [[s.start, s.stop] for s in self.bbox],
                "ours": self.ours, "theirs": self.theirs, "their_commit": self.their_commit,
                "their_annotator": self.their_annotator}


@dataclass
class CommitReport:
    commit_id: str | None
    voxels_written: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    changed_region: tuple[slice, ...] | None = None
    #: ids this commit wrote that no reserved block held (typed in by hand): the reservation
    #: mark was moved above them, so later blocks cannot collide with them
    unreserved_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class CommitProgress:
    done: int
    total: int
    cancellable: bool


def _check_region(region, shape: tuple[int, ...], max_voxels: int) -> tuple[slice, ...]:
    if region is None:
        region = tuple(slice(0, n) for n in shape)
    region = tuple(region)
    if len(region) != len(shape):
        raise ValueError(f"region {region} has {len(region)} axes; the label image has "
                         f"{len(shape)} (shape {shape})")
    out = []
    for s, n in zip(region, shape, strict=True):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise ValueError(f"region {region}: each axis must be a slice with step 1")
        start = 0 if s.start is None else int(s.start)
        stop = n if s.stop is None else int(s.stop)
        if start < 0 or stop > n or start >= stop:
            raise ValueError(f"region {region} is outside the volume of shape {shape} "
                             "(or empty): give start < stop within 0..shape on every axis")
        out.append(slice(start, stop))
    voxels = int(np.prod([s.stop - s.start for s in out]))
    if voxels > max_voxels:
        raise ValueError(f"region {tuple(out)} holds {voxels} voxels, more than max_voxels="
                         f"{max_voxels}; check out a smaller region (or raise max_voxels)")
    return tuple(out)


def checkout(url: str, *, labels: str | None = None, region: tuple[slice, ...] | None = None,
             annotator: str, create: bool = False, own: bool = False,
             storage_options: dict | None = None, max_voxels: int = 2048 * 2048 * 64) -> Edit:
    """Check out ``region`` (level-0 voxels) of the label image ``labels/<labels>`` of the
    OME-Zarr image at ``url`` for editing (``create``: make the label image if missing).

    ``own=True``: the annotator's own label image ``labels/<annotator slug>`` (made on first
    use), for independent annotations merged later (:func:`~.consensus.merge`); committing an
    own edit also marks its region reviewed in the annotator's coverage map (chunks it covers
    whole; :mod:`.coverage`)."""
    slug = annotator_slug(annotator)
    if own:
        if labels not in (None, slug):
            raise ValueError(f"own=True edits the annotator's own label image {slug!r}, not "
                             f"{labels!r}: pass one or the other")
        labels, create = slug, True
    elif labels is None:
        raise TypeError("checkout needs labels= (the label image to edit) or own=True")
    store = writable_store(url, storage_options)
    li = open_label_image(store, labels, create=create)
    region = _check_region(region, li.metas[0].shape, max_voxels)
    edit = Edit(li, region, annotator=annotator, slug=slug)
    edit.own = own
    return edit


class Edit:
    """A checked-out region: :attr:`data` to paint into, :meth:`commit` to export."""

    own = False  # the annotator's own label image (checkout(own=True))
    #: label value -> class or name, recorded in the object table with the next commit
    names: dict[int, str]

    def __init__(self, li: LabelImage, region: tuple[slice, ...], *, annotator: str, slug: str):
        self.li = li
        self.names = {}
        self.region = region
        self.annotator = annotator
        self.slug = slug
        self.labels_name = li.name
        self.image_url = li.image_url
        self.scale = li.scale
        self.translate = tuple(t + s.start * sc for t, s, sc in
                               zip(li.translate, region, li.scale, strict=True))
        meta = li.metas[0]
        self._meta = meta
        #: base: global chunk -> stored bytes (None: not stored = fill)
        self._base: dict[Coords, bytes | None] = {}
        self.base_identities: dict[str, str] = {}
        self._pending: dict[Coords, np.ndarray] = {}  # chunk -> bool mask (full chunk)
        self._pending_conflicts: list[Conflict] = []
        self._overrides: list[dict[str, Any]] = []
        self._ids: tuple[int, int] | None = None
        self._committing = threading.Lock()
        values = np.empty(tuple(s.stop - s.start for s in region), dtype=meta.dtype)
        self.data = EditableRegion(values, origin=[s.start for s in region],
                                   chunk_shape=meta.chunk_shape)
        self._load(self.data.all_chunks(), values)

    # -- checkout ---------------------------------------------------------------------------
    def _load(self, chunks: list[Coords], values: np.ndarray) -> None:
        by_shard: dict[Coords, list[tuple[Coords, int]]] = {}
        for c in chunks:
            shard, flat = shard_of(self._meta, c)
            by_shard.setdefault(shard, []).append((c, flat))
        shards = sorted(by_shard)
        keys = [self.li.key(0, self._meta.object_key(s)) for s in shards]
        raws = [r.whole for r in self.li.store.read_many([FullRequest(k) for k in keys])]
        for shard, key, raw in zip(shards, keys, raws, strict=True):
            self.base_identities[key] = identity(raw)
            split = split_shard(raw, self._meta, key=key, where=self.li.store.url)
            for c, flat in by_shard[shard]:
                stored = split[flat]
                self._base[c] = None if stored is None else bytes(stored)
                local, inner = self.data.chunk_box(c)
                values[local] = decode_chunk(stored, self._meta, key=key,
                                             where=self.li.store.url)[inner]

    def _base_values(self, c: Coords) -> np.ndarray:
        return decode_chunk(self._base[c], self._meta, key=self.li.prefix,
                            where=self.li.store.url)

    # -- ids --------------------------------------------------------------------------------
    def new_label_id(self) -> int:
        """The next id of this annotator's reserved block (a new block when it runs out)."""
        if self._ids is None or self._ids[0] >= self._ids[1]:
            self._ids = reserve_block(self.li, self.slug)
        first, stop = self._ids
        info = np.iinfo(self._meta.dtype)
        if first > info.max:
            raise LabelValueError(f"label ids are exhausted for {self._meta.dtype}")
        self._ids = (first + 1, stop)
        return first

    # -- conflicts --------------------------------------------------------------------------
    @property
    def pending_conflicts(self) -> list[Conflict]:
        return list(self._pending_conflicts)

    def resolve(self, conflicts: list[Conflict] | None = None, *,
                keep: Literal["mine", "theirs"]) -> None:
        """Settle pending conflicts: ``"theirs"`` takes the stored value into the region;
        ``"mine"`` writes ours at the next commit (an explicit override, logged with it)."""
        if keep not in ("mine", "theirs"):
            raise ValueError(f"keep must be 'mine' or 'theirs', not {keep!r}")
        chosen = self._pending_conflicts if conflicts is None else list(conflicts)
        cs = self._meta.chunk_shape
        for conflict in list(chosen):
            for c in list(self._pending):
                # the conflict's box in the chunk's own coordinates
                sel_box = tuple(slice(max(b.start - i * n, 0), min(b.stop - i * n, n))
                                for b, i, n in zip(conflict.bbox, c, cs, strict=True))
                if any(s.start >= s.stop for s in sel_box):
                    continue
                mask = self._pending[c]
                sel = np.zeros_like(mask)
                sel[sel_box] = mask[sel_box]
                if keep == "theirs":
                    base = self._base_values(c)  # holds theirs at pending voxels
                    local, inner = self.data.chunk_box(c)
                    with self.data.lock:
                        self.data.values_view()[local][sel[inner]] = base[inner][sel[inner]]
                mask &= ~sel
                if not mask.any():
                    del self._pending[c]
                self.data.mark_dirty([c])
            if keep == "mine":
                self._overrides.append({**conflict.to_json(), "by": self.annotator})
            if conflict in self._pending_conflicts:
                self._pending_conflicts.remove(conflict)

    # -- commit -----------------------------------------------------------------------------
    def commit(self, message: str = "") -> CommitReport:
        steps = self.commit_steps(message)
        try:
            while True:
                next(steps)
        except StopIteration as stop:
            return stop.value

    def commit_steps(self, message: str = "") -> Generator[CommitProgress, None, CommitReport]:
        """:meth:`commit` step by step: yields :class:`CommitProgress` and returns the
        :class:`CommitReport`. Closing it while ``cancellable`` aborts with nothing written;
        later, the intent is left for ``repair`` (or the next commit) to finish."""
        from .commit import run_commit

        if not self._committing.acquire(blocking=False):
            raise AnnotationError("a commit of this edit is already running; wait for it")
        try:
            report = yield from run_commit(self, message)
            if self.own:  # an own edit committed: its region was reviewed
                from .coverage import mark_reviewed_in

                mark_reviewed_in(self.li, self.region)
        finally:
            self._committing.release()
        return report
