"""Reading the merge's tables back (``objects.csv``, ``conflicts.csv``; written by
:mod:`.run`): for the napari layers' ``features`` and the conflict walker, napari-free.

Cells hold numbers, words, or space-separated lists (annotators, source ids, coordinates):
:func:`read_table` keeps each column as written but turns all-integer and all-number columns
into numbers (napari sorts and shows them as such); :func:`vector` parses a coordinate cell.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from ...store import Store

CONSENSUS_TABLE = "zshard/objects.csv"  # under labels/<output>/
CONFLICT_TABLE = "zshard/conflicts.csv"  # under labels/<conflicts>/


def _column(values: list[str]) -> list[Any]:
    for kind in (int, float):
        try:
            return [kind(v) for v in values]
        except ValueError:
            continue
    return values


def parse_table(raw: bytes) -> dict[str, list[Any]]:
    """Columns of a table (header order), numbers where a whole column is numeric."""
    rows = list(csv.reader(io.StringIO(raw.decode())))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    return {name: _column([r[i] if i < len(r) else "" for r in body])
            for i, name in enumerate(header)}


def read_table(labels_store: Store, rel: str) -> dict[str, list[Any]] | None:
    """The table ``rel`` of the label image at ``labels_store``, or None when it has none."""
    raw = labels_store.read(rel)
    return None if raw is None else parse_table(raw)


def vector(cell: Any) -> tuple[float, ...]:
    """A coordinate cell (``"4.5 40 25"``) as floats; () when empty."""
    return tuple(float(v) for v in str(cell).split())
