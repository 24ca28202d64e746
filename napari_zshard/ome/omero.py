"""``omero`` rendering metadata: per-channel names, colors and display windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Channel:
    label: str | None = None
    color: str | None = None  # "RRGGBB"
    window: tuple[float, float] | None = None  # (start, end): the display range

    def to_json(self, dtype_range: tuple[float, float] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"active": True}
        if self.label:
            out["label"] = self.label
        if self.color:
            out["color"] = self.color
        if self.window:
            lo, hi = dtype_range or self.window
            out["window"] = {"start": self.window[0], "end": self.window[1], "min": lo, "max": hi}
        return out


def parse_omero(attributes: dict[str, Any]) -> list[Channel]:
    ome = attributes.get("ome") if isinstance(attributes.get("ome"), dict) else attributes
    omero = ome.get("omero") if isinstance(ome, dict) else None
    if not isinstance(omero, dict):
        omero = attributes.get("omero")
    if not isinstance(omero, dict):
        return []
    out = []
    for ch in omero.get("channels") or []:
        if not isinstance(ch, dict):
            continue
        window = ch.get("window")
        win = None
        if isinstance(window, dict) and isinstance(window.get("start"), (int, float)) and \
                isinstance(window.get("end"), (int, float)) and window["end"] > window["start"]:
            win = (float(window["start"]), float(window["end"]))
        color = ch.get("color") if isinstance(ch.get("color"), str) else None
        out.append(Channel(label=ch.get("label"), color=color, window=win))
    return out
