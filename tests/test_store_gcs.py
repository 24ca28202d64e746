"""gs:// through gcsfs, against gcp-storage-emulator on 127.0.0.1: the bytes, the requests a
read makes, and what a short or missing object gives. (A dead endpoint fails after gcsfs's own
retries, about 30 s of backoff that cannot be shortened per file system: not timed here.)"""

from __future__ import annotations

import numpy as np
import pytest

import napari_zshard
from napari_zshard import EngineCache
from napari_zshard.errors import ShortReadError
from napari_zshard.store import FullRequest, RangeRequest, SuffixRequest, open_store
from napari_zshard.store.generic import FsspecStore

PAYLOAD = bytes(range(256)) * 16  # 4 KiB


@pytest.fixture
def gcs_store(gcs_bucket, gcs_emulator):
    store = open_store(f"{gcs_bucket}/vol.zarr", gcs_emulator.storage_options)
    store.write("c/0", PAYLOAD)
    gcs_emulator.reset_log()
    return store


def test_ranged_suffix_and_full_reads_return_the_bytes(gcs_store, gcs_emulator):
    assert isinstance(gcs_store, FsspecStore)

    ranged, suffix, full = (gcs_store.read_many([r])[0] for r in (
        RangeRequest("c/0", 1000, 100), SuffixRequest("c/0", 64), FullRequest("c/0")))

    assert ranged.data == PAYLOAD[1000:1100]
    assert suffix.data == PAYLOAD[-64:]
    assert full.data == PAYLOAD
    assert full.object_size == len(PAYLOAD)
    assert gcs_emulator.requests() == {"download": 3}, gcs_emulator.lines()  # one each


def test_a_range_past_the_end_is_a_short_read_and_a_missing_key_none(gcs_store):
    with pytest.raises(ShortReadError,
                       match=r"c/0: asked for bytes 4000\.\.4199, but the object ends after 4096"):
        gcs_store.read_many([RangeRequest("c/0", 4000, 200)])
    results = gcs_store.read_many([FullRequest("zarr.json"), RangeRequest("c/9", 0, 10),
                                   SuffixRequest("c/9", 10)])
    assert [r.data for r in results] == [None, None, None]


def tensorstore_volume(path, data: np.ndarray) -> None:
    """A sharded array written by tensorstore: inner chunks in C order in each shard."""
    import tensorstore as ts

    spec = {
        "driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(data.shape), "data_type": "uint16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 64, 64]}},
            "codecs": [{"name": "sharding_indexed", "configuration": {
                "chunk_shape": [8, 16, 16],
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "zstd", "configuration": {"level": 3}}],
                "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                 {"name": "crc32c"}]}}],
        },
        "create": True, "delete_existing": True,
    }
    ts.open(spec).result().write(data).result()


def test_a_cold_plane_makes_one_index_and_one_data_download_per_shard(gcs_bucket, gcs_emulator,
                                                                     tmp_path):
    from napari_zshard.testing.gcs_server import upload_dir

    data = (np.arange(32 * 128 * 128, dtype=np.uint16) % 3001).reshape(32, 128, 128)
    tensorstore_volume(tmp_path / "vol.zarr", data)
    upload_dir(tmp_path / "vol.zarr", f"{gcs_bucket}/vol.zarr", gcs_emulator.endpoint_url)
    arr = napari_zshard.open_array(f"{gcs_bucket}/vol.zarr", cache=EngineCache(),
                                   storage_options=gcs_emulator.storage_options)
    gcs_emulator.reset_log()

    np.testing.assert_array_equal(arr[3], data[3])

    shards = 2 * 2  # plane 3 lies in the first z-row of 2x2 shards
    assert arr.counters["index_requests"] == arr.counters["data_requests"] == shards
    # what reached the server: per shard its index and one download of the plane's chunk row
    assert gcs_emulator.requests() == {"download": 2 * shards}, gcs_emulator.lines()

    gcs_emulator.reset_log()
    np.testing.assert_array_equal(arr[5], data[5])  # same chunk row: from the cache
    assert gcs_emulator.requests() == {}


# -- the engine's retries, as over HTTP and S3 ----------------------------------------------
def test_the_generic_store_retries_transient_failures_by_the_remote_policy(tmp_path,
                                                                           http_server):
    """Any fsspec file system gets the retry policy of the HTTP and S3 stores: here fsspec's
    own HTTP file system, against the loopback server's injected faults (gcsfs retries such
    faults itself first, for ~30 s, which no emulator test can wait for)."""
    from napari_zshard.errors import RemoteReadError
    from napari_zshard.store import RetryPolicy

    (tmp_path / "vol.zarr" / "c").mkdir(parents=True)
    (tmp_path / "vol.zarr" / "c" / "0").write_bytes(PAYLOAD)
    store = FsspecStore(f"{http_server.url}/vol.zarr")
    store.retry = RetryPolicy(tries=3, base_delay=0.01)

    http_server.inject("503", times=2, contains="/c/0")
    ranged, missing = store.read_many([RangeRequest("c/0", 1000, 100), FullRequest("c/9")])
    assert ranged.data == PAYLOAD[1000:1100] and missing.data is None
    assert store.stats.snapshot()["retries"] == 2  # a missing object is not retried

    http_server.inject("503", times=10, contains="/c/0")
    with pytest.raises(RemoteReadError, match=r"vol.zarr/c/0 after 3 tries.*503"):
        store.read_many([RangeRequest("c/0", 0, 10)])
