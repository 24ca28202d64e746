"""The reshard journal: what makes an interrupted reshard resumable, on any writable store.

It lives in the destination, under ``.zshard-journal/``:

* ``plan.json`` — the source and, per array, the destination ``zarr.json`` being written.
  Written before the first shard; a rerun whose plan differs (another layout or codec) is
  refused instead of mixing two layouts in one array.
* ``done/<array path>/<shard key>@<bytes>`` — one small object per destination shard,
  written *after* that shard was committed, naming the bytes committed (0: every chunk was
  fill, so no shard object exists). A missing shard object therefore means "all fill" only
  when its marker says so, and a shard counts as done only when its marker exists and the
  object has the recorded size. Object stores have no appends; one object per shard needs
  none, and the sizes come back with a single listing.

The destination is complete when its root ``zarr.json`` exists (written last); the journal is
removed after that.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import Store, join_key
from .errors import DestinationError

log = logging.getLogger(__name__)

JOURNAL = ".zshard-journal"
PLAN_KEY = f"{JOURNAL}/plan.json"
DONE = f"{JOURNAL}/done"
FORMAT = "napari-zshard reshard journal 1"


@dataclass(frozen=True)
class DestinationState:
    """What the destination holds before a run: ``new``, ``resume`` (a journal with the same
    plan) or ``complete`` (an earlier run of the same plan finished)."""

    kind: str
    journaled: int = 0


def marker_key(array: str, shard_key: str, nbytes: int) -> str:
    return join_key(join_key(DONE, array), f"{shard_key}@{nbytes}")


def record_done(store: Store, array: str, shard_key: str, nbytes: int) -> None:
    """Journal shard ``shard_key`` of ``array`` as committed with ``nbytes`` bytes."""
    store.write(marker_key(array, shard_key, nbytes), json.dumps({"bytes": nbytes}).encode())


def plan_document(source: str, arrays: dict[str, bytes]) -> dict[str, Any]:
    return {"format": FORMAT, "source": source,
            "arrays": {path: json.loads(raw) for path, raw in arrays.items()}}


def write_plan(store: Store, doc: dict[str, Any]) -> None:
    store.write(PLAN_KEY, json.dumps(doc, indent=1).encode())


def read_plan(store: Store) -> dict[str, Any] | None:
    raw = store.read(PLAN_KEY)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise DestinationError(f"{store.url}/{PLAN_KEY} is damaged ({e}); delete the "
                               "destination to start over") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DestinationError(f"{store.url}/{PLAN_KEY} is not a journal this version "
                               "understands; delete the destination to start over")
    return doc


def done_shards(store: Store, array: str) -> set[str]:
    """Keys (relative to ``array``) of the shards journaled and present with their size."""
    prefix = join_key(DONE, array).rstrip("/") + "/"
    recorded: dict[str, set[int]] = {}
    for key, _ in store.list_prefix(prefix):
        if key.startswith(prefix):
            shard, _, nbytes = key[len(prefix):].rpartition("@")
            if shard and nbytes.isdigit():
                recorded.setdefault(shard, set()).add(int(nbytes))
    if not recorded:
        return set()
    base = f"{array}/" if array else ""
    sizes = {key[len(base):]: size for key, size in store.list_prefix(f"{base}c")
             if key.startswith(base)}
    return {shard for shard, sizes_ok in recorded.items()
            if sizes.get(shard) in sizes_ok or (shard not in sizes and 0 in sizes_ok)}


def _layout_of(doc: dict[str, Any]) -> str:
    try:
        shards = doc["chunk_grid"]["configuration"]["chunk_shape"]
        codec = doc["codecs"][0]
        chunks = codec["configuration"]["chunk_shape"] if codec["name"] == \
            "sharding_indexed" else shards
        inner = codec["configuration"]["codecs"] if codec["name"] == "sharding_indexed" \
            else doc["codecs"]
        names = "+".join(c["name"] for c in inner if c["name"] != "bytes")
        return (f"shape {'x'.join(map(str, doc['shape']))}, chunks {'x'.join(map(str, chunks))}"
                f" in shards {'x'.join(map(str, shards))}, {names or 'uncompressed'}")
    except (KeyError, IndexError, TypeError):
        return "an unreadable layout"


def _difference(recorded: dict[str, Any], planned: dict[str, Any]) -> str:
    for path in sorted(set(recorded) | set(planned)):
        name = path or "the array"
        if path not in recorded:
            return f"{name} is not part of it"
        if path not in planned:
            return f"it also holds {name}, which this source does not have"
        if recorded[path] != planned[path]:
            return (f"{name}: {_layout_of(recorded[path])} there, {_layout_of(planned[path])} "
                    "asked for")
    return "its source differs"


def inspect_destination(store: Store, planned: dict[str, bytes]) -> DestinationState:
    """Decide whether ``store`` can receive the reshard whose arrays' ``zarr.json`` are
    ``planned``; raise :class:`DestinationError` when it cannot."""
    wanted = {path: json.loads(raw) for path, raw in planned.items()}
    doc = read_plan(store)
    if doc is not None:
        if doc.get("arrays") != wanted:
            raise DestinationError(
                f"{store.url} holds an unfinished reshard with another layout "
                f"({_difference(doc.get('arrays') or {}, wanted)}). Rerun with the same "
                "shapes and codec to resume it, or delete it to start over.")
        journaled = sum(1 for _ in store.list_prefix(DONE + "/"))
        return DestinationState("resume", journaled)
    if store.read("zarr.json") is not None:
        existing = {}
        for path in wanted:
            raw = store.read(join_key(path, "zarr.json") if path else "zarr.json")
            existing[path] = json.loads(raw) if raw is not None else None
        if existing != wanted:
            diff = _difference({p: d for p, d in existing.items() if d is not None}, wanted)
            raise DestinationError(
                f"{store.url} already holds a Zarr store with a different layout ({diff}). "
                "Choose another destination or delete it first.")
        return DestinationState("complete")
    if next(iter(store.list_prefix("")), None) is not None:
        raise DestinationError(f"{store.url} exists and holds files that are not a reshard; "
                               "choose a new or empty destination")
    return DestinationState("new")


def remove_journal(store: Store) -> None:
    """Delete the journal (after the destination was marked complete)."""
    root = getattr(store, "root", None)
    if isinstance(root, Path):
        shutil.rmtree(root / JOURNAL, ignore_errors=True)
        return
    keys = [key for key, _ in store.list_prefix(JOURNAL + "/")]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(store.delete, keys))
    log.debug("removed %d journal objects from %s", len(keys), store.url)
