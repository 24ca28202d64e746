"""``multiscales``: axes, and one dataset (pyramid level) per path with its scale/translation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MetadataError
from ..keys import validate_key


@dataclass(frozen=True)
class Axis:
    name: str
    type: str | None = None  # "space" | "time" | "channel"
    unit: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.type:
            out["type"] = self.type
        if self.unit:
            out["unit"] = self.unit
        return out


@dataclass(frozen=True)
class Dataset:
    """One pyramid level: its path in the group and its voxel size / offset."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(self.scale)}]
        if self.translation is not None and any(self.translation):
            transforms.append({"type": "translation", "translation": list(self.translation)})
        return {"path": self.path, "coordinateTransformations": transforms}


@dataclass(frozen=True)
class Multiscale:
    axes: tuple[Axis, ...]
    datasets: tuple[Dataset, ...]
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"axes": [a.to_json() for a in self.axes],
                               "datasets": [d.to_json() for d in self.datasets]}
        if self.name:
            out["name"] = self.name
        out.update(self.extra)
        return out


def _parse_dataset(doc: Any, ndim: int, where: str) -> Dataset:
    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
        raise MetadataError(f"{where}: each dataset needs a 'path'")
    scale: tuple[float, ...] = (1.0,) * ndim
    translation = None
    for t in doc.get("coordinateTransformations") or []:
        if t.get("type") == "scale" and isinstance(t.get("scale"), list):
            scale = tuple(float(v) for v in t["scale"])
        elif t.get("type") == "translation" and isinstance(t.get("translation"), list):
            translation = tuple(float(v) for v in t["translation"])
    if len(scale) != ndim or (translation is not None and len(translation) != ndim):
        raise MetadataError(f"{where}: dataset {doc['path']!r} transforms do not match "
                            f"{ndim} axes")
    return Dataset(validate_key(doc["path"], what="dataset path"), scale, translation)


def parse_multiscales(attributes: dict[str, Any], where: str) -> list[Multiscale]:
    """The multiscales of a group's attributes (OME-Zarr 0.5 under ``ome``, or 0.4 at the top)."""
    ome = attributes.get("ome")
    if not isinstance(ome, dict):
        ome = attributes
    docs = ome.get("multiscales")
    if not isinstance(docs, list) or not docs:
        return []
    out = []
    for doc in docs:
        axes_doc = doc.get("axes") or []
        axes = tuple(Axis(a["name"], a.get("type"), a.get("unit")) if isinstance(a, dict)
                     else Axis(str(a)) for a in axes_doc)
        ndim = len(axes)
        datasets = tuple(_parse_dataset(d, ndim, where) for d in doc.get("datasets") or [])
        if not datasets:
            raise MetadataError(f"{where}: multiscale without datasets")
        out.append(Multiscale(axes=axes, datasets=datasets, name=doc.get("name")))
    return out
