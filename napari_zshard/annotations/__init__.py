"""Collaborative annotation, napari-free: check out a region of a label image, paint into it,
commit only what changed (three-way merge per voxel under compare-and-swap), with provenance.

    from napari_zshard import annotations as ann
    edit = ann.checkout("s3://lab/vol.zarr", labels="cells", region=..., annotator="alice")
    edit.data[10, 5:50, 5:50] = 7
    report = edit.commit(message="fixed a merge error")
"""

from __future__ import annotations

from .commit import replay
from .consensus import merge, merge_steps, resolve
from .consensus.points import PointsConsensus, merge_points
from .coverage import mark_reviewed, read_coverage
from .edit import CommitProgress, CommitReport, Conflict, Edit, checkout
from .geometry import (
    Geometry,
    GeometryConflict,
    GeometryReport,
    compact_geometry,
    export_geometry,
    geometry_layers,
    load_geometry,
)
from .labelimage import label_images as _label_images
from .maintenance import RepairReport, log, object_table, repair
from .provenance import CommitRecord
from .region import EditableRegion
from .slug import annotator_slug


def label_images(url: str, *, storage_options: dict | None = None) -> list[str]:
    """The label image names listed in ``labels/zarr.json`` of the image at ``url``."""
    return _label_images(url, storage_options=storage_options)


__all__ = [
    "CommitProgress", "CommitRecord", "CommitReport", "Conflict", "Edit", "EditableRegion",
    "Geometry", "GeometryConflict", "GeometryReport", "PointsConsensus", "RepairReport",
    "annotator_slug", "checkout", "compact_geometry", "export_geometry", "geometry_layers",
    "label_images", "load_geometry", "log", "mark_reviewed", "merge", "merge_points",
    "merge_steps", "object_table", "read_coverage", "repair", "replay", "resolve",
]
