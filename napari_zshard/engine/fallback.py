"""zarr-python's own read path, for codec chains the engine does not implement.

Correct but slower: it never gives wrong data, and it is logged at debug level so a user who
wonders why a store is slow can find out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..store import Store

log = logging.getLogger(__name__)


def zarr_store_for(store: Store, *, read_only: bool = True):
    """A zarr-python store over the same location (and options) as ``store``."""
    import zarr.storage

    from ..store.local import LocalStore

    if isinstance(store, LocalStore):
        return zarr.storage.LocalStore(str(store.root), read_only=read_only)
    options = dict(store.options)
    if store.url.startswith("s3://") and hasattr(store, "fs"):
        options.setdefault("anon", getattr(store.fs, "anon", False))
    return zarr.storage.FsspecStore.from_url(store.url, storage_options=options or None,
                                             read_only=read_only)


class ZarrFallbackReader:
    """Reads regions with ``zarr.open_array`` for arrays the engine cannot decode itself."""

    def __init__(self, store: Store, reason: str):
        import zarr

        log.debug("reading %s through zarr-python: %s", store.url, reason)
        self.reason = reason
        self.store = store
        self.array = zarr.open_array(store=zarr_store_for(store), mode="r")

    def read(self, region: Sequence[slice], out: np.ndarray | None = None) -> np.ndarray:
        data = np.asarray(self.array[tuple(region)])
        if out is not None:
            out[...] = data
            return out
        return data

    def refresh(self) -> None:
        import zarr

        self.array = zarr.open_array(store=zarr_store_for(self.store), mode="r")
