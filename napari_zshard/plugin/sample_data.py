"""File ▸ Open Sample ▸ napari-zshard: the generated sharded OME-Zarr 0.5 cells volume."""

from __future__ import annotations

from ..multiscale import open_nodes
from ..sample import make_sample
from .layer_data import layer_data


def cells_sample() -> list:
    """Generate the sample on first use (a few seconds) and open it lazily, with its labels."""
    return layer_data(open_nodes(make_sample()))
