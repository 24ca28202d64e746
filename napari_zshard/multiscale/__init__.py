"""Images as pyramids: open OME-Zarr/plain Zarr images (and, later, write them)."""

from .node import ImageNode
from .open import open_image, open_nodes, probe, read_node, sniff

__all__ = ["ImageNode", "open_image", "open_nodes", "probe", "read_node", "sniff"]
