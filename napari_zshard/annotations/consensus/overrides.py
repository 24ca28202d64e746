"""Resolutions that survive re-merges: a logged list of overrides, re-applied by every merge.

A plain commit into ``consensus`` would be erased by the next merge (which rewrites it from
the inputs). :func:`resolve` instead appends ``{key, value, by, at}`` to
``labels/<output>/zshard/overrides.json`` (compare-and-swap). The key names the conflict by
what it is (kind and source objects, or in semantic mode its place), not by its id, so it
finds the same conflict after the ids moved; every merge paints ``value`` into the voxels the
conflicts image gives that conflict and clears them there. The latest entry per key wins; the
list itself is the log of who resolved what.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from typing import Any

from ...errors import AnnotationError
from ...store import Store
from ..labelimage import writable_store

OVERRIDES = "overrides.json"


def _key(output: str) -> str:
    return f"labels/{output}/zshard/{OVERRIDES}"


def read_log(store: Store, output: str) -> list[dict[str, Any]]:
    raw = store.read(_key(output))
    return json.loads(raw)["overrides"] if raw else []


def read_overrides(store: Store, output: str) -> list[dict[str, Any]]:
    """The effective overrides (the latest per key), in key order."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in read_log(store, output):
        latest[entry["key"]] = entry
    return [latest[k] for k in sorted(latest)]


def resolve(url: str, conflict_id: int, *, value: int, by: str | None = None,
            output: str = "consensus", conflicts: str = "conflicts",
            storage_options: dict | None = None) -> dict[str, Any]:
    """Resolve conflict ``conflict_id`` of the last merge: its voxels take ``value`` in the
    consensus (0 erases) from the next merge on, in every later merge. Returns the logged
    entry. (Run :func:`merge` again to see it: the merge is what writes the consensus.)"""
    store = writable_store(url, storage_options)
    raw = store.read(f"labels/{conflicts}/zshard/conflicts.csv")
    if raw is None:
        raise AnnotationError(f"{url}: no conflicts table (run a merge first)")
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(raw.decode()))}
    if conflict_id not in rows:
        raise AnnotationError(f"{url}: no conflict {conflict_id} in the last merge "
                              f"({len(rows)} conflicts)")
    if int(value) < 0:
        raise ValueError(f"value must be a label (>= 0), not {value}")
    entry = {"key": rows[conflict_id]["key"], "value": int(value), "conflict_id": conflict_id,
             "by": by or os.environ.get("USER", "?"),
             "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}

    def append(current: bytes | None) -> bytes:
        doc = json.loads(current) if current else {"overrides": []}
        doc["overrides"].append(entry)
        return json.dumps(doc, indent=1).encode()

    store.update(_key(output), append, tries=50)
    return entry
