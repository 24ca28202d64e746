"""The unsafe edges of reading over HTTP, against real loopback servers: redirects to another
origin leave every configured header behind and never downgrade to http, no answer makes the
client allocate or read more than the request asked for, a slow body is not a timeout but a
stalled one is, connections per host are bounded, and proxies from the environment are used."""

from __future__ import annotations

import ssl
import threading
import time

import pytest

from napari_zshard.errors import RemoteReadError, StoreError
from napari_zshard.store import FullRequest, RangeRequest, RetryPolicy, SuffixRequest, open_store
from napari_zshard.testing import RangeHTTPServer
from napari_zshard.testing.http_proxy import ForwardingProxy

PAYLOAD = bytes((i * 7 + i // 256) % 256 for i in range(300_000))
FAST_RETRY = RetryPolicy(tries=3, base_delay=0.01, timeout=5)
SECRET_HEADERS = {"X-Api-Key": "k-123", "Authorization": "Bearer t-456"}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "vol.zarr" / "c").mkdir(parents=True)
    (tmp_path / "vol.zarr" / "c" / "0").write_bytes(PAYLOAD)
    return tmp_path


@pytest.fixture(params=["own", "aiohttp"])
def client(request, monkeypatch):
    """Which HTTP client the store uses: the engine's own, or aiohttp (proxies, options)."""
    if request.param == "aiohttp":
        monkeypatch.setenv("NAPARI_ZSHARD_HTTP_CLIENT", "aiohttp")
    return request.param


def store_at(url: str, retry: RetryPolicy = FAST_RETRY, **options):
    store = open_store(url, options or None)
    store.retry = retry
    return store


# -- redirects --------------------------------------------------------------------------------
def test_a_redirect_to_another_port_leaves_every_configured_header_behind(folder, http_server,
                                                                          client):
    with RangeHTTPServer(folder) as other:
        store = store_at(f"{http_server.url}/vol.zarr", headers=SECRET_HEADERS)
        assert store._own_client == (client == "own")
        http_server.inject("redirect")  # to itself: the headers go along
        (same,) = store.read_many([RangeRequest("c/0", 0, 100)])
        http_server.redirect_to = other.url
        http_server.inject("redirect")  # to another port: another origin
        (moved,) = store.read_many([RangeRequest("c/0", 100, 100)])
    assert bytes(same.data) == PAYLOAD[:100] and bytes(moved.data) == PAYLOAD[100:200]
    assert all({"x-api-key", "authorization", "range"} <= r.header_names
               for r in http_server.log)
    (elsewhere,) = other.log
    assert elsewhere.status == 206 and "range" in elsewhere.header_names
    assert not {"x-api-key", "authorization"} & elsewhere.header_names


@pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # aiohttp 4 drops auth=
def test_an_auth_option_stays_behind_on_a_redirect_to_another_origin(folder, http_server):
    import aiohttp

    with RangeHTTPServer(folder) as other:
        store = store_at(f"{http_server.url}/vol.zarr", auth=aiohttp.BasicAuth("u", "secret"))
        assert not store._own_client  # an aiohttp-only option
        http_server.redirect_to = other.url
        http_server.inject("redirect")
        (moved,) = store.read_many([RangeRequest("c/0", 100, 100)])
    assert bytes(moved.data) == PAYLOAD[100:200]
    assert [r.authorized for r in http_server.log] == [True]
    assert [r.authorized for r in other.log] == [False]


def test_a_redirect_loop_is_a_clear_error_and_not_retried(folder, http_server, client):
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject("redirect", times=100)
    with pytest.raises(StoreError, match="more than 10 redirects"):
        store.read_many([RangeRequest("c/0", 0, 100)])
    assert http_server.count("/c/0") == 11
    assert store.stats.snapshot()["retries"] == 0


def test_a_redirect_from_https_to_http_is_refused(folder, http_server, tmp_path, monkeypatch):
    import fsspec.asyn
    from test_http_client import _self_signed

    from napari_zshard.store.http_client import client_for_loop

    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    own = client_for_loop(fsspec.asyn.get_loop())
    own._ssl = None  # made again, trusting the test's CA
    try:
        with RangeHTTPServer(folder, tls=context) as secure:
            store = store_at(f"{secure.url}/vol.zarr", headers=SECRET_HEADERS)
            secure.redirect_to = http_server.url
            secure.inject("redirect")
            with pytest.raises(StoreError, match="refusing to downgrade from https to http"):
                store.read_many([RangeRequest("c/0", 0, 100)])
    finally:
        own._ssl = None
    assert store.stats.snapshot()["retries"] == 0
    assert http_server.log == []  # nothing went out in clear text


# -- never more than the request asked for ----------------------------------------------------
def test_a_content_length_beyond_the_range_is_refused_before_reading(folder, http_server,
                                                                     client):
    # A TiB more than the range: allocating it first would be a MemoryError (or worse)
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject("huge-length", times=1)
    (result,) = store.read_many([RangeRequest("c/0", 0, 100_000)])
    assert bytes(result.data) == PAYLOAD[:100_000]
    assert store.stats.snapshot()["retries"] == 1
    http_server.inject("huge-length", times=FAST_RETRY.tries)
    with pytest.raises(RemoteReadError, match="Content-Length 1099511727776 does not match"):
        store.read_many([RangeRequest("c/0", 0, 100_000)])


def test_a_whole_object_bigger_than_the_limit_is_refused_at_once(folder, http_server, client):
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject("huge-length", times=FAST_RETRY.tries)
    with pytest.raises(StoreError, match="more than 4294967296, the most a whole-object read"):
        store.read_many([FullRequest("c/0")])
    assert store.stats.snapshot()["retries"] == 0


@pytest.mark.timeout(30)
def test_a_content_length_shorter_than_the_range_is_retried(folder, http_server, client):
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject("short-length", times=FAST_RETRY.tries)
    started = time.monotonic()
    with pytest.raises(RemoteReadError, match="Content-Length 50000 does not match"):
        store.read_many([RangeRequest("c/0", 0, 100_000)])
    assert time.monotonic() - started < 3  # refused on the head, not waited for
    assert store.stats.snapshot()["retries"] == FAST_RETRY.tries - 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["flood", "flood-close"])
def test_a_body_without_length_stops_at_the_range(folder, http_server, client, fault):
    # a chunked or close-delimited answer that keeps coming: the client hangs up once it has
    # passed the range
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject(fault, times=FAST_RETRY.tries)
    with pytest.raises(RemoteReadError, match="runs past the 100 bytes asked for"):
        store.read_many([RangeRequest("c/0", 0, 100)])
    assert http_server.flood_sent < 3 * 16 * 2**20  # of 3 x 256 MiB offered


@pytest.mark.parametrize("fault", ["short-range", "no-content-range"])
@pytest.mark.parametrize("request_", [RangeRequest("c/0", 1000, 5000),
                                      SuffixRequest("c/0", 4000)], ids=["range", "suffix"])
def test_an_answer_that_is_not_the_range_asked_for_is_retried_then_a_clear_error(
        folder, http_server, client, fault, request_):
    store = store_at(f"{http_server.url}/vol.zarr")
    expected = PAYLOAD[1000:6000] if isinstance(request_, RangeRequest) else PAYLOAD[-4000:]
    http_server.inject(fault, times=1)
    (result,) = store.read_many([request_])
    assert bytes(result.data) == expected
    assert store.stats.snapshot()["retries"] == 1
    http_server.inject(fault, times=FAST_RETRY.tries)
    with pytest.raises(RemoteReadError, match=f"after {FAST_RETRY.tries} tries.*Content-Range"):
        store.read_many([request_])


# -- timeouts: stalls, not slowness ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_slow_body_that_keeps_coming_is_not_a_timeout(tmp_path, http_server):
    big = bytes(range(256)) * (4 * 2**20 // 256)  # 4 MiB at 256 KiB/s: 16 s
    (tmp_path / "big").write_bytes(big)
    store = store_at(http_server.url, RetryPolicy(tries=1, timeout=2))
    http_server.inject("throttle")
    started = time.monotonic()
    (result,) = store.read_many([RangeRequest("big", 0, len(big))])
    elapsed = time.monotonic() - started
    assert bytes(result.data) == big
    assert elapsed > 8  # far beyond the 2 s a total timeout would have allowed


@pytest.mark.timeout(30)
def test_a_body_that_stops_mid_way_fails_after_the_stall_timeout(folder, http_server, client):
    store = store_at(f"{http_server.url}/vol.zarr", RetryPolicy(tries=2, base_delay=0.01,
                                                                timeout=1))
    http_server.inject("stall-body", times=2)
    started = time.monotonic()
    try:
        with pytest.raises(RemoteReadError, match=r"after 2 tries.*no bytes received for 1 s"):
            store.read_many([RangeRequest("c/0", 0, 200_000)])
    finally:
        http_server.release_hangs()
    assert 2 <= time.monotonic() - started < 6
    assert [r.status for r in http_server.log] == [206, 206]


def test_the_stall_timeout_is_a_storage_option(folder, http_server):
    store = open_store(f"{http_server.url}/vol.zarr", {"stall_timeout": "0.5"})
    assert store.retry.timeout == 0.5 and store._own_client
    with pytest.raises(ValueError, match="stall_timeout='soon': expected seconds"):
        open_store(f"{http_server.url}/vol.zarr", {"stall_timeout": "soon"})


# -- connections per host -----------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_connections_to_one_host_are_bounded(folder, http_server):
    import fsspec.asyn

    from napari_zshard.store.http_client import client_for_loop

    own = client_for_loop(fsspec.asyn.get_loop())
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.latency = 0.05
    batch = [RangeRequest("c/0", i * 1000, 1000) for i in range(48)]
    own.connections_per_host, before = 6, own.connections_per_host
    try:
        results: list = []
        readers = [threading.Thread(target=lambda: results.append(store.read_many(batch)))
                   for _ in range(2)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        own.connections_per_host = before
    assert len(results) == 2
    assert all(bytes(r.data) == PAYLOAD[i * 1000:(i + 1) * 1000]
               for got in results for i, r in enumerate(got))
    assert http_server.peak_connections <= 6
    assert http_server.count("/c/0") == 96


# -- proxies ----------------------------------------------------------------------------------
def test_a_proxy_from_the_environment_is_used_unless_no_proxy_exempts_the_host(
        folder, http_server, monkeypatch):
    with ForwardingProxy() as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        store = store_at(f"{http_server.url}/vol.zarr")
        assert store.proxy == proxy.url and not store._own_client
        results = store.read_many([RangeRequest("c/0", 0, 100), SuffixRequest("c/0", 50),
                                   FullRequest("c/0")])
        assert [bytes(r.data) for r in results] == [PAYLOAD[:100], PAYLOAD[-50:], PAYLOAD]
        assert proxy.count("/vol.zarr/c/0") == 3 and http_server.count("/c/0") == 3

        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(name, "127.0.0.1")
        direct = store_at(f"{http_server.url}/vol.zarr")
        assert direct.proxy is None and direct._own_client
        direct.read_many([RangeRequest("c/0", 0, 100)])
        assert proxy.count() == 3 and http_server.count("/c/0") == 4
