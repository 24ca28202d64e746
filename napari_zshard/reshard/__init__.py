"""Resharding a store: preview what a new chunk/shard layout costs, then rewrite the store in
it — streaming by destination shard, on threads or a dask cluster, resumable after a crash.

    plan = plan_reshard("s3://lab/vol.zarr", "s3://lab/vol-512.zarr",
                        chunks=(32, 32, 32), shards=(512, 512, 512))
    print(plan.table())                 # per level: objects, index bytes, view costs, time
    for step in plan.run(verify="sample"):
        ...                             # step.done / step.total; the last has step.summary

The CLI (``zshard reshard``) and the napari widget call these same functions.
"""

from .cost import Sample, ViewCost
from .errors import (
    CorruptSourceError,
    DestinationError,
    LayoutError,
    ReshardError,
    SourceError,
    VerificationError,
)
from .journal import JOURNAL, DestinationState
from .layout import CodecChoice, parse_level_layouts, parse_shape, suggest_layout
from .plan import ArrayPlan, ReshardPlan, plan_reshard
from .run import ReshardProgress, ReshardSummary, reshard, run_reshard

__all__ = [
    "JOURNAL", "ArrayPlan", "CodecChoice", "CorruptSourceError", "DestinationError",
    "DestinationState", "LayoutError", "ReshardError", "ReshardPlan", "ReshardProgress",
    "ReshardSummary", "Sample", "SourceError", "VerificationError", "ViewCost",
    "parse_level_layouts", "parse_shape", "plan_reshard", "reshard", "run_reshard",
    "suggest_layout",
]
