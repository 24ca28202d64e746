"""Merging annotators: several people label the same volume independently, each into their
own label image with a coverage map (:mod:`..coverage`); :func:`merge` makes one consensus and
a conflicts image with tables, and :func:`resolve` records resolutions every later merge
re-applies.

Passes, each streamed shard by shard on threads (or a dask.distributed client), so memory
depends on the number of objects, never on the volume:

1. instance mode only: per-object statistics and pairwise contingency counts
   (:mod:`.contingency`), then matching and clustering in memory (:mod:`.instance`);
2. painting level 0 of both outputs (semantic: :mod:`.semantic`'s per-voxel vote);
   (an overlap of consensus objects a < b is the conflict ``first + a*(n+1) + b``, known
   before painting; only when such ids would not fit uint32 are overlaps numbered densely
   after this pass, and the shards holding them painted again);
3. the pyramids (mode), the tables, then the group documents (:mod:`.output`).

Re-running after new commits recomputes everything: consensus ids are ranks over the whole
volume, so one new object anywhere can renumber objects everywhere, and only a full pass
gives the same bytes as a fresh run.
"""

from __future__ import annotations

from .instance import KINDS as INSTANCE_CONFLICT_KINDS
from .instance import SPLIT_SHARE
from .overrides import read_log as overrides_log
from .overrides import resolve
from .run import MergeProgress, MergeReport, merge, merge_steps
from .semantic import CONFLICT_VALUE
from .sources import MergeInputError

__all__ = ["CONFLICT_VALUE", "INSTANCE_CONFLICT_KINDS", "SPLIT_SHARE", "MergeInputError",
           "MergeProgress", "MergeReport", "merge", "merge_steps", "overrides_log", "resolve"]
