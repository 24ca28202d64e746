"""Converting any Zarr v2/v3 array or OME-Zarr 0.4/0.5 image into a sharded OME-Zarr 0.5 image.

The source's own pyramid levels are kept (re-encoded in the new layout) unless ``rebuild``
asks for a new pyramid from level 0; labels, axes, scales and display windows carry over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ..store import normalize_url
from .node import ImageNode
from .open import open_nodes
from .write import ImageSpec, WriteOptions, WriteProgress, write_image


def _spec(node: ImageNode, kind: str) -> ImageSpec:
    window = node.channels[0].window if len(node.channels) == 1 else None
    return ImageSpec(name=node.name, axes=node.axes, scale=node.scale, translate=node.translate,
                     kind=kind, contrast_limits=node.contrast_limits or window,
                     channels=list(node.channels) if kind == "image" else [],
                     image_label=node.image_label)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *,
            options: WriteOptions | None = None, rebuild: bool = False,
            src_options: dict[str, Any] | None = None,
            dst_options: dict[str, Any] | None = None) -> Iterator[WriteProgress]:
    """Write the (first) image at ``src`` and its labels to ``dst``; yields progress.

    The source is never modified; ``dst`` may not be ``src`` or lie inside it.
    """
    source, target = normalize_url(src), normalize_url(dst)
    if target == source or target.startswith(source.rstrip("/") + "/"):
        raise ValueError(f"the destination {target} must not be the source or lie inside it")
    node = open_nodes(src, storage_options=src_options)[0]
    kind = "labels" if node.is_labels else "image"

    def levels(n: ImageNode):
        return [n.arrays[0]] if rebuild else list(n.arrays)

    labels = {lab.name: (levels(lab), _spec(lab, "labels")) for lab in node.labels}
    return write_image(dst, levels(node), _spec(node, kind), labels=labels or None,
                       options=options or WriteOptions(), storage_options=dst_options)
