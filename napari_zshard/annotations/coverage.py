"""Which parts of the volume an annotator actually reviewed: one bit per level-0 inner chunk.

"Not reviewed" is not "background": a merge counts an annotator's vote (including a vote for
0) only where their coverage says they looked. The map is coarse on purpose (a 10,000³ volume
in 64³ chunks is 3.8 M chunks, ~480 KB packed) and lives beside the label image as one small
object, ``labels/<name>/zshard/coverage.json``, changed only by compare-and-swap so two
"mark reviewed" actions at once both stick.

A partly covered chunk does **not** count: :func:`mark_reviewed` sets a chunk only when the
region covers all of its voxels (clipped to the volume's edge). A merge then never takes the
unreviewed rest of a chunk as background; the price is that the edges of a region not aligned
to the chunk grid do not vote (mark chunk-aligned regions; ``MarkReport.partial`` says how many
chunks were left out).
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import AnnotationError
from ..store import open_store
from .labelimage import LabelImage, open_label_image, writable_store

#: label image names no annotator can have: the merge writes them
RESERVED_NAMES = frozenset({"consensus", "conflicts"})
COVERAGE_OBJECT = "coverage.json"


class ReservedNameError(AnnotationError, ValueError):
    """A label image name the merge reserves for its outputs was used as an annotator's."""


def check_not_reserved(name: str, *, what: str = "an annotator's label image") -> None:
    """Refuse ``consensus``/``conflicts`` as ``what``. (:func:`~.slug.annotator_slug` can
    never return them: its output always ends with ``-<10 hex digits>``.)"""
    if name in RESERVED_NAMES:
        raise ReservedNameError(f"{name!r} is reserved for the merge's output; it cannot be "
                                f"used as {what}")


@dataclass(frozen=True)
class Coverage:
    """Reviewed inner chunks of level 0 (``reviewed[c]`` for global chunk coords ``c``)."""

    chunk_shape: tuple[int, ...]
    shape: tuple[int, ...]  # of level 0
    reviewed: np.ndarray  # bool, one per inner chunk

    @property
    def any(self) -> bool:
        return bool(self.reviewed.any())

    @property
    def fraction(self) -> float:
        return float(self.reviewed.mean()) if self.reviewed.size else 0.0

    def mask(self, box: tuple[slice, ...]) -> np.ndarray:
        """The voxel mask of level-0 ``box`` (step-1 slices inside the volume)."""
        lo = [s.start // c for s, c in zip(box, self.chunk_shape, strict=True)]
        hi = [-(-s.stop // c) for s, c in zip(box, self.chunk_shape, strict=True)]
        sub = self.reviewed[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        for axis, c in enumerate(self.chunk_shape):
            sub = np.repeat(sub, c, axis=axis)
        return sub[tuple(slice(s.start - a * c, s.stop - a * c)
                         for s, a, c in zip(box, lo, self.chunk_shape, strict=True))]


@dataclass(frozen=True)
class MarkReport:
    coverage: Coverage
    marked: int  # chunks this call set (or cleared)
    partial: int  # chunks the region only partly covered: left as they were


def _grid(li: LabelImage) -> tuple[int, ...]:
    m = li.metas[0]
    return tuple(-(-n // c) for n, c in zip(m.shape, m.chunk_shape, strict=True))


def _encode(cov: Coverage) -> bytes:
    bits = np.packbits(cov.reviewed.ravel())
    doc = {"version": 1, "chunk_shape": list(cov.chunk_shape), "shape": list(cov.shape),
           "grid": list(cov.reviewed.shape),
           "bits": base64.b64encode(zlib.compress(bits.tobytes(), 9)).decode()}
    return json.dumps(doc, sort_keys=True).encode()


def _decode(raw: bytes | None, li: LabelImage) -> Coverage:
    meta = li.metas[0]
    grid = _grid(li)
    if raw is None:
        return Coverage(meta.chunk_shape, meta.shape, np.zeros(grid, dtype=bool))
    where = f"{li.store.url}/{li.zshard_key(COVERAGE_OBJECT)}"
    try:
        doc = json.loads(raw)
        bits = np.frombuffer(zlib.decompress(base64.b64decode(doc["bits"])), dtype=np.uint8)
        n = int(np.prod(doc["grid"]))
        reviewed = np.unpackbits(bits)[:n].astype(bool).reshape(doc["grid"])
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise AnnotationError(f"{where}: unreadable coverage map ({e})") from e
    if tuple(doc["grid"]) != grid or tuple(doc["chunk_shape"]) != meta.chunk_shape:
        raise AnnotationError(f"{where}: coverage map of grid {doc['grid']} / chunks "
                              f"{doc['chunk_shape']} does not fit the label image (grid "
                              f"{list(grid)}, chunks {list(meta.chunk_shape)})")
    return Coverage(meta.chunk_shape, meta.shape, reviewed)


def coverage_of(li: LabelImage) -> Coverage:
    """The coverage map of an opened label image (nothing reviewed when there is none)."""
    return _decode(li.store.read(li.zshard_key(COVERAGE_OBJECT)), li)


def read_coverage(url: str, *, labels: str, storage_options: dict | None = None) -> Coverage:
    """The coverage map of ``labels/<labels>`` (nothing reviewed when none was recorded)."""
    return coverage_of(open_label_image(open_store(url, storage_options), labels))


def mark_reviewed(url: str, *, labels: str, region: tuple[slice, ...] | None = None,
                  reviewed: bool = True, storage_options: dict | None = None) -> MarkReport:
    """Record that the annotator of ``labels`` reviewed ``region`` (level-0 voxel slices;
    None: the whole volume), or with ``reviewed=False`` take it back. Only chunks the region
    covers whole change (see the module docstring)."""
    check_not_reserved(labels)
    return mark_reviewed_in(open_label_image(writable_store(url, storage_options), labels),
                            region, reviewed=reviewed)


def mark_reviewed_in(li: LabelImage, region: tuple[slice, ...] | None, *,
                     reviewed: bool = True) -> MarkReport:
    """:func:`mark_reviewed` for a label image already open (a commit of an own edit)."""
    meta = li.metas[0]
    shape, cs = meta.shape, meta.chunk_shape
    region = region or tuple(slice(0, n) for n in shape)
    if len(region) != len(shape):
        raise ValueError(f"region has {len(region)} axes; the label image has {len(shape)}")
    box = []
    for s, n in zip(region, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1 or (s.start is not None and not 0 <= s.start <= n) or \
                (s.stop is not None and not 0 <= s.stop <= n):
            raise ValueError(f"region {region} is not a step-1 box inside the volume {shape}")
        box.append((start, stop))
    full = tuple(slice(-(-a // c), min(b, n) // c + (1 if b >= n and n % c else 0))
                 for (a, b), c, n in zip(box, cs, shape, strict=True))
    touched = tuple(slice(a // c, -(-b // c)) for (a, b), c in zip(box, cs, strict=True))
    n_full = int(np.prod([max(0, s.stop - s.start) for s in full]))
    n_touched = int(np.prod([max(0, s.stop - s.start) for s in touched]))

    def modify(current: bytes | None) -> bytes:
        cov = _decode(current, li)
        grid = cov.reviewed.copy()
        grid[full] = reviewed
        return _encode(Coverage(cov.chunk_shape, cov.shape, grid))

    new = li.store.update(li.zshard_key(COVERAGE_OBJECT), modify, tries=50)
    return MarkReport(_decode(new, li), marked=n_full, partial=n_touched - n_full)
