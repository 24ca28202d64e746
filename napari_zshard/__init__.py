"""napari-zshard: fast lazy reads and safe writes of sharded Zarr v3 / OME-Zarr 0.5 volumes.

The core (this package minus ``plugin/``, the napari plugin) imports no napari, Qt or magicgui,
so it serves notebooks, the ``zshard`` CLI (``cli/``) and dask workers alike.
"""

from .engine import (
    CoalescePolicy,
    EngineCache,
    ShardedArray,
    default_cache,
    open_array,
    set_cache_budget,
)
from .errors import (
    ChecksumError,
    CorruptDataError,
    CorruptShardError,
    DecompressionBombError,
    MetadataError,
    RangeNotSupportedError,
    RemoteReadError,
    StoreError,
    UnsafeKeyError,
    ZShardError,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # the napari plugin loads only when asked for, so `import napari_zshard` stays napari-free.
    if name in ("view_path", "refresh_layers"):
        from .plugin import viewer

        return getattr(viewer, name)
    if name in ("open_image", "open_nodes", "ImageNode"):
        from . import multiscale

        return getattr(multiscale, name)
    raise AttributeError(f"module 'napari_zshard' has no attribute {name!r}")


__all__ = [
    "ChecksumError", "CoalescePolicy", "CorruptDataError", "CorruptShardError",
    "DecompressionBombError", "EngineCache", "MetadataError", "RangeNotSupportedError",
    "RemoteReadError", "ShardedArray", "StoreError", "UnsafeKeyError", "ZShardError",
    "default_cache", "open_array", "open_image", "open_nodes", "refresh_layers",
    "set_cache_budget", "view_path",
]
