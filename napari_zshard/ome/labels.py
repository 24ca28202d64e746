"""``image-label``: colors and properties of a label image, and the ``labels`` group listing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..keys import validate_name


@dataclass(frozen=True)
class ImageLabel:
    colors: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)  # 0..1
    properties: list[dict[str, Any]] = field(default_factory=list)  # each has "label-value"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": "0.5"}
        if self.colors:
            out["colors"] = [{"label-value": int(v), "rgba": [round(c * 255) for c in rgba]}
                             for v, rgba in self.colors.items()]
        if self.properties:
            out["properties"] = self.properties
        return out


def parse_image_label(attributes: dict[str, Any]) -> ImageLabel | None:
    ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else attributes
    doc = ome.get("image-label") if isinstance(ome, dict) else None
    if not isinstance(doc, dict):
        return None
    colors: dict[int, tuple[float, float, float, float]] = {}
    for c in doc.get("colors") or []:
        if isinstance(c, dict) and isinstance(c.get("label-value"), int) and \
                isinstance(c.get("rgba"), list) and len(c["rgba"]) == 4:
            r, g, b, a = (float(v) / 255 for v in c["rgba"])
            colors[c["label-value"]] = (r, g, b, a)
    props = [p for p in doc.get("properties") or [] if isinstance(p, dict) and
             isinstance(p.get("label-value"), int)]
    return ImageLabel(colors=colors, properties=props)


def parse_label_names(attributes: dict[str, Any]) -> list[str]:
    """Names listed by a ``labels`` group, each validated as a single safe path segment."""
    ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else attributes
    names = ome.get("labels") if isinstance(ome, dict) else None
    if not isinstance(names, list):
        return []
    return [validate_name(n, what="label name") for n in names if isinstance(n, str)]
