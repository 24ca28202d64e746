"""Percent-encoded traversal: a key from metadata is checked as written *and* as any later step
decodes it (a ``file://`` URL, an HTTP server, yarl), so ``%2e%2e%2f`` never escapes a store —
locally, over HTTP, nor in what ``zshard convert`` writes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import napari_zshard as nz
from napari_zshard.cli import main
from napari_zshard.errors import UnsafeKeyError
from napari_zshard.sample import write_image_pyramid
from napari_zshard.store import open_store, validate_key, validate_name


@pytest.mark.parametrize("key", ["%2e%2e/outside.zarr", "a/%2E%2E/b", "%252e%252e/x",
                                 "%2fetc/passwd", "a%00b", "%5c..%5cx", "a/%2e/b"])
def test_a_key_that_decodes_into_traversal_is_refused(key):
    with pytest.raises(UnsafeKeyError, match="percent-decoded"):
        validate_key(key)


def test_a_name_that_decodes_into_a_slash_is_refused():
    with pytest.raises(UnsafeKeyError):
        validate_name("%2e%2e%2f%2e%2e%2fESCAPED.zarr", what="label name")
    with pytest.raises(UnsafeKeyError):
        validate_name("cells%2fother")
    assert validate_key("100%25 done/a b") == "100%25 done/a b"  # decodes to nothing unsafe


def test_child_stores_never_decode_their_way_out(tmp_path):
    store = open_store(tmp_path / "img.zarr")
    with pytest.raises(UnsafeKeyError):
        store.child("%2e%2e/outside.zarr")
    # a folder whose name has a literal '%' stays that folder (no decoding on the way)
    child = store.child("a%20b")
    assert child.root == tmp_path / "img.zarr" / "a%20b"


def image_with_dataset_path(root, path: str):
    """img.zarr whose level 0 is named ``path`` in the metadata; outside.zarr (full of 7s)
    next to it, where ``%2e%2e/outside.zarr`` leads once decoded."""
    write_image_pyramid(open_store(root / "img.zarr"), [np.zeros((4, 8, 8), np.uint8)],
                        name="img", chunks=(4, 8, 8), shards=(4, 8, 8))
    write_image_pyramid(open_store(root / "donor.zarr"),
                        [np.full((4, 8, 8), 7, np.uint8)], name="x", chunks=(4, 8, 8),
                        shards=(4, 8, 8))
    shutil.copytree(root / "donor.zarr" / "0", root / "outside.zarr")
    meta_path = root / "img.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"] = path
    meta_path.write_text(json.dumps(meta))


def test_an_encoded_dataset_path_does_not_open_the_array_next_to_the_image(tmp_path):
    image_with_dataset_path(tmp_path, "%2e%2e/outside.zarr")
    with pytest.raises(UnsafeKeyError, match="dataset path"):
        nz.open_image(tmp_path / "img.zarr")


def test_an_encoded_dataset_path_requests_nothing_outside_over_http(http_server, tmp_path):
    image_with_dataset_path(tmp_path, "%2e%2e/outside.zarr")
    with pytest.raises(UnsafeKeyError):
        nz.open_image(f"{http_server.url}/img.zarr")
    assert http_server.count("outside") == 0
    assert http_server.count() >= 1  # (it did read the image's metadata)


def test_convert_never_writes_outside_its_destination(tmp_path, capsys):
    """A label name that decodes to ``../../ESCAPED.zarr``: the label is refused by name; no
    ESCAPED.zarr appears anywhere."""
    src = tmp_path / "src" / "img.zarr"
    write_image_pyramid(open_store(src), [np.zeros((4, 8, 8), np.uint8)], name="img",
                        chunks=(4, 8, 8), shards=(4, 8, 8))
    evil = "%2e%2e%2f%2e%2e%2fESCAPED.zarr"
    labels = open_store(src / "labels")
    labels.write("zarr.json", json.dumps({
        "zarr_format": 3, "node_type": "group",
        "attributes": {"ome": {"version": "0.5", "labels": [evil]}}}).encode())
    # what the name decodes to, seen from src/labels: the label data sits there
    write_image_pyramid(open_store(tmp_path / "ESCAPED.zarr"),
                        [np.ones((4, 8, 8), np.uint8)], name="evil", chunks=(4, 8, 8),
                        shards=(4, 8, 8))
    shutil.move(tmp_path / "ESCAPED.zarr", tmp_path / "src" / "ESCAPED.zarr")
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}

    dst = tmp_path / "out" / "dst.zarr"
    code = main(["convert", str(src), str(dst), "-q"])
    _, err = capsys.readouterr()
    created = [p for p in tmp_path.rglob("*") if p.relative_to(tmp_path) not in before]
    assert [p for p in created if not (p == dst.parent or dst in (p, *p.parents))] == []
    assert code == 2 and "label name" in err and "ESCAPED" in err  # refused, by name
