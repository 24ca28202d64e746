"""EditableRegion (what napari paints into), checkout, and bad input to both."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from napari_zshard import annotations as ann
from napari_zshard.annotations.region import EditableRegion
from napari_zshard.errors import (
    LabelValueError,
    ReadOnlyStoreError,
    UnsupportedLabelImageError,
)
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, write_image

SHAPE = (32, 128, 128)


def make_image(path, *, shards=(32, 64, 64), levels=3) -> str:
    url = str(path / "img.zarr")
    img = np.random.default_rng(0).integers(0, 255, SHAPE, dtype=np.uint8)
    for _ in write_image(url, img, ImageSpec(name="img"),
                         options=WriteOptions(chunks=(16, 16, 16), shards=shards,
                                              levels=levels)):
        pass
    return url


def region_of(shape=(20, 40, 50), origin=(3, 10, 20)) -> EditableRegion:
    return EditableRegion(np.zeros(shape, np.uint32), origin=origin, chunk_shape=(16, 16, 16))


def test_napari_facing_attributes_and_read_only_plane_view():
    r = region_of()
    assert (r.ndim, r.shape, r.dtype, r.size, r.nbytes, len(r)) == (
        3, (20, 40, 50), np.uint32, 20 * 40 * 50, 20 * 40 * 50 * 4, 20)
    plane = r[0]
    assert plane.shape == (40, 50)
    assert not plane.flags.writeable  # a write must go through __setitem__
    r[0, 1, 2] = 7
    assert plane[1, 2] == 7  # a view, not a copy: napari reads data[0] on every stroke
    assert np.asarray(r)[0, 1, 2] == 7
    assert r.dirty_chunks() == {(0, 0, 1)}
    # napari 0.9 paints into what it reads with any other key, then writes it back
    part = r[0:2, 0:4, 0:4]
    part[1, 1, 1] = 5
    assert r[1, 1, 1] == 0 and r.dirty_chunks() == {(0, 0, 1)}
    r[0:2, 0:4, 0:4] = part
    assert r[1, 1, 1] == 5


@pytest.mark.parametrize(("key", "expected"), [
    ((slice(0, 2), slice(0, 2), slice(0, 2)), {(0, 0, 1)}),
    ((19, 39, 49), {(1, 3, 4)}),
    ((np.array([0, 19]), np.array([0, 39]), np.array([0, 49])), {(0, 0, 1), (1, 3, 4)}),
    ((Ellipsis, 0), {(0, 0, 1), (0, 1, 1), (0, 2, 1), (0, 3, 1),
                     (1, 0, 1), (1, 1, 1), (1, 2, 1), (1, 3, 1)}),
])
def test_dirty_chunks_in_global_chunk_coordinates(key, expected):
    r = region_of()
    r[key] = 3
    assert r.dirty_chunks() == expected
    assert (np.asarray(r) == 3).sum() > 0


def test_boolean_mask_and_fancy_get_set():
    r = region_of()
    mask = np.zeros(r.shape, bool)
    mask[5, 30, 40] = mask[6, 31, 41] = True
    r[mask] = 9
    assert r.dirty_chunks() == {(0, 2, 3)}
    assert list(r[mask]) == [9, 9]
    assert r[np.array([5, 6]), np.array([30, 31]), np.array([40, 41])].tolist() == [9, 9]


def test_values_that_do_not_fit_the_dtype_are_refused():
    r = EditableRegion(np.zeros((4, 4, 4), np.uint8), origin=(0, 0, 0),
                       chunk_shape=(4, 4, 4))
    with pytest.raises(LabelValueError, match="256"):
        r[0, 0, 0] = 256
    with pytest.raises(LabelValueError):
        r[0] = -1
    with pytest.raises(LabelValueError, match="whole numbers"):
        r[0] = 1.5
    assert not np.asarray(r).any() and not r.dirty_chunks()


def test_snapshot_is_consistent_while_painting_goes_on():
    r = region_of()
    stop = threading.Event()

    def paint():
        v = 1
        while not stop.is_set():
            r[:, :, :] = v  # whole-region writes: a torn snapshot would mix two values
            v = v % 200 + 1

    t = threading.Thread(target=paint)
    t.start()
    try:
        for _ in range(50):
            _, snap = r.snapshot()
            values = np.concatenate([a.ravel() for a in snap.values()])
            assert len(np.unique(values)) == 1
    finally:
        stop.set()
        t.join()


def test_checkout_create_aligns_with_the_image(tmp_path):
    url = make_image(tmp_path)
    edit = ann.checkout(url, labels="cells", create=True, annotator="alice",
                        region=(slice(4, 20), slice(10, 60), slice(30, 100)))
    assert edit.data.shape == (16, 50, 70) and edit.data.dtype == np.uint32
    assert edit.translate == (4.0, 10.0, 30.0) and edit.scale == (1.0, 1.0, 1.0)
    assert ann.label_images(url) == ["cells"]
    import zarr

    group = zarr.open_group(url, mode="r")
    labels = group["labels/cells"]
    for path in ("0", "1", "2"):
        assert labels[path].shape == group[path].shape
        assert labels[path].chunks == group[path].chunks
        assert labels[path].shards == group[path].shards
    from ome_zarr_models.v05 import Image, ImageLabel, Labels

    ImageLabel.from_zarr(labels)
    Labels.from_zarr(group["labels"])
    Image.from_zarr(group)
    edit.data[0, 0, 0] = 3
    edit.commit()  # our own objects (labels/cells/zshard/...) next to the levels
    import yaozarrs

    for where in ("", "/labels", "/labels/cells"):
        yaozarrs.validate_zarr_store(url + where)
    ImageLabel.from_zarr(zarr.open_group(url, mode="r")["labels/cells"])
    assert zarr.open_group(url, mode="r")["labels/cells/0"][4, 10, 30] == 3


def test_region_outside_the_volume_or_too_big(tmp_path):
    url = make_image(tmp_path)
    with pytest.raises(ValueError, match="outside the volume"):
        ann.checkout(url, labels="cells", create=True, annotator="a",
                     region=(slice(0, 40), slice(0, 10), slice(0, 10)))
    with pytest.raises(ValueError, match="outside the volume"):
        ann.checkout(url, labels="cells", create=True, annotator="a",
                     region=(slice(-5, 4), slice(0, 10), slice(0, 10)))
    with pytest.raises(ValueError, match="max_voxels"):
        ann.checkout(url, labels="cells", create=True, annotator="a", max_voxels=1000)


def test_missing_label_image_without_create(tmp_path):
    url = make_image(tmp_path)
    with pytest.raises(ValueError, match="create=True"):
        ann.checkout(url, labels="nuclei", annotator="a")


def test_http_and_gcs_stores_are_refused_before_painting(http_server, tmp_path):
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        ann.checkout(http_server.url + "/img.zarr", labels="cells", annotator="a")
    with pytest.raises(ReadOnlyStoreError, match="GCS"):
        ann.checkout("gs://bucket/img.zarr", labels="cells", annotator="a")


def _checkout_as_nobody(url: str, conn) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        ann.checkout(url, labels="cells", annotator="a", region=(slice(0, 1),) * 3)
        conn.send("no error")
    except Exception as e:
        conn.send(f"{type(e).__name__}: {e}")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                    reason="needs root to become another user (a read-only folder for root "
                           "is not read-only)")
def test_read_only_folder_is_refused_before_painting(tmp_path, monkeypatch):
    import shutil
    import tempfile

    public = tempfile.mkdtemp(prefix="zshard-ro-")  # pytest's folders are root-only
    try:
        _read_only_check(tmp_path, public, monkeypatch)
    finally:
        shutil.rmtree(public)


def _read_only_check(tmp_path, public, monkeypatch) -> None:
    import multiprocessing
    from pathlib import Path

    url = make_image(Path(public))
    ann.checkout(url, labels="cells", create=True, annotator="a", region=(slice(0, 1),) * 3)
    os.chmod(public, 0o755)
    monkeypatch.setenv("NAPARI_ZSHARD_CONFIG", os.path.join(public, "none.toml"))
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    proc = multiprocessing.get_context("fork").Process(target=_checkout_as_nobody,
                                                      args=(url, theirs))
    proc.start()
    proc.join(60)
    message = ours.recv()
    assert message.startswith("ReadOnlyStoreError") and "not writable" in message


def test_zarr_v2_image_is_refused_naming_convert(tmp_path):
    import zarr

    url = str(tmp_path / "v2.zarr")
    root = zarr.open_group(url, mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{"version": "0.4", "axes": ["z", "y", "x"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]
    root.create_array("0", shape=(8, 8, 8), dtype="uint8", chunks=(4, 4, 4))
    with pytest.raises(UnsupportedLabelImageError, match="zshard convert"):
        ann.checkout(url, labels="cells", create=True, annotator="a")


def test_unsharded_label_image_is_refused_naming_convert(tmp_path):
    import zarr

    url = make_image(tmp_path)
    root = zarr.open_group(url, mode="a")
    ms = {"axes": [{"name": n, "type": "space"} for n in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}
    root.create_group("labels", attributes={"ome": {"version": "0.5", "labels": ["old"]}})
    old = root.create_group("labels/old", attributes={"ome": {
        "version": "0.5", "multiscales": [ms], "image-label": {"version": "0.5"}}})
    old.create_array("0", shape=SHAPE, dtype="uint32", chunks=(16, 16, 16))
    with pytest.raises(UnsupportedLabelImageError, match="zshard convert"):
        ann.checkout(url, labels="old", annotator="a")


@pytest.mark.parametrize("name", ["a/b", "..", "%2e%2e", "x\x00y", "A" * 200, "Alice",
                                  "alice", "C:evil", "  ", "CON"])
def test_annotator_slugs_are_safe(name):
    if not name.strip():
        with pytest.raises(ValueError):
            ann.annotator_slug(name)
        return
    slug = ann.annotator_slug(name)
    assert slug == ann.annotator_slug(name)
    assert len(slug) <= 40
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    assert slug not in (".", "..") and "/" not in slug


def test_annotator_slugs_are_injective():
    names = ["Alice", "alice", "ALICE", "a/b", "a_b", "a-b", "..", "%2e%2e", "x\x00y", "xy",
             "A" * 200, "A" * 199]
    slugs = {ann.annotator_slug(n) for n in names}
    assert len(slugs) == len(names)
    with pytest.raises(ValueError, match="at most"):
        ann.annotator_slug("x" * 10_000)
