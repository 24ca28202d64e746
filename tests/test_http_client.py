"""The engine's own HTTP/1.1 client against a real loopback server: every way an answer can be
framed reads back the same bytes, connections are kept and re-used (and replaced when the
server closed them), redirects are followed without leaking credentials to another host, TLS
works, and answers that are not HTTP are clear errors."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading

import pytest

from napari_zshard.errors import RemoteReadError, StoreError
from napari_zshard.store import FullRequest, RangeRequest, RetryPolicy, SuffixRequest, open_store
from napari_zshard.store.http_connection import BIG_BODY
from napari_zshard.testing import RangeHTTPServer

PAYLOAD = bytes((i * 7 + i // 256) % 256 for i in range(300_000))  # bigger than BIG_BODY
FAST_RETRY = RetryPolicy(tries=3, base_delay=0.01, timeout=5)
REQUESTS = [RangeRequest("c/0", 1000, 200_000), RangeRequest("c/0", 5, 100),
            SuffixRequest("c/0", 70_000), FullRequest("c/0")]
EXPECTED = [PAYLOAD[1000:201_000], PAYLOAD[5:105], PAYLOAD[-70_000:], PAYLOAD]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "vol.zarr" / "c").mkdir(parents=True)
    (tmp_path / "vol.zarr" / "c" / "0").write_bytes(PAYLOAD)
    return tmp_path


def store_at(url: str, **options):
    store = open_store(url, options or None)
    assert store._own_client, "these tests are about the engine's own client"
    store.retry = FAST_RETRY
    return store


def read_back(store) -> list[bytes]:
    return [bytes(r.data) for r in store.read_many(REQUESTS)]


@pytest.mark.parametrize("framing", ["chunked", "close-delimited", "redirect"])
def test_every_framing_of_an_answer_reads_back_the_same_bytes(folder, http_server, framing):
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject(framing, times=len(REQUESTS))
    assert read_back(store) == EXPECTED
    assert store.stats.snapshot()["retries"] == 0
    assert EXPECTED[0].__len__() >= BIG_BODY  # a body received straight into its buffer


def test_full_reads_are_bytes_and_big_ranges_are_read_only_views(folder, http_server):
    store = store_at(f"{http_server.url}/vol.zarr")
    ranged, small, suffix, full = store.read_many(REQUESTS)
    assert isinstance(full.data, bytes) and isinstance(small.data, bytes)
    assert isinstance(ranged.data, memoryview) and ranged.data.readonly
    assert ranged.object_size == suffix.object_size == len(PAYLOAD)


def test_connections_are_kept_alive_from_one_batch_to_the_next(folder, http_server):
    store = store_at(f"{http_server.url}/vol.zarr")
    batch = [RangeRequest("c/0", i * 1000, 1000) for i in range(40)]
    assert [bytes(r.data) for r in store.read_many(batch)] == [
        PAYLOAD[i * 1000:(i + 1) * 1000] for i in range(40)]
    opened = http_server.connections_opened
    assert opened <= 40
    for _ in range(3):
        store.read_many(batch)
    assert http_server.connections_opened == opened
    assert http_server.count("/c/0") == 160


def test_connections_the_server_closed_while_idle_are_replaced_without_a_retry(folder,
                                                                               http_server):
    store = store_at(f"{http_server.url}/vol.zarr")
    assert read_back(store) == EXPECTED
    http_server.close_connections()  # its keep-alive timeout
    assert read_back(store) == EXPECTED
    assert store.stats.snapshot()["retries"] == 0


def test_a_reused_connection_closed_before_it_answered_is_replaced_without_a_retry(
        folder, http_server):
    # what happens when the server's keep-alive timeout strikes as a request is sent
    store = store_at(f"{http_server.url}/vol.zarr")
    store.read_many([RangeRequest("c/0", 0, 10)])
    http_server.inject("drop")
    (result,) = store.read_many([RangeRequest("c/0", 10, 10)])
    assert bytes(result.data) == PAYLOAD[10:20]
    assert store.stats.snapshot()["retries"] == 0
    assert [r.status for r in http_server.log] == [206, 0, 206]
    assert http_server.connections_opened == 2


def test_an_answer_longer_than_its_length_is_not_read_into_the_data_nor_reused(folder,
                                                                               http_server):
    # The extra bytes come with the body (refused: the request is retried) or after it (the
    # answer had its length; the connection is dropped): which one is up to TCP.
    store = store_at(f"{http_server.url}/vol.zarr")
    store.read_many([RangeRequest("c/0", 0, 10)])
    http_server.inject("overlong")
    (result,) = store.read_many([RangeRequest("c/0", 0, 100)])
    assert bytes(result.data) == PAYLOAD[:100]
    assert store.stats.snapshot()["retries"] <= 1
    (after,) = store.read_many([RangeRequest("c/0", 100, 100)])
    assert bytes(after.data) == PAYLOAD[100:200]
    # the connection that carried the over-long answer was dropped, one new one serves on
    assert http_server.connections_opened == 2


def test_a_redirect_to_another_server_leaves_the_password_behind(folder, http_server):
    with RangeHTTPServer(folder) as other:
        host = http_server.url.removeprefix("http://")
        store = store_at(f"http://reader:s3cret@{host}/vol.zarr")
        http_server.inject("redirect")  # to itself: the credentials go along
        assert [bytes(r.data) for r in store.read_many(REQUESTS[:1])] == EXPECTED[:1]
        http_server.redirect_to = other.url
        http_server.inject("redirect")  # elsewhere: they stay behind
        assert [bytes(r.data) for r in store.read_many(REQUESTS[1:2])] == EXPECTED[1:2]
    own = [(r.status, r.authorized) for r in http_server.log]
    assert own == [(302, True), (206, True), (302, True)]
    assert [(r.status, r.authorized) for r in other.log] == [(206, False)]


def test_an_answer_that_is_not_http_is_a_clear_error(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        store = store_at(f"http://127.0.0.1:{listener.getsockname()[1]}/vol.zarr")
        with pytest.raises(RemoteReadError, match=r"vol.zarr/c/0 after 3 tries.*not an HTTP"):
            store.read_many([RangeRequest("c/0", 0, 10)])
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_header_that_would_smuggle_another_header_is_refused(folder, http_server):
    store = store_at(f"{http_server.url}/vol.zarr", headers={"X-Token": "a\r\nHost: evil"})
    with pytest.raises(StoreError, match="X-Token"):
        store.read_many([RangeRequest("c/0", 0, 10)])
    assert http_server.log == []


def test_the_aiohttp_client_is_still_there_when_asked_for(folder, http_server, monkeypatch):
    monkeypatch.setenv("NAPARI_ZSHARD_HTTP_CLIENT", "aiohttp")
    store = open_store(f"{http_server.url}/vol.zarr")
    assert not store._own_client
    assert [bytes(r.data) for r in store.read_many(REQUESTS)] == EXPECTED


def test_options_only_aiohttp_understands_keep_aiohttp(folder, http_server):
    store = open_store(f"{http_server.url}/vol.zarr", {"client_kwargs": {"trust_env": True}})
    assert not store._own_client
    assert [bytes(r.data) for r in store.read_many(REQUESTS)] == EXPECTED


def _self_signed(tmp_path):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_https_reads_back_and_an_untrusted_certificate_is_refused(folder, tmp_path,
                                                                 monkeypatch):
    import fsspec.asyn

    from napari_zshard.store.http_client import client_for_loop

    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    client = client_for_loop(fsspec.asyn.get_loop())
    with RangeHTTPServer(folder, tls=context) as server:
        assert server.url.startswith("https://127.0.0.1:")
        store = store_at(f"{server.url}/vol.zarr")
        client._ssl = None
        with pytest.raises(StoreError, match=r"https://127.0.0.1:\d+/vol.zarr/c/0: the "
                           "server's TLS certificate is not trusted"):
            store.read_many([RangeRequest("c/0", 0, 10)])
        assert store.stats.snapshot()["retries"] == 0  # not worth retrying
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        client._ssl = None  # the client's context is made again, trusting the test's CA
        try:
            assert read_back(store) == EXPECTED
        finally:
            client._ssl = None


def test_a_big_body_is_handed_out_as_it_arrives(folder, http_server):
    store = store_at(f"{http_server.url}/vol.zarr")
    http_server.inject("slow-body")
    seen: list[int] = []

    def on_progress(i: int, body: memoryview, available: int) -> None:
        assert i == 0 and body.readonly and len(body) == 200_000
        assert bytes(body[:available]) == PAYLOAD[1000:1000 + available]
        seen.append(available)

    (result,) = store.read_many(REQUESTS[:1], on_progress=on_progress)
    assert bytes(result.data) == EXPECTED[0]
    assert seen and min(seen) <= 100_000 < 200_000 and seen == sorted(seen)


def test_a_plane_decoded_while_its_ranges_arrive_reads_back_exactly(tmp_path, http_server):
    import numpy as np
    import zarr

    import napari_zshard
    from napari_zshard import EngineCache

    z, y, x = np.indices((32, 256, 256))
    data = ((x * 7 + y * 3 + z * 11) % 4000).astype("uint16")
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=data.shape, dtype=data.dtype,
                            chunks=(8, 32, 32), shards=(32, 256, 256), compressors=None)
    arr[...] = data
    http_server.inject("slow-body", times=10, contains="/c/")
    engine = napari_zshard.open_array(f"{http_server.url}/v.zarr", cache=EngineCache())
    np.testing.assert_array_equal(engine[5], data[5])
    np.testing.assert_array_equal(engine[20, 10:200, 30:250], data[20, 10:200, 30:250])
