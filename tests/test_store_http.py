"""Reading over HTTP from a real loopback server: ranges, retries, timeouts, dead servers."""

from __future__ import annotations

import http.client
import pickle
import time

import pytest

from napari_zshard.errors import (
    RangeNotSupportedError,
    RemoteReadError,
    ShortReadError,
    StoreError,
)
from napari_zshard.store import FullRequest, RangeRequest, RetryPolicy, SuffixRequest, open_store
from napari_zshard.store.http import HTTPStore
from napari_zshard.testing import RangeHTTPServer

PAYLOAD = bytes(range(256)) * 16  # 4 KiB
FAST_RETRY = RetryPolicy(tries=3, base_delay=0.01, timeout=2)


@pytest.fixture
def served(tmp_path, http_server):
    """A store folder ``vol.zarr`` with one 4 KiB shard, served over HTTP; returns the store."""
    (tmp_path / "vol.zarr" / "c").mkdir(parents=True)
    (tmp_path / "vol.zarr" / "c" / "0").write_bytes(PAYLOAD)
    store = open_store(f"{http_server.url}/vol.zarr")
    store.retry = FAST_RETRY
    return store


def test_ranged_suffix_and_full_reads_return_the_bytes_and_the_object_size(served, http_server):
    ranged, suffix, full = served.read_many([
        RangeRequest("c/0", 1000, 100), SuffixRequest("c/0", 64), FullRequest("c/0"),
    ])

    assert isinstance(served, HTTPStore)
    assert ranged.data == PAYLOAD[1000:1100]
    assert suffix.data == PAYLOAD[-64:]
    assert full.data == PAYLOAD
    assert ranged.object_size == suffix.object_size == full.object_size == len(PAYLOAD)
    assert ranged.etag and ranged.etag == full.etag
    assert sorted(r.range_header or "" for r in http_server.log) == [
        "", "bytes=-64", "bytes=1000-1099"]
    assert served.stats.snapshot() == {"requests": 3, "bytes": 100 + 64 + len(PAYLOAD),
                                       "retries": 0}


def test_a_suffix_longer_than_the_object_returns_the_whole_object(served):
    (result,) = served.read_many([SuffixRequest("c/0", 10 * len(PAYLOAD))])

    assert result.data == PAYLOAD
    assert result.object_size == len(PAYLOAD)


def test_the_last_bytes_of_an_empty_object_are_empty_as_on_disk(served, tmp_path):
    (tmp_path / "vol.zarr" / "c" / "1").write_bytes(b"")

    (result,) = served.read_many([SuffixRequest("c/1", 16)])

    assert result.data == b"" and result.object_size == 0


def test_a_missing_key_reads_as_none(served):
    results = served.read_many([FullRequest("zarr.json"), RangeRequest("c/9", 0, 10),
                                SuffixRequest("c/9", 10)])

    assert [r.data for r in results] == [None, None, None]


def test_a_range_past_the_end_of_an_object_is_a_short_read(served):
    with pytest.raises(ShortReadError) as partly_past:
        served.read_many([RangeRequest("c/0", len(PAYLOAD) - 10, 20)])
    with pytest.raises(ShortReadError) as wholly_past:
        served.read_many([RangeRequest("c/0", len(PAYLOAD) + 5, 20)])

    assert (partly_past.value.key, partly_past.value.received) == ("c/0", 10)
    assert wholly_past.value.received == 0
    assert served.url in str(wholly_past.value)


def test_keys_with_url_special_characters_address_exactly_that_object(served, tmp_path):
    for name in ("a#1", "b?2", "c%203", "d 4"):
        (tmp_path / "vol.zarr" / name).write_bytes(name.encode())

    results = served.read_many([FullRequest(n) for n in ("a#1", "b?2", "c%203", "d 4")])

    assert [r.data for r in results] == [b"a#1", b"b?2", b"c%203", b"d 4"]


# -- transient failures are retried -------------------------------------------------------------
@pytest.mark.timeout(20)
@pytest.mark.parametrize("fault", ["500", "502", "503", "504", "408", "429", "truncate"])
def test_a_transient_failure_is_retried_and_the_read_succeeds(served, http_server, fault):
    http_server.inject(fault, times=2, contains="/c/0")

    (result,) = served.read_many([RangeRequest("c/0", 0, 512)])

    assert result.data == PAYLOAD[:512]
    assert served.stats.retries == 2
    assert http_server.count("/c/0") == 3


@pytest.mark.timeout(20)
def test_a_dropped_connection_is_retried_and_the_read_succeeds(served, http_server):
    http_server.inject("drop", times=2)

    (result,) = served.read_many([RangeRequest("c/0", 0, 512)])

    assert result.data == PAYLOAD[:512]
    # aiohttp itself re-sends once when a pooled connection was closed; we retry the rest
    assert 1 <= served.stats.retries <= 2
    assert [r.status for r in http_server.log] == [0, 0, 206]


@pytest.mark.timeout(20)
def test_retries_cover_every_request_of_a_batch(served, http_server):
    http_server.inject("503", times=5)

    results = served.read_many([RangeRequest("c/0", i * 256, 256) for i in range(16)])

    assert b"".join(r.data for r in results) == PAYLOAD
    assert served.stats.retries == 5


@pytest.mark.timeout(20)
def test_a_failure_that_outlasts_every_try_is_a_clear_error_naming_the_url(served, http_server):
    http_server.inject("503", times=FAST_RETRY.tries + 5)

    started = time.monotonic()
    with pytest.raises(RemoteReadError) as error:
        served.read_many([RangeRequest("c/0", 0, 512)])

    assert time.monotonic() - started < 2
    assert f"{http_server.url}/vol.zarr/c/0" in str(error.value)
    assert "503" in str(error.value) and f"{FAST_RETRY.tries} tries" in str(error.value)
    assert served.stats.retries == FAST_RETRY.tries - 1


@pytest.mark.timeout(20)
def test_a_server_that_stops_answering_times_out_instead_of_hanging(served, http_server):
    served.retry = RetryPolicy(tries=2, base_delay=0.01, timeout=0.3)
    http_server.inject("hang", times=2)

    started = time.monotonic()
    with pytest.raises(RemoteReadError, match=r"no bytes received for 0\.3 s"):
        served.read_many([RangeRequest("c/0", 0, 512)])

    assert time.monotonic() - started < 3


@pytest.mark.timeout(20)
def test_a_request_that_times_out_once_is_retried(served, http_server):
    served.retry = RetryPolicy(tries=3, base_delay=0.01, timeout=0.3)
    http_server.inject("hang", times=1)

    (result,) = served.read_many([SuffixRequest("c/0", 32)])

    assert result.data == PAYLOAD[-32:]
    assert served.stats.retries == 1


@pytest.mark.timeout(20)
def test_a_stopped_server_is_a_clear_error_within_seconds(served, http_server):
    served.read_many([RangeRequest("c/0", 0, 16)])  # a pooled keep-alive connection now exists
    http_server.stop()

    started = time.monotonic()
    with pytest.raises(RemoteReadError) as error:
        served.read_many([RangeRequest("c/0", 0, 16)])

    assert time.monotonic() - started < 3
    assert http_server.url in str(error.value)
    assert "connect" in str(error.value).lower()


# -- servers that cannot serve sharded Zarr -----------------------------------------------------
def test_a_server_that_ignores_range_requests_is_refused_clearly(served, http_server):
    http_server.ignore_range = True

    with pytest.raises(RangeNotSupportedError, match="Range"):
        served.read_many([RangeRequest("c/0", 0, 16)])
    assert served.stats.retries == 0
    assert served.read("c/0") == PAYLOAD  # whole objects (metadata) still read fine


def test_an_http_store_is_read_only(served):
    with pytest.raises(StoreError, match="read-only"):
        served.write("c/1", b"x")
    with pytest.raises(StoreError, match="read-only"):
        served.delete("c/0")


# -- concurrency --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_batch_of_ranges_is_fetched_concurrently(served, http_server):
    http_server.latency = 0.05
    requests = [RangeRequest("c/0", i * 128, 128) for i in range(32)]

    started = time.monotonic()
    results = served.read_many(requests)
    elapsed = time.monotonic() - started

    assert b"".join(r.data for r in results) == PAYLOAD
    assert http_server.count("/vol.zarr/c/0") == 32
    assert elapsed < 0.5 * 32 * 0.05, f"32 requests took {elapsed:.2f} s: not concurrent"


def test_a_store_pickles_to_the_same_url(served):
    clone = pickle.loads(pickle.dumps(served))

    assert isinstance(clone, HTTPStore) and clone.url == served.url
    assert clone.read("c/0") == PAYLOAD


# -- the test server itself ---------------------------------------------------------------------
def _raw_get(server: RangeHTTPServer, path: str, headers: dict[str, str] | None = None):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_the_test_server_answers_ranges_as_rfc_9110_says(served, http_server):
    status, headers, body = _raw_get(http_server, "/vol.zarr/c/0", {"Range": "bytes=4000-"})
    assert (status, headers["Content-Range"], body) == (206, "bytes 4000-4095/4096",
                                                        PAYLOAD[4000:])
    status, headers, _ = _raw_get(http_server, "/vol.zarr/c/0", {"Range": "bytes=5000-5010"})
    assert (status, headers["Content-Range"]) == (416, "bytes */4096")
    status, headers, body = _raw_get(http_server, "/vol.zarr/c/0")
    assert (status, headers["Accept-Ranges"], body) == (200, "bytes", PAYLOAD)


def test_the_test_server_never_serves_files_outside_its_root(tmp_path, http_server):
    (tmp_path.parent / "secret.txt").write_text("not yours")

    status, _, body = _raw_get(http_server, "/../secret.txt")

    assert status in (403, 404) and b"not yours" not in body


# -- answers that contradict the request: transient, then a clear error -------------------------
@pytest.mark.parametrize("fault", ["short-range", "no-content-range"])
def test_a_shard_read_through_an_inconsistent_answer_is_retried_not_called_corrupt(
        tmp_path, http_server, fault):
    """A short but self-consistent 206, or one without Content-Range, on the shard index's
    suffix read: once, the read is retried and right; every time, a RemoteReadError saying what
    the server answered (never CorruptShardError: the shard is fine)."""
    import numpy as np
    import zarr

    import napari_zshard
    from napari_zshard import EngineCache

    data = np.arange(32 * 32 * 32, dtype="uint16").reshape(32, 32, 32)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, dtype=data.dtype,
                            chunks=(8, 8, 8), shards=(32, 32, 32), compressors=None)
    arr[...] = data
    http_server.inject(fault, times=1, contains="/c/")
    engine = napari_zshard.open_array(f"{http_server.url}/v.zarr", cache=EngineCache())
    engine.store.retry = FAST_RETRY
    np.testing.assert_array_equal(engine[5], data[5])
    assert engine.store.stats.snapshot()["retries"] == 1

    http_server.inject(fault, times=FAST_RETRY.tries, contains="/c/")
    again = napari_zshard.open_array(f"{http_server.url}/v.zarr", cache=EngineCache())
    again.store.retry = FAST_RETRY
    with pytest.raises(RemoteReadError, match=r"v.zarr/c/0/0/0 after 3 tries.*Content-Range"):
        again[5]
