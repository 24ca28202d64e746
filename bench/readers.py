"""The readers compared, behind one small interface.

``open_cold()`` opens the array with every data cache empty (a new engine cache, a new
tensorstore context, a re-opened zarr array); opening reads metadata and is not timed.
``read(key)`` reads a numpy-style key (an int plane index and slices) and returns a numpy array.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Location:
    """Where the volume is: a local folder or an HTTP URL (the same bytes)."""

    transport: str  # "local" | "http" | "http+30ms"
    address: str  # a local path or an http URL of the array

    @property
    def is_local(self) -> bool:
        return "://" not in self.address


class Reader:
    name = ""
    label = ""

    def open_cold(self) -> None:
        raise NotImplementedError

    def read(self, key) -> np.ndarray:
        raise NotImplementedError

    def engine_counters(self) -> dict[str, int] | None:
        return None

    def supports(self, cold_each: bool) -> bool:
        """Whether this reader takes part in cold single reads / warm sequences."""
        return True

    def prepare(self, key) -> None:
        """Untimed set-up for ``key`` (only the decode floor needs any)."""


class ZShardRaw(Reader):
    """napari-zshard, indexing its ``ShardedArray`` directly."""

    name, label = "zshard", "napari-zshard raw arr[z]"

    def __init__(self, where: Location, cache_bytes: int, progressive: bool = True):
        self.where, self.cache_bytes, self.progressive = where, cache_bytes, progressive
        self.arr = None

    def open_cold(self) -> None:
        from napari_zshard import EngineCache, open_array

        self.arr = open_array(self.where.address, cache=EngineCache(self.cache_bytes),
                              readahead=True, progressive=self.progressive)
        self.arr.reset_counters()

    def read(self, key) -> np.ndarray:
        return self.arr[key]

    def engine_counters(self) -> dict[str, int]:
        return {**self.arr.counters, **{f"store_{k}": v
                                        for k, v in self.arr.store.stats.snapshot().items()}}


class ZShardDask(ZShardRaw):
    """napari-zshard through ``to_dask()`` with napari's default blocks, computed as napari does:
    ``np.asarray(darr[key])`` with task fusion off."""

    name, label = "zshard-dask", "napari-zshard dask (napari blocks)"

    def open_cold(self) -> None:
        super().open_cold()
        self.darr = self.arr.to_dask()

    def read(self, key) -> np.ndarray:
        import dask

        with dask.config.set({"optimization.fuse.active": False}):
            return np.asarray(self.darr[key])  # napari's own call


class DaskAlone(Reader):
    """What dask's compute machinery costs per call: for each key, the cheapest dask array there
    is (one task returning a ready numpy array of the key's shape), computed synchronously with
    fusion off. Nothing is read. (napari-zshard's own slices skip that machinery when napari
    calls ``np.asarray`` on them and no scheduler is configured.)"""

    name, label = "dask-alone", "dask alone (1 task, sync, no read)"

    def __init__(self, where: Location):
        self.where = where
        self.shape = None

    def open_cold(self) -> None:
        from napari_zshard import open_array

        if self.shape is None:
            arr = open_array(self.where.address)
            self.shape, self.dtype = arr.shape, arr.dtype
        self.ready: dict = {}

    def read(self, key) -> None:
        import dask
        import dask.array as da

        shape = np.empty(self.shape, dtype=[])[key].shape  # numpy's shape of the selection
        value = self.ready.setdefault(shape, np.zeros(shape, self.dtype))
        name = f"dask-alone-{len(self.ready)}-{id(key)}"
        part = da.Array({(name, *(0,) * len(shape)): (_return, value)}, name,
                        tuple((n,) for n in shape), meta=np.empty((0,) * len(shape), self.dtype))
        with dask.config.set({"optimization.fuse.active": False}):
            part.compute(scheduler="sync")  # as napari-zshard's one-task slices run
        # None: zeros are not the volume's data, nothing to compare


def _return(value):
    return value


def _zarr_open(where: Location):
    import zarr

    if where.is_local:
        return zarr.open_array(store=zarr.storage.LocalStore(where.address, read_only=True),
                               mode="r")
    return zarr.open_array(where.address, mode="r")


class ZarrPython(Reader):
    """zarr-python 3 with its defaults (``zarr.open_array``)."""

    name, label = "zarr", "zarr-python 3"

    def __init__(self, where: Location):
        self.where = where

    def open_cold(self) -> None:
        self.arr = _zarr_open(self.where)

    def read(self, key) -> np.ndarray:
        return self.arr[key]


class DaskFromZarr(Reader):
    """``dask.array.from_zarr`` (what napari-ome-zarr and other readers hand to napari),
    computed as napari computes it: task fusion off."""

    name, label = "from_zarr", "dask.array.from_zarr"

    def __init__(self, where: Location):
        self.where = where

    def open_cold(self) -> None:
        import dask.array as da

        self.darr = da.from_zarr(_zarr_open(self.where))

    def read(self, key) -> np.ndarray:
        import dask

        with dask.config.set({"optimization.fuse.active": False}):
            return np.asarray(self.darr[key])  # napari's own call


class TensorStore(Reader):
    """tensorstore's zarr3 driver; ``cache_bytes`` is the size of its cache pool (0: none).

    ``threads`` (optional) caps its concurrency like the engine's pools: ``{"decode": n, "io": m}``
    sets ``data_copy_concurrency`` to n and ``file_io_concurrency``/``http_request_concurrency``
    to m; without it tensorstore uses its defaults.
    """

    def __init__(self, where: Location, cache_bytes: int = 0, threads: dict | None = None):
        self.where, self.cache_bytes, self.threads = where, cache_bytes, threads
        self.name = "ts-pool" if cache_bytes else "ts"
        self.label = (f"tensorstore, cache pool {cache_bytes >> 20} MiB" if cache_bytes
                      else "tensorstore, no cache pool")

    def _spec(self) -> dict:
        address = self.where.address
        kvstore = ({"driver": "file", "path": address.rstrip("/") + "/"} if self.where.is_local
                   else address.rstrip("/") + "/")
        spec: dict = {"driver": "zarr3", "kvstore": kvstore}
        if self.cache_bytes:
            # the engine's policy too: trust what is cached for the life of the opened array
            spec["recheck_cached_data"] = False
            spec["recheck_cached_metadata"] = False
        return spec

    def open_cold(self) -> None:
        import tensorstore as ts

        conf: dict = {"cache_pool": {"total_bytes_limit": self.cache_bytes}}
        if self.threads:
            conf["data_copy_concurrency"] = {"limit": self.threads["decode"]}
            conf["file_io_concurrency"] = {"limit": self.threads["io"]}
            conf["http_request_concurrency"] = {"limit": self.threads["io"]}
        context = ts.Context(conf)
        self.arr = ts.open(self._spec(), context=context, read=True).result()

    def read(self, key) -> np.ndarray:
        return self.arr[key].read().result()


def make_readers(where: Location, cache_bytes: int, progressive: bool = True) -> list[Reader]:
    return [ZShardRaw(where, cache_bytes, progressive), ZShardDask(where, cache_bytes, progressive),
            DaskAlone(where),
            ZarrPython(where),
            DaskFromZarr(where), TensorStore(where, 0), TensorStore(where, cache_bytes)]


# -- the decode floor ---------------------------------------------------------------------------

def _hashable(key) -> tuple:
    """A dict key for a numpy-style key (slices are unhashable before Python 3.12)."""
    return tuple((k.start, k.stop) if isinstance(k, slice) else k for k in key)


class DecodeFloor(Reader):
    """Decompress exactly the inner chunks a key touches with numcodecs on all cores.

    The chunks' bytes are read from the shard files beforehand (bytes in memory, not timed).
    Each chunk is ``zstd frame + 4-byte crc32c`` (or a bare frame when the spec has no crc32c);
    the checksum is stripped, not verified, so this is the pure decompression cost. Output
    buffers are preallocated outside the timing. Only for cold single reads; ``read`` returns
    None (there is no assembled array to compare).
    """

    name, label = "floor", "decode floor (numcodecs, all cores)"

    def __init__(self, root, spec):
        from concurrent.futures import ThreadPoolExecutor

        from numcodecs import Zstd

        self.root, self.spec = root, spec
        self.codec = Zstd()
        self.pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="bench-floor")
        self.work: dict = {}
        self.chunks = 0

    def supports(self, cold_each: bool) -> bool:
        return cold_each

    def prepare(self, key) -> None:
        from volume import chunk_bytes_for

        if _hashable(key) in self.work:
            return
        region = tuple(k if isinstance(k, slice) else slice(k, k + 1) for k in key)
        region += tuple(slice(0, n) for n in self.spec.shape[len(region):])
        if self.spec.codec != "zstd":
            raise ValueError(f"the decode floor decodes zstd chunks, not {self.spec.codec}")
        nbytes = self.spec.chunk ** 3 * self.spec.itemsize
        tail = 4 if self.spec.crc32c else 0
        self.work[_hashable(key)] = [(memoryview(c)[:len(c) - tail], np.empty(nbytes, dtype="B"))
                          for c in chunk_bytes_for(self.root, self.spec, region)]

    def open_cold(self) -> None:
        pass

    def read(self, key) -> None:
        work = self.work[_hashable(key)]
        codec = self.codec
        list(self.pool.map(lambda item: codec.decode(item[0], out=item[1]), work))
        self.chunks = len(work)

    def engine_counters(self) -> dict[str, int]:
        return {"chunks": self.chunks}

    def close(self) -> None:
        self.pool.shutdown()
