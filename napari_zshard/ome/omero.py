"""``omero`` rendering metadata: per-channel names, colors and display windows.

Peer readers and validators take the ``omero`` block as all or nothing: yaozarrs (and the
OME-Zarr schema) require ``color`` and a ``window`` with ``start``/``end``/``min``/``max`` on
every channel, and napari-ome-zarr indexes one colormap per channel. So a channel is written
whole or the block is not written at all (:func:`omero_json`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import MetadataError

#: The color of a channel whose color is unknown: a gray ramp.
GRAY = "FFFFFF"
_HEX = re.compile(r"[0-9A-F]{6}")


def parse_color(value: Any) -> str | None:
    """An omero color as ``RRGGBB`` (upper case, no ``#``; ``RGB`` expanded), else None."""
    if not isinstance(value, str):
        return None
    text = value.strip().lstrip("#").upper()
    if len(text) == 3:
        text = "".join(2 * c for c in text)
    return text if _HEX.fullmatch(text) else None


@dataclass(frozen=True)
class Channel:
    label: str | None = None
    color: str | None = None  # "RRGGBB"
    window: tuple[float, float] | None = None  # (start, end): the display range
    active: bool = True  # shown (napari: the layer is visible)

    def to_json(self, *, limits: tuple[float, float],
                window: tuple[float, float] | None = None) -> dict[str, Any]:
        """The channel's complete ``omero`` entry. ``limits``: the ``min``/``max`` a viewer
        lets the window move within (the dtype's range for integers); ``window``: the display
        range used when the channel has none."""
        start, end = self.window or window or limits
        lo, hi = min(limits[0], start), max(limits[1], end)
        out: dict[str, Any] = {"active": self.active,
                               "color": parse_color(self.color) or GRAY,
                               "window": {"start": start, "end": end, "min": lo, "max": hi}}
        if self.label:
            out["label"] = self.label
        return out


def complete_channels(channels: Sequence[Channel], n: int, *, name: str,
                      window: tuple[float, float] | None = None) -> list[Channel]:
    """Exactly ``n`` channels (the size of the channel axis, 1 without one), each labelled.

    No channels: one gray channel per channel index showing ``window``. One channel for a
    channel axis of several: that channel's color and window on each, labelled by index.
    Any other count does not describe the image: :class:`MetadataError`.
    """
    given = list(channels) or [Channel(label=name, color=GRAY, window=window)]
    if len(given) == 1 and n > 1:
        base = given[0]
        given = [replace(base, label=f"{base.label or name} c{i}") for i in range(n)]
    if len(given) != n:
        raise MetadataError(f"{name}: {len(given)} omero channels for an image with {n} "
                            "channels: give one channel description per channel")
    return [ch if ch.label else replace(ch, label=name if n == 1 else f"{name} c{i}")
            for i, ch in enumerate(given)]


def omero_json(channels: Sequence[Channel], *, limits: tuple[float, float],
               window: tuple[float, float] | None = None) -> dict[str, Any]:
    """The ``omero`` block for ``channels`` (see :meth:`Channel.to_json`)."""
    return {"channels": [c.to_json(limits=limits, window=window) for c in channels]}


def image_omero(channels: Sequence[Channel], *, n: int, name: str,
                window: tuple[float, float] | None, dtype: np.dtype,
                data_range: tuple[float, float] | None = None) -> dict[str, Any] | None:
    """The ``omero`` block of an image of ``dtype`` with ``n`` channels (1 without a channel
    axis): see :func:`complete_channels`. ``min``/``max`` are the dtype's range for integers,
    the windows' (else ``data_range``) for floats; None when a float image has neither."""
    channels = complete_channels(channels, n, name=name, window=window)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        limits = (float(info.min), float(info.max))
    elif dtype.kind == "b":
        limits = (0.0, 1.0)
    else:  # floats have no natural range
        windows = [c.window for c in channels if c.window] + ([window] if window else [])
        if windows:
            limits = (min(w[0] for w in windows), max(w[1] for w in windows))
        elif data_range is not None:
            limits = data_range
        else:
            return None
    return omero_json(channels, limits=limits, window=window)


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
        out.append(Channel(label=ch.get("label"), color=parse_color(ch.get("color")),
                           window=win, active=ch.get("active") is not False))
    return out
