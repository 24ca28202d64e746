"""A merged store in napari (issue 15): the conflicts on top and shown, every other label image
(each annotator's, the consensus) listed but hidden, and the merge's tables as the layers'
``features`` (napari shows a row on hover: kind, annotators, source ids, IoUs, voxels).

Only a store holding both ``labels/consensus`` and ``labels/conflicts`` is arranged so; any
other store opens exactly as before. The tables are read once, when the store opens (they are
a few KiB per thousand objects); a missing table leaves the layer without features.
"""

from __future__ import annotations

import logging
from typing import Any

from ..annotations.consensus.tables import CONFLICT_TABLE, CONSENSUS_TABLE, read_table
from ..store import open_store

log = logging.getLogger(__name__)

CONSENSUS, CONFLICTS = "consensus", "conflicts"
#: the key in a layer's ``metadata["napari_zshard"]`` saying what it is in a merged store
ROLE = "consensus_role"


def is_merged(label_names: list[str]) -> bool:
    return CONSENSUS in label_names and CONFLICTS in label_names


def _features(node, rel: str) -> dict[str, list[Any]] | None:
    """The table as napari features: its label column (``id``; semantic consensus:
    ``value``, a class) becomes napari's ``index``."""
    try:
        store = open_store(node.url, node.arrays[0].store.options)
        table = read_table(store, rel)
    except Exception as e:  # the layers still open; only the hover text is missing
        log.warning("cannot read the table %s/%s: %s", node.url, rel, e)
        return None
    column = next((c for c in ("id", "value") if c in (table or {})), None)
    if column is None:
        return None
    return {"index": table.pop(column), **table}


def arrange(labels: list[tuple[Any, dict[str, Any], str]], nodes: list) -> list:
    """``labels`` (layer data tuples of ``nodes``, the label images of one image, in listed
    order) arranged for a merged store: conflicts last (on top) and visible, the others
    hidden, each tagged with its role and given its table as ``features``."""
    names = [n.name for n in nodes]
    if not is_merged(names):
        return labels
    out, last = [], None
    for (data, kwargs, kind), node in zip(labels, nodes, strict=True):
        meta = kwargs["metadata"]["napari_zshard"]
        if node.name == CONFLICTS:
            meta[ROLE] = CONFLICTS
            features = _features(node, CONFLICT_TABLE)
            kwargs["visible"] = True
        elif node.name == CONSENSUS:
            meta[ROLE] = CONSENSUS
            features = _features(node, CONSENSUS_TABLE)
            kwargs["visible"] = False
        else:
            meta[ROLE] = "input"
            features = None
            kwargs["visible"] = False
        if features is not None:
            kwargs["features"] = features
        if node.name == CONFLICTS:
            last = (data, kwargs, kind)
        else:
            out.append((data, kwargs, kind))
    return [*out, last]
