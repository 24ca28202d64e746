"""A password or a presigned-URL token in a URL never reaches the screen, a log record or an
exception message: not through the napari reader, the ``zshard`` CLI, nor the library."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

import napari_zshard as nz
from napari_zshard.cli import main
from napari_zshard.errors import UnsupportedURLError
from napari_zshard.sample import write_image_pyramid
from napari_zshard.store import open_store, redact_url

CANARY = "Canary-Pw-5e1f9"
SIGNATURE = "CanarySig0a9b8c7"


def with_password(url: str) -> str:
    return url.replace("http://", f"http://alice:{CANARY}@")


@pytest.fixture
def broken_image(http_server, tmp_path):
    """An OME-Zarr image served over HTTP whose level 0 is missing: it sniffs as Zarr, so the
    reader claims it, and opening it fails."""
    path = tmp_path / "img.zarr"
    write_image_pyramid(open_store(path), [np.zeros((8, 16, 16), np.uint8)], name="img",
                        chunks=(8, 16, 16), shards=(8, 16, 16))
    shutil.rmtree(path / "0")
    return with_password(f"{http_server.url}/img.zarr")


def test_redact_url_strips_userinfo_query_and_fragment():
    assert redact_url(f"https://u:{CANARY}@host:8443/a/b.zarr") == \
        "https://<redacted>@host:8443/a/b.zarr"
    signed = (f"https://bucket.s3.amazonaws.com/x.zarr?X-Amz-Credential=AKIA%2F1&"
              f"X-Amz-Signature={SIGNATURE}#frag")
    assert redact_url(signed) == "https://bucket.s3.amazonaws.com/x.zarr?<redacted>"
    assert redact_url("/data/x.zarr") == "/data/x.zarr"
    assert redact_url("http://u:pa/ss@host/x.zarr") == "http://<redacted>@host/x.zarr"
    assert redact_url("http://host:8080/u@x/a.zarr") == "http://host:8080/u@x/a.zarr"
    assert redact_url("http://[::1/x.zarr") == "http://[::1/x.zarr"  # never raises


def test_the_napari_reader_error_and_its_log_hide_the_password(broken_image, caplog,
                                                               monkeypatch):
    pytest.importorskip("napari")
    from napari_zshard.plugin.reader import get_reader

    shown: list[str] = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    with caplog.at_level(logging.DEBUG):
        reader = get_reader(broken_image)
        assert reader is not None
        assert reader(broken_image) == [(None,)]  # napari's "no layers" value: no error of
        # its own, which would quote the URL as typed
    assert len(shown) == 1 and "img.zarr" in shown[0]
    assert CANARY not in shown[0]
    assert "img.zarr" in caplog.text
    assert CANARY not in caplog.text


def test_library_errors_and_logs_hide_the_password(http_server, broken_image, caplog):
    missing = with_password(f"{http_server.url}/missing.zarr")
    with caplog.at_level(logging.DEBUG):
        for url in (missing, broken_image):
            with pytest.raises(Exception) as error:
                nz.open_image(url)
            assert CANARY not in str(error.value) and CANARY not in repr(error.value)
        store = open_store(broken_image)
        assert CANARY not in store.url and CANARY not in repr(store)
    assert CANARY not in caplog.text


@pytest.mark.parametrize("url", [
    f"https://example.org/x.zarr?X-Amz-Signature={SIGNATURE}",
    f"https://example.org/x.zarr?sig={SIGNATURE}&se=2030",
    f"s3://AKIAEXAMPLE:{SIGNATURE}@bucket/x.zarr",
])
def test_a_store_url_never_carries_a_token(url):
    """A query string cannot address a store (keys go on the path), and object-store URLs
    take no userinfo: both are refused by name, never kept in Store.url or echoed."""
    with pytest.raises(UnsupportedURLError) as error:
        open_store(url)
    assert SIGNATURE not in str(error.value)
    assert "<redacted>" in str(error.value)


@pytest.mark.parametrize("command", ["info", "fsck", "convert"])
def test_cli_output_and_log_hide_the_password_and_the_signature(command, http_server,
                                                                broken_image, tmp_path,
                                                                capsys, caplog):
    urls = [broken_image, with_password(f"{http_server.url}/missing.zarr"),
            f"{http_server.url}/img.zarr?X-Amz-Signature={SIGNATURE}"]
    for url in urls:
        argv = [command, url] + ([str(tmp_path / "out.zarr"), "-q"] if command == "convert"
                                 else [])
        with caplog.at_level(logging.DEBUG):
            code = main([*argv, "-v"])
        out, err = capsys.readouterr()
        assert "127.0.0.1" in out + err  # (the URL is named, redacted)
        assert code != 0 or command == "info"  # (info describes the broken image)
        for secret in (CANARY, SIGNATURE):
            assert secret not in out and secret not in err and secret not in caplog.text


@pytest.mark.parametrize("name", ["missing.zarr", "img.zarr"])
def test_napari_opening_a_url_with_a_password_never_shows_it(name, http_server, broken_image,
                                                            npe2pm, caplog):
    """Through napari itself (npe2, ViewerModel.open): neither our notification nor napari's
    own messages (which quote the path as typed) carry the password."""
    pytest.importorskip("napari")
    from napari.components import ViewerModel
    from napari.utils.notifications import notification_manager

    url = with_password(f"{http_server.url}/{name}")
    seen: list[str] = []

    def record(notification):
        seen.append(str(notification.message))

    notification_manager.notification_ready.connect(record)
    try:
        with npe2pm.tmp_plugin(package="napari-zshard"), caplog.at_level(logging.DEBUG):
            viewer = ViewerModel()
            try:
                viewer.open(url, plugin="napari-zshard")
            except Exception as e:  # napari's own error, if any
                seen.append(f"{type(e).__name__}: {e}")
    finally:
        notification_manager.notification_ready.disconnect(record)
    assert seen and any("could not open" in text for text in seen)
    assert not any(CANARY in text for text in seen), seen
    # (npe2 itself logs the path as typed at DEBUG level: not ours to change)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("napari_zshard")]
    assert ours and not any(CANARY in text for text in ours)
    assert len(viewer.layers) == 0
