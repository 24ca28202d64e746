"""Credentials stay in the process that was given them: never in a repr, a log line, an error
or a pickle (dask graphs and worker processes carry the store's address, not its secrets)."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import socket

import cloudpickle
import pytest

from napari_zshard.errors import RemoteReadError
from napari_zshard.store import FullRequest, RetryPolicy, open_store, public_options

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
KEY_ID = "AKIAEXAMPLEKEYID0001"


def _assert_secret_free(*blobs: bytes | str) -> None:
    for blob in blobs:
        raw = blob.encode() if isinstance(blob, str) else blob
        assert SECRET.encode() not in raw
        assert KEY_ID.encode() not in raw


@pytest.fixture
def s3_store_with_secret(s3_bucket, s3_endpoint):
    store = open_store(f"{s3_bucket}/vol.zarr",
                       {"endpoint_url": s3_endpoint, "key": KEY_ID, "secret": SECRET})
    store.write("zarr.json", b"{}")  # moto accepts any credentials: they are really used
    return store


def test_an_s3_store_opened_with_a_secret_pickles_without_it(s3_store_with_secret, s3_endpoint):
    store = s3_store_with_secret

    _assert_secret_free(repr(store), str(store), pickle.dumps(store), cloudpickle.dumps(store))
    clone = pickle.loads(pickle.dumps(store))
    assert clone.options == {"endpoint_url": s3_endpoint}  # the address survives, not the keys
    # the receiving process resolves credentials itself (here: the environment's)
    assert clone.read_many([FullRequest("zarr.json")])[0].data == b"{}"


def test_a_pickled_store_picks_up_configured_credentials_in_the_worker(s3_bucket, s3_endpoint,
                                                                      monkeypatch):
    monkeypatch.setenv("NAPARI_ZSHARD_STORAGE_OPTIONS", json.dumps({
        f"{s3_bucket}/": {"endpoint_url": s3_endpoint, "key": KEY_ID, "secret": SECRET},
    }))
    store = open_store(f"{s3_bucket}/vol.zarr")
    assert store.options["secret"] == SECRET

    payload = cloudpickle.dumps(store)

    _assert_secret_free(payload)
    assert pickle.loads(payload).options["secret"] == SECRET  # re-read from this environment


def test_nested_and_provider_specific_secrets_are_left_out(s3_endpoint):
    options = {
        "endpoint_url": s3_endpoint, "anon": False, "profile": "lab",
        "client_kwargs": {"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET,
                          "aws_session_token": SECRET, "region_name": "us-east-1"},
        "token": SECRET, "password": SECRET, "account_key": SECRET, "private_key": SECRET,
        "headers": {"Authorization": f"Bearer {SECRET}"}, "connection_string": SECRET,
    }

    public = public_options(options)

    assert public == {"endpoint_url": s3_endpoint, "anon": False, "profile": "lab",
                      "client_kwargs": {"region_name": "us-east-1"}}


def test_errors_and_logs_of_a_failing_read_do_not_contain_the_secret(s3_bucket, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"{s3_bucket}/vol.zarr", {"endpoint_url": f"http://127.0.0.1:{port}",
                                                 "key": KEY_ID, "secret": SECRET})
    store.retry = RetryPolicy(tries=2, base_delay=0.01, timeout=2)

    with caplog.at_level(logging.DEBUG, logger="napari_zshard"), \
            pytest.raises(RemoteReadError) as error:
        store.read_many([FullRequest("zarr.json")])

    assert caplog.records  # the retry was logged ...
    _assert_secret_free(str(error.value), repr(error.value), caplog.text)  # ... without secrets


def test_a_password_in_an_http_url_never_shows_in_the_store_address(tmp_path, http_server):
    (tmp_path / "vol.zarr").mkdir()
    (tmp_path / "vol.zarr" / "zarr.json").write_bytes(b"{}")
    host = http_server.url.removeprefix("http://")

    store = open_store(f"http://reader:{SECRET}@{host}/vol.zarr")

    assert store.url == f"{http_server.url}/vol.zarr"
    token = base64.b64encode(f"reader:{SECRET}".encode()).decode()
    assert store.options["headers"] == {"Authorization": f"Basic {token}"}  # sent, in-process
    assert store.read("zarr.json") == b"{}"
    _assert_secret_free(store.url, repr(store), pickle.dumps(store), cloudpickle.dumps(store))
