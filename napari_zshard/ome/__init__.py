"""OME-Zarr (NGFF) metadata as plain dataclasses that round-trip to and from JSON. No I/O."""

from .labels import ImageLabel, parse_image_label, parse_label_names
from .multiscales import Axis, Dataset, Multiscale, parse_multiscales
from .omero import Channel, parse_omero

__all__ = ["Axis", "Channel", "Dataset", "ImageLabel", "Multiscale", "parse_image_label",
           "parse_label_names", "parse_multiscales", "parse_omero"]
