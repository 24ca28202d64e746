"""Inspecting stores: which arrays are at a URL, what they hold, and whether their bytes are intact.

The ``zshard`` CLI, the widgets and notebooks call these same functions::

    found = survey("s3://bucket/vol.zarr")
    for info in describe(found):
        print(info.path, info.shape, info.compression_ratio)
    report = fsck(found)            # or plan_fsck + run_fsck to show progress
    print(report.problems)
"""

from .arrays import ArrayNode, StoredObject, Survey, grid_coords, survey
from .describe import ArrayInfo, codec_chain, describe, describe_array
from .fsck import (
    FsckPlan,
    FsckReport,
    ObjectCheck,
    Problem,
    check_method,
    fsck,
    partial_files,
    plan_fsck,
    remove_partial_files,
    run_fsck,
    verify_object,
)

__all__ = [
    "ArrayInfo", "ArrayNode", "FsckPlan", "FsckReport", "ObjectCheck", "Problem",
    "StoredObject", "Survey", "check_method", "codec_chain", "describe", "describe_array",
    "fsck", "grid_coords", "partial_files", "plan_fsck", "remove_partial_files", "run_fsck",
    "survey", "verify_object",
]
