"""OME-Zarr (NGFF) metadata as plain dataclasses that round-trip to and from JSON. No I/O."""

from .multiscales import Axis, Dataset, Multiscale, parse_multiscales

__all__ = ["Axis", "Dataset", "Multiscale", "parse_multiscales"]
