"""The log of commits and the repair of interrupted ones, for every label image of an image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..store import open_store
from . import provenance as prov
from .commit import replay
from .labelimage import LabelImage, label_images, open_label_image, writable_store
from .provenance import CommitRecord


@dataclass
class RepairReport:
    """What :func:`repair` did: the commits it finished and the ones it found finished."""

    finished: list[str] = field(default_factory=list)
    already_finished: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    objects: int = 0  # rows of the compacted object tables


def _label_images(url: str, labels: str | None, storage_options: dict[str, Any] | None,
                  *, writable: bool) -> list[LabelImage]:
    store = writable_store(url, storage_options) if writable else open_store(url,
                                                                             storage_options)
    names = [labels] if labels else label_images(store)
    return [open_label_image(store, n) for n in names]


def log(url: str, *, labels: str | None = None, storage_options: dict | None = None
        ) -> list[CommitRecord]:
    """The commits to the label images of the image at ``url`` (or to ``labels`` only),
    oldest first; interrupted ones (intent without record) have status "interrupted"."""
    out: list[CommitRecord] = []
    for li in _label_images(url, labels, storage_options, writable=False):
        out += prov.read_log(li)
    out.sort(key=lambda r: (r.created or "", r.commit_id))
    return out


def repair(url: str, *, labels: str | None = None, storage_options: dict | None = None
           ) -> RepairReport:
    """Finish every interrupted commit (idempotent; safe while a slow original still runs),
    then compact the object tables (and the ``image-label`` properties they feed)."""
    report = RepairReport()
    for li in _label_images(url, labels, storage_options, writable=True):
        for cid in prov.interrupted(li):
            if prov.read_intent(li, cid) is None:
                report.unreadable.append(cid)
                continue
            if replay(li, cid):
                report.finished.append(cid)
            else:
                report.already_finished.append(cid)
        report.objects += prov.compact_objects(li)
    return report


def object_table(url: str, *, labels: str, storage_options: dict | None = None
                 ) -> list[dict[str, Any]]:
    """One row per object (id, author, created, modified_by, modified, voxels, bbox)."""
    store = open_store(url, storage_options)
    return prov.object_table(open_label_image(store, labels))
