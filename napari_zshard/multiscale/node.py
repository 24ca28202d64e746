"""What a store holds, as napari-free data: an image pyramid with its metadata and labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine import ShardedArray
from ..ome import Axis, Channel, ImageLabel


@dataclass
class ImageNode:
    """One image (or label image): its pyramid levels, largest first, and how to show them."""

    url: str
    name: str
    arrays: list[ShardedArray]
    axes: tuple[Axis, ...]
    scale: tuple[float, ...] | None = None  # level 0 voxel size
    translate: tuple[float, ...] | None = None
    channels: list[Channel] = field(default_factory=list)
    image_label: ImageLabel | None = None  # set for label images
    labels: list[ImageNode] = field(default_factory=list)
    contrast_limits: tuple[float, float] | None = None  # stored at write time, if any

    @property
    def is_labels(self) -> bool:
        return self.image_label is not None

    @property
    def channel_axis(self) -> int | None:
        for i, a in enumerate(self.axes):
            if a.type == "channel" or (a.type is None and a.name.lower() in ("c", "channel")):
                return i
        return None

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indexes of the spatial axes: those typed ``space``, else those named z/y/x, else the
        last three axes that are not channel or time."""
        typed = tuple(i for i, a in enumerate(self.axes) if a.type == "space")
        if typed:
            return typed
        named = tuple(i for i, a in enumerate(self.axes)
                      if a.type is None and a.name.lower() in ("z", "y", "x"))
        if named:
            return named
        others = [i for i, a in enumerate(self.axes)
                  if i != self.channel_axis and a.type not in ("time", "channel")]
        return tuple(others[-3:])

    def levels(self, blocks: Any = "napari") -> list:
        """One lazy dask array per level, largest first."""
        return [a.to_dask(blocks) for a in self.arrays]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.arrays[0].shape

    @property
    def dtype(self):
        return self.arrays[0].dtype
