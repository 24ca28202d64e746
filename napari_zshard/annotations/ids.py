"""New label ids that never collide between annotators: blocks reserved by compare-and-swap
on ``labels/<name>/zshard/ids.json``.

Each reservation moves ``next`` past a block and lists the block with its owner; since every
reservation is one :meth:`Store.update`, two annotators can never get overlapping blocks. A
label image without the object gets one bounded scan (the coarsest level that fits
:data:`SCAN_VOXELS`, plus level 0 when it fits) to start above every id already stored.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .labelimage import LabelImage

BLOCK = 1024
SCAN_VOXELS = 1 << 26
IDS_KEY = "ids.json"


def scan_max_id(li: LabelImage) -> int:
    """The largest label value in the finest level that fits the scan budget (0 if none)."""
    from .apply import read_box

    for level, meta in enumerate(li.metas):
        if int(np.prod(meta.shape)) <= SCAN_VOXELS:
            box = tuple(slice(0, n) for n in meta.shape)
            values = read_box(li.store, li, level, box)
            return int(values.max()) if values.size else 0
    return 0


def reserve_block(li: LabelImage, owner: str, *, size: int = BLOCK) -> tuple[int, int]:
    """Reserve ``size`` new ids for ``owner``: (first, stop)."""
    key = li.zshard_key(IDS_KEY)
    start_from: int | None = None
    if li.store.read(key) is None:
        start_from = scan_max_id(li) + 1
    got: list[tuple[int, int]] = []

    def reserve(current: bytes | None) -> bytes:
        doc: dict[str, Any] = json.loads(current) if current else {
            "zshard": {"next": start_from or 1, "blocks": []}}
        state = doc["zshard"]
        first = int(state["next"])
        stop = first + size
        state["next"] = stop
        state["blocks"] = [*state.get("blocks", []), {"owner": owner, "start": first,
                                                      "stop": stop}]
        got[:] = [(first, stop)]
        return json.dumps(doc, indent=1).encode()

    li.store.update(key, reserve, tries=50)
    return got[0]


def reserved_blocks(li: LabelImage) -> list[tuple[str, int, int]]:
    raw = li.store.read(li.zshard_key(IDS_KEY))
    if raw is None:
        return []
    return [(b["owner"], int(b["start"]), int(b["stop"]))
            for b in json.loads(raw)["zshard"].get("blocks", [])]


def claim_unreserved(li: LabelImage, values: np.ndarray) -> list[int]:
    """The ids among ``values`` at or above the reservation mark (typed in, not taken from
    a block): the mark is moved past them by compare-and-swap, so no block handed out later
    contains them. Returns them (sorted); nothing when the label image has no ids object."""
    key = li.zshard_key(IDS_KEY)
    raw = li.store.read(key)
    if raw is None or values.size == 0:
        return []
    mark = int(json.loads(raw)["zshard"]["next"])
    high = sorted(int(v) for v in np.unique(values) if int(v) >= mark)
    if not high:
        return []

    def bump(current: bytes | None) -> bytes | None:
        if current is None:
            return None
        doc = json.loads(current)
        doc["zshard"]["next"] = max(int(doc["zshard"]["next"]), high[-1] + 1)
        return json.dumps(doc, indent=1).encode()

    li.store.update(key, bump, tries=50)
    return high
