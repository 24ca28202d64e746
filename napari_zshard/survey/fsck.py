"""``zshard fsck`` without the printing: verify every stored shard's index and inner chunks.

What is checked, per stored object (a shard, or a chunk of an unsharded array), read whole:

* a shard's index, validated exactly as the read path validates it
  (:func:`~napari_zshard.engine.shard_index.decode_index`: size, crc32c, empty marker, entries
  inside the file and clear of the index) — a truncated or 0-byte shard fails here;
* every stored inner chunk. By default, when the inner codec chain ends with ``crc32c`` (what
  zarr-python and this project write), only the checksum is verified: it catches any changed
  byte at memory speed, without decompressing. When the chain has no outer crc32c, there is no
  cheaper witness, so every chunk is decoded. ``full=True`` decodes every chunk in any case
  (bounded, into a buffer of the chunk's size), which also finds chunks that were written
  corrupt in the first place.

Stores that cannot be listed (plain HTTP) are checked by asking for every possible object; the
missing ones are skipped. Memory stays bounded by one batch of whole objects (``batch_bytes``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.codecs import Crc32cCodec
from ..engine.metadata import ArrayMeta, parse_v3
from ..engine.pools import decode_pool
from ..engine.shard_index import EMPTY, decode_index
from ..errors import CorruptShardError, UnsafeKeyError, UnsupportedCodecError, ZShardError
from ..store import FullRequest, Store
from .arrays import (
    ArrayNode,
    StoredObject,
    Survey,
    _grid_objects,
    _list,
    all_objects,
    grid_coords,
)

MAX_CHUNK_PROBLEMS = 5  # per object; the rest are counted in one summary problem
#: Problem kinds that say "could not be checked" rather than "is damaged".
UNCHECKED_KINDS = frozenset({"read"})


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store. ``message`` names the store, the key and the entry."""

    array: str  # array path relative to the checked URL
    key: str  # object key relative to the array
    kind: str  # "metadata" | "index" | "chunk" | "unsafe" (leads out of the store) | "read"
    message: str


@dataclass(frozen=True)
class ObjectCheck:
    """The outcome of checking one object (``found`` is False for a missing one)."""

    array: str
    key: str
    found: bool
    chunks_checked: int = 0
    problems: tuple[Problem, ...] = ()


@dataclass
class FsckPlan:
    """What :func:`run_fsck` will check: ``total`` objects, and what it cannot check."""

    survey: Survey
    full: bool
    targets: list[tuple[ArrayNode, str]]  # (array, method: "crc32c" | "decode")
    skipped: list[tuple[str, str]]  # (array path, why)
    problems: list[Problem]  # found while planning (unreadable array metadata)

    @property
    def total(self) -> int:
        return sum(len(n.objects) if n.objects is not None else n.possible_objects
                   for n, _ in self.targets)


@dataclass
class FsckReport:
    """Totals of a check, filled by :meth:`add` as objects are checked."""

    url: str
    objects_checked: int = 0
    objects_found: int = 0
    chunks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = False
    #: temporary files of writes whose process died (local stores): count, bytes. Not damage:
    #: readers never see them; :func:`remove_partial_files` deletes them.
    partial_files: tuple[int, int] = (0, 0)
    #: set when the URL holds an interrupted write (no metadata yet): what it is. The shards
    #: written so far are checked against the planned metadata; the store is not complete.
    interrupted: str | None = None


    #: annotation commits per label image (:func:`annotation_state`). Their objects (below
    #: ``labels/<name>/zshard/``) are not arrays and never damage; an interrupted commit is
    #: a note: ``zshard annotations repair`` finishes it.
    annotations: list[dict[str, Any]] = field(default_factory=list)

    def add(self, check: ObjectCheck) -> None:
        self.objects_checked += 1
        self.objects_found += check.found
        self.chunks_checked += check.chunks_checked
        self.problems.extend(check.problems)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> bool:
        """Damage was found (corrupt metadata, index or chunk; a link out of the store)."""
        return any(p.kind not in UNCHECKED_KINDS for p in self.problems)

    @property
    def unchecked(self) -> int:
        """Arrays skipped plus objects that could not be read (plus one for an interrupted
        write's missing metadata): what this check did not cover."""
        return (len(self.skipped) + sum(p.kind in UNCHECKED_KINDS for p in self.problems)
                + (self.interrupted is not None))

    @property
    def damaged_objects(self) -> int:
        return len({(p.array, p.key) for p in self.problems if p.kind != "metadata"})

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url, "clean": self.clean, "complete": self.complete,
            "objects_checked": self.objects_checked, "objects_found": self.objects_found,
            "chunks_checked": self.chunks_checked, "damaged_objects": self.damaged_objects,
            "damaged": self.damaged, "unchecked": self.unchecked,
            "interrupted": self.interrupted,
            "problems": [vars(p) for p in self.problems],
            "skipped": [{"array": a, "reason": r} for a, r in self.skipped],
            "partial_files": {"count": self.partial_files[0], "bytes": self.partial_files[1]},
            "annotations": self.annotations,
        }


def check_method(meta: ArrayMeta, *, full: bool) -> str:
    """``"crc32c"`` (verify checksums only) or ``"decode"`` (decode every chunk)."""
    codecs = meta.chunk_codecs.bytes_codecs
    if not full and codecs and isinstance(codecs[-1], Crc32cCodec):
        return "crc32c"
    return "decode"


def plan_fsck(found: Survey, *, full: bool = False) -> FsckPlan:
    """Decide how each array of ``found`` is checked (see the module docstring)."""
    plan = FsckPlan(found, full, [], [], [])
    for node in found.arrays:
        if node.meta is not None:
            plan.targets.append((node, check_method(node.meta, full=full)))
            plan.problems.extend(_folders_at_object_keys(node))
        elif isinstance(node.error, UnsupportedCodecError):
            plan.skipped.append((node.path, f"codecs the engine does not implement: {node.error}"))
        else:
            plan.problems.append(Problem(node.path, "zarr.json", "metadata", str(node.error)))
    return plan


def run_fsck(plan: FsckPlan, *, batch_bytes: int = 256 << 20, batch_objects: int = 32
             ) -> Iterator[ObjectCheck]:
    """Check every object of ``plan``, yielding one :class:`ObjectCheck` each, in key order.

    Objects are read in concurrent batches of at most ``batch_bytes`` (when sizes are known)
    and ``batch_objects``, and verified in parallel on the decode pool. Closing the iterator
    (e.g. on Ctrl-C) cancels the verifications not yet started.
    """
    pool = decode_pool()
    for node, method in plan.targets:
        assert node.meta is not None
        listed = node.objects is not None
        objects = node.objects if node.objects is not None else all_objects(node.meta)
        limit = batch_objects if listed else max(1, batch_objects // 4)
        for batch in _batches(objects, batch_bytes, limit):
            pending: list[ObjectCheck | Future] = []
            try:
                for obj, data in zip(batch, _read_batch(node, batch, listed=listed), strict=True):
                    if isinstance(data, ObjectCheck):
                        pending.append(data)
                    else:
                        pending.append(pool.submit(verify_object, node, obj, data, method))
                for item in pending:
                    yield item.result() if isinstance(item, Future) else item
            finally:
                for item in pending:
                    if isinstance(item, Future):
                        item.cancel()


def fsck(found: Survey, *, full: bool = False) -> FsckReport:
    """Check everything at once (notebooks); the CLI iterates :func:`run_fsck` for progress."""
    plan = plan_fsck(found, full=full)
    report = FsckReport(found.url, problems=list(plan.problems), skipped=list(plan.skipped))
    for check in run_fsck(plan):
        report.add(check)
    report.complete = True
    report.partial_files = partial_files(found)
    report.annotations = annotation_state(found)
    return report


def survey_interrupted(store: Store) -> Survey | None:
    """What an interrupted write left at ``store``, which has no Zarr metadata yet (a killed
    reshard writes every ``zarr.json`` at its end): the arrays its reshard journal plans, each
    with the shards stored so far, so that fsck checks them and ``--remove-partial`` cleans up.
    None when there is no journal and no partial file either (nothing was being written)."""
    from ..reshard.journal import read_plan

    try:
        plan = read_plan(store)
    except ZShardError:
        plan = None
    if plan is None and not store.abandoned_temporaries()[0]:
        return None
    listing, error = _list(store, "")
    nodes = []
    for path, doc in sorted((plan or {}).get("arrays", {}).items()):
        sub = store.child(path) if path else store
        try:
            meta = parse_v3(doc, f"{sub.url}/zarr.json (planned, in the reshard journal)")
        except ZShardError as e:
            nodes.append(ArrayNode(path, sub, None, e))
            continue
        node = ArrayNode(path, sub, meta)
        if listing is not None:
            prefix = f"{path}/" if path else ""
            node.objects = _grid_objects(meta, ((k[len(prefix):], n) for k, n in listing
                                                if k.startswith(prefix)))
        nodes.append(node)
    return Survey(store.url, store, "group", nodes, error)


def annotation_state(found: Survey) -> list[dict[str, Any]]:
    """Per label image with annotation commits: how many, and which are interrupted (an
    intent without a record). Reads ``labels/zarr.json`` and lists each label image's
    ``zshard/commits/``; nothing for an array, or a store that cannot be listed."""
    from ..annotations.labelimage import ZSHARD_DIR
    from ..engine.metadata import parse_json
    from ..ome import parse_label_names

    if found.node_type != "group" or not found.listable:
        return []
    try:
        raw = found.store.read("labels/zarr.json")
        names = parse_label_names(
            parse_json(raw, "labels/zarr.json").get("attributes") or {}) if raw else []
    except ZShardError:
        return []
    out = []
    for name in names:
        prefix = f"labels/{name}/{ZSHARD_DIR}/commits/"
        commits: dict[str, set[str]] = {}
        for key, _ in found.store.list_prefix(prefix):
            parts = key[len(prefix):].split("/")
            if len(parts) == 2:
                commits.setdefault(parts[0], set()).add(parts[1])
        if commits:
            out.append({"label_image": name, "commits": sum(
                "record.json" in v for v in commits.values()), "interrupted": sorted(
                c for c, v in commits.items() if "intent.json" in v and "record.json" not in v)})
    return out


def partial_files(found: Survey) -> tuple[int, int]:
    """Temporary files left below the surveyed URL by writes whose process died (a killed
    save or reshard): how many, and their bytes."""
    return found.store.abandoned_temporaries()


def remove_partial_files(found: Survey) -> tuple[int, int]:
    """Delete what :func:`partial_files` counts (never a live writer's file)."""
    return found.store.sweep_temporaries()


def _folders_at_object_keys(node: ArrayNode) -> list[Problem]:
    """Folders a listing of files does not show (local stores): a folder where a shard or
    chunk belongs (every read of it fails), and symbolic links to folders — out of the store
    (damage: reads refuse them) or inside it (not listed, so not checked)."""
    from ..store.local import LocalStore

    store = node.store
    if not isinstance(store, LocalStore) or node.meta is None:
        return []
    problems = []
    for dirpath, dirs, _ in os.walk(store.root):
        for name in dirs:
            full = os.path.join(dirpath, name)
            key = os.path.relpath(full, store.root).replace(os.sep, "/")
            if os.path.islink(full):
                inside = store.resolves_inside(full)
                problems.append(Problem(
                    node.path, key, "read" if inside else "unsafe",
                    f"{node.url}/{key}: a symbolic link to the folder {os.path.realpath(full)}"
                    + (": its objects were not checked" if inside else
                       ", outside the store root: reads refuse it")))
            elif grid_coords(node.meta, key) is not None:
                problems.append(Problem(node.path, key, "read", f"{node.url}/{key}: a folder "
                                        "stands where this object belongs; it cannot be read"))
    return problems


def _batches(objects: Iterable[StoredObject], max_bytes: int, max_count: int
             ) -> Iterator[list[StoredObject]]:
    batch: list[StoredObject] = []
    size = 0
    for obj in objects:
        if batch and (len(batch) >= max_count or size + (obj.size or 0) > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(obj)
        size += obj.size or 0
    if batch:
        yield batch


def _read_batch(node: ArrayNode, batch: list[StoredObject], *, listed: bool
                ) -> list[bytes | ObjectCheck]:
    """Whole objects, or for each one that cannot be read an ObjectCheck saying why."""
    try:
        datas = [r.whole for r in node.store.read_many([FullRequest(o.key) for o in batch])]
    except (ZShardError, OSError) as e:
        if len(batch) > 1:  # find out which object fails
            return [r for o in batch for r in _read_batch(node, [o], listed=listed)]
        msg = " ".join(str(e).split()) or type(e).__name__
        kind = "unsafe" if isinstance(e, UnsafeKeyError) else "read"
        problem = Problem(node.path, batch[0].key, kind, f"{node.url}/{batch[0].key}: {msg}")
        return [ObjectCheck(node.path, batch[0].key, True, problems=(problem,))]
    out: list[bytes | ObjectCheck] = []
    for obj, data in zip(batch, datas, strict=True):
        if data is not None:
            out.append(data)
        elif listed:
            problem = Problem(node.path, obj.key, "read", f"{node.url}/{obj.key}: disappeared "
                              "while being checked (is something writing to the store?)")
            out.append(ObjectCheck(node.path, obj.key, True, problems=(problem,)))
        else:
            out.append(ObjectCheck(node.path, obj.key, False))
    return out


def verify_chunk(meta: ArrayMeta, data: Any, method: str) -> str | None:
    """Why the stored bytes of one chunk are bad, or None when they check out."""
    try:
        if method == "crc32c":
            Crc32cCodec().decode(data, None)
        else:
            meta.chunk_codecs.decode(data, meta.chunk_shape, meta.dtype)
    except ZShardError as e:
        return str(e)
    except Exception as e:  # whatever a decompressor raises on garbage is corruption too
        return f"cannot decode: {type(e).__name__}: {e}"
    return None


def verify_object(node: ArrayNode, obj: StoredObject, data: bytes, method: str) -> ObjectCheck:
    """Check one whole object: its shard index, then each of its stored chunks."""
    meta = node.meta
    assert meta is not None
    where = f"{node.url}/{obj.key}"
    if meta.sharding is None:
        reason = verify_chunk(meta, memoryview(data), method)
        found = () if reason is None else (
            Problem(node.path, obj.key, "chunk", f"{where}: chunk {obj.coords}: {reason}"),)
        return ObjectCheck(node.path, obj.key, True, 1, found)
    spec = meta.sharding
    cps = meta.chunks_per_object
    size = spec.index_nbytes(meta.grid_shape)
    raw = data[-size:] if spec.index_location == "end" else data[:size]
    try:
        index = decode_index(raw, spec=spec, n_chunks=math.prod(cps), key=obj.key,
                             where=node.url, object_size=len(data))
    except CorruptShardError as e:
        return ObjectCheck(node.path, obj.key, True,
                           problems=(Problem(node.path, obj.key, "index", str(e)),))
    view = memoryview(data)
    used = np.flatnonzero(index.entries[:, 0] != EMPTY)
    problems: list[Problem] = []
    bad = 0
    for flat in used.tolist():
        offset, length = (int(v) for v in index.entries[flat])
        reason = verify_chunk(meta, view[offset:offset + length], method)
        if reason is None:
            continue
        bad += 1
        if bad <= MAX_CHUNK_PROBLEMS:
            local = np.unravel_index(flat, cps)
            coords = tuple(int(s * n + i) for s, n, i in zip(obj.coords, cps, local, strict=True))
            problems.append(Problem(node.path, obj.key, "chunk", f"{where}: inner chunk {coords} "
                                    f"(index entry {flat}): {reason}"))
    if bad > MAX_CHUNK_PROBLEMS:
        problems.append(Problem(node.path, obj.key, "chunk", f"{where}: "
                                f"{bad - MAX_CHUNK_PROBLEMS} more corrupt inner chunks"))
    return ObjectCheck(node.path, obj.key, True, len(used), tuple(problems))
