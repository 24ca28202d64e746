"""Reading and writing S3 through s3fs, against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import pickle
import socket
import time

import pytest

from napari_zshard.errors import RemoteReadError, ShortReadError
from napari_zshard.store import FullRequest, RangeRequest, RetryPolicy, SuffixRequest, open_store
from napari_zshard.store.local import LocalStore
from napari_zshard.store.s3 import S3Store

PAYLOAD = bytes(range(256)) * 16  # 4 KiB


@pytest.fixture
def s3_store(s3_bucket, s3_options):
    """A store under a prefix of a fresh bucket, holding one 4 KiB shard."""
    store = open_store(f"{s3_bucket}/vol.zarr", s3_options)
    store.write("c/0", PAYLOAD)
    return store


def test_an_s3_url_opens_an_s3_store_on_the_bucket_and_prefix(s3_bucket, s3_options):
    store = open_store(f"{s3_bucket}/data/vol.zarr/", s3_options)

    assert isinstance(store, S3Store)
    assert store.url == f"{s3_bucket}/data/vol.zarr"
    assert (store.bucket, store.prefix) == (s3_bucket.removeprefix("s3://"), "data/vol.zarr")


def test_ranged_suffix_and_full_reads_return_the_bytes_and_the_object_size(s3_store):
    ranged, suffix, full = s3_store.read_many([
        RangeRequest("c/0", 1000, 100), SuffixRequest("c/0", 64), FullRequest("c/0"),
    ])

    assert ranged.data == PAYLOAD[1000:1100]
    assert suffix.data == PAYLOAD[-64:]
    assert full.data == PAYLOAD
    assert ranged.object_size == suffix.object_size == full.object_size == len(PAYLOAD)
    assert ranged.etag and ranged.etag == full.etag
    assert s3_store.stats.snapshot()["requests"] == 3


def test_a_write_is_read_back_and_replaces_the_old_object(s3_store):
    s3_store.write("zarr.json", b'{"zarr_format": 3}')
    first = s3_store.read_many([FullRequest("zarr.json")])[0]

    s3_store.write("zarr.json", b'{"zarr_format": 3, "node_type": "array"}')
    second = s3_store.read_many([FullRequest("zarr.json")])[0]

    assert first.data == b'{"zarr_format": 3}'
    assert second.data == b'{"zarr_format": 3, "node_type": "array"}'
    assert first.etag != second.etag


def test_a_suffix_longer_than_the_object_returns_the_whole_object(s3_store):
    (result,) = s3_store.read_many([SuffixRequest("c/0", 10 * len(PAYLOAD))])

    assert result.data == PAYLOAD
    assert result.object_size == len(PAYLOAD)


def test_the_last_bytes_of_an_empty_object_are_empty_as_on_disk(s3_store):
    s3_store.write("c/1", b"")

    (result,) = s3_store.read_many([SuffixRequest("c/1", 16)])

    assert result.data == b"" and result.object_size == 0


def test_a_missing_key_reads_as_none(s3_store):
    results = s3_store.read_many([FullRequest("zarr.json"), RangeRequest("c/9", 0, 10),
                                  SuffixRequest("c/9", 10)])

    assert [r.data for r in results] == [None, None, None]


def test_a_range_past_the_end_of_an_object_is_a_short_read(s3_store):
    with pytest.raises(ShortReadError) as partly_past:
        s3_store.read_many([RangeRequest("c/0", len(PAYLOAD) - 10, 20)])
    with pytest.raises(ShortReadError) as wholly_past:
        s3_store.read_many([RangeRequest("c/0", len(PAYLOAD) + 5, 20)])

    assert (partly_past.value.key, partly_past.value.received) == ("c/0", 10)
    assert wholly_past.value.key == "c/0"
    assert s3_store.url in str(wholly_past.value)


def test_listing_and_deleting_objects_below_the_prefix(s3_store):
    s3_store.write("zarr.json", b"{}")

    assert sorted(s3_store.list_prefix("")) == [("c/0", len(PAYLOAD)), ("zarr.json", 2)]
    s3_store.delete("c/0")
    s3_store.delete("c/0")  # deleting what is gone is not an error
    assert s3_store.read("c/0") is None


def test_a_store_written_locally_and_uploaded_reads_back_identically(tmp_path, s3_bucket,
                                                                        s3_endpoint, s3_options,
                                                                        put_on_s3):
    local = LocalStore(tmp_path / "vol.zarr")
    local.write("zarr.json", b"{}")
    for i in range(3):
        local.write(f"c/{i}/0", bytes([i]) * (1000 + i))

    assert put_on_s3(tmp_path / "vol.zarr", f"{s3_bucket}/vol.zarr", s3_endpoint) == 4
    remote = open_store(f"{s3_bucket}/vol.zarr", s3_options)

    assert sorted(remote.list_prefix("")) == sorted(local.list_prefix(""))
    keys = [k for k, _ in local.list_prefix("")]
    assert [r.data for r in remote.read_many([FullRequest(k) for k in keys])] == [
        local.read(k) for k in keys]


def test_a_store_pickles_to_the_same_bucket_and_endpoint(s3_store):
    clone = pickle.loads(pickle.dumps(s3_store))

    assert isinstance(clone, S3Store) and clone.url == s3_store.url
    assert clone.read("c/0") == PAYLOAD


@pytest.mark.timeout(30)
def test_an_unreachable_endpoint_is_a_clear_error_within_seconds(s3_bucket):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_store(f"{s3_bucket}/vol.zarr", {"endpoint_url": f"http://127.0.0.1:{port}"})
    store.retry = RetryPolicy(tries=3, base_delay=0.01, timeout=2)

    started = time.monotonic()
    with pytest.raises(RemoteReadError) as error:
        store.read_many([SuffixRequest("c/0", 16)])

    assert time.monotonic() - started < 5
    assert f"{s3_bucket}/vol.zarr/c/0" in str(error.value)
    assert f"127.0.0.1:{port}" in str(error.value)


def test_credentials_are_resolved_once_per_root_store_not_per_child(s3_bucket, s3_options,
                                                                   tmp_path, monkeypatch):
    """Every walk through botocore's credential chain runs the profile's credential_process
    (and, elsewhere, probes instance metadata): a child store (each pyramid level, each label)
    inherits what its root resolved."""
    import sys

    calls = tmp_path / "calls"
    script = tmp_path / "creds.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"with open({str(calls)!r}, 'a') as f:\n    f.write('probe\\n')\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': 'testing', "
        "'SecretAccessKey': 'testing'}))\n")
    config = tmp_path / "aws-config"
    config.write_text(f"[default]\ncredential_process = {sys.executable} {script}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    def probes() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    root = open_store(f"{s3_bucket}/img.zarr", s3_options)
    assert probes() == 1 and not root.fs.anon
    children = [root.child(p) for p in ("0", "1", "labels/cells")]
    grandchild = children[2].child("0")
    assert probes() == 1
    assert [c.url for c in children] == [f"{s3_bucket}/img.zarr/{p}"
                                         for p in ("0", "1", "labels/cells")]
    assert grandchild.url == f"{s3_bucket}/img.zarr/labels/cells/0"
    assert not any(c.fs.anon for c in (*children, grandchild))
    grandchild.write("c/0", PAYLOAD)  # signed with the resolved credentials
    assert root.read("labels/cells/0/c/0") == PAYLOAD
