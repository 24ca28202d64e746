"""Saving images as sharded OME-Zarr 0.5, without napari: what a notebook user, the CLI and the
Save dialog all get from ``multiscale.write``.

The stores are standard (zarr-python, tensorstore, ome-zarr-models and napari-ome-zarr read
them), every voxel arrives even when the source's dask chunks cut across shards, pyramids are
built the documented way, a plane costs one request per shard, and a save that cannot finish —
refused, failing, cancelled or killed — leaves nothing that looks like a store.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_checks import assert_peers_accept, assert_peers_accept_s3

import napari_zshard as nz
from napari_zshard import EngineCache, MetadataError, StoreError
from napari_zshard.engine.create import default_layout
from napari_zshard.multiscale.downsample import downsample
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image, write_image
from napari_zshard.ome import Axis, Channel, ImageLabel

SMALL = WriteOptions(chunks=(16, 32, 32), shards=(32, 64, 64))


def volume(shape=(40, 96, 112), seed=0, dtype=np.uint16) -> np.ndarray:
    high = min(4000, np.iinfo(dtype).max)
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=dtype)


def blobs(shape=(40, 96, 112)) -> np.ndarray:
    """Label image: a few boxes with distinct values, touching each other."""
    labels = np.zeros(shape, np.uint32)
    labels[3:20, 5:50, 7:60] = 5
    labels[10:37, 40:90, 50:111] = 9
    labels[21:30, 2:30, 2:30] = 2
    labels[::7, ::5, ::3] = 11  # a sprinkle that mode-downsampling must mostly drop
    return labels


def leftovers(folder: Path, keep: set[str] = frozenset()) -> list[str]:
    """Everything in ``folder`` (hidden entries too) except ``keep``."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def levels_of(path) -> list[zarr.Array]:
    group = zarr.open_group(str(path), mode="r")
    paths = [d["path"] for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
    return [group[p] for p in paths]


def edge_blocks(data: np.ndarray, factors) -> np.ndarray:
    """Each output voxel's input block (edge-padded), flattened on the last axis."""
    pad = [(0, (-n) % f) for n, f in zip(data.shape, factors, strict=True)]
    padded = np.pad(data, pad, mode="edge")
    split = [x for n, f in zip(padded.shape, factors, strict=True) for x in (n // f, f)]
    nd = data.ndim
    moved = padded.reshape(split).transpose([*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)])
    return moved.reshape(*moved.shape[:nd], -1)


# -- the store is standard ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An image with a label image, three levels, anisotropic voxels, µm units."""
    path = tmp_path_factory.mktemp("std") / "cells.zarr"
    image, labels = volume(), blobs()
    axes = (Axis("z", "space", "micrometer"), Axis("y", "space", "micrometer"),
            Axis("x", "space", "micrometer"))
    spec = ImageSpec(name="cells", axes=axes, scale=(2.0, 0.5, 0.5), translate=(10, 0, 0),
                     contrast_limits=(100.0, 3000.0))
    label_spec = ImageSpec(name="nuclei", axes=axes, scale=(2.0, 0.5, 0.5), kind="labels",
                           image_label=ImageLabel(colors={5: (1, 0, 0, 1), 9: (0, 0, 1, 1)},
                                                  properties=[{"label-value": 5, "area": 7},
                                                              {"label-value": 9, "area": 3}]))
    options = WriteOptions(chunks=(16, 32, 32), shards=(32, 64, 64), levels=3)
    save_image(path, image, spec, labels={"nuclei": (labels, label_spec)}, options=options)
    return path, image, labels


def test_zarr_python_and_tensorstore_read_every_level_as_written(saved):
    import tensorstore as ts

    path, image, labels = saved
    for where, level0 in ((path, image), (path / "labels" / "nuclei", labels)):
        arrays = levels_of(where)
        assert len(arrays) == 3 and arrays[0].shards == (32, 64, 64)
        np.testing.assert_array_equal(arrays[0][...], level0)
        for i, arr in enumerate(arrays):
            engine = nz.open_array(Path(where) / str(i), cache=EngineCache())
            stored = ts.open({"driver": "zarr3", "kvstore": {
                "driver": "file", "path": str(Path(where) / str(i))}}).result().read().result()
            np.testing.assert_array_equal(stored, arr[...])
            np.testing.assert_array_equal(engine[...], arr[...])


def test_ome_zarr_models_accepts_the_image_and_its_labels(saved):
    from ome_zarr_models.v05 import Image, ImageLabel

    path, _, _ = saved
    assert_peers_accept(path, channels=1, labels=1)  # yaozarrs and napari-ome-zarr too
    image = Image.from_zarr(zarr.open_group(str(path), mode="r"))
    (ms,) = image.attributes.ome.multiscales
    assert [a.name for a in ms.axes] == ["z", "y", "x"]
    assert [d.path for d in ms.datasets] == ["0", "1", "2"]
    nuclei = ImageLabel.from_zarr(zarr.open_group(str(path / "labels" / "nuclei"), mode="r"))
    colors = nuclei.attributes.ome.image_label.colors
    assert {c.label_value: tuple(c.rgba) for c in colors} == {5: (255, 0, 0, 255),
                                                              9: (0, 0, 255, 255)}


def test_napari_ome_zarr_opens_it_with_its_labels(saved):
    pytest.importorskip("napari")
    path, image, labels = saved
    peer = assert_peers_accept(path, channels=1, labels=1)
    ((img_data, img_meta),), ((lab_data, lab_meta),) = peer.images, peer.labels
    assert len(img_data) == 3
    np.testing.assert_array_equal(np.asarray(img_data[0]), image)
    np.testing.assert_array_equal(np.asarray(lab_data[0]), labels)
    np.testing.assert_allclose(img_meta["scale"], [2.0, 0.5, 0.5])
    assert img_meta["contrast_limits"] == [100.0, 3000.0]
    assert lab_meta["properties"] == {"area": [7, 3], "index": [5, 9]}
    np.testing.assert_allclose(lab_meta["colormap"][5], [1, 0, 0, 1])


# -- omero: complete channels, whatever the caller gave -------------------------------------
CZYX = (Axis("c", "channel"), Axis("z", "space"), Axis("y", "space"), Axis("x", "space"))


@pytest.mark.parametrize(("data", "spec", "expected"), [
    pytest.param(volume((8, 32, 32)), ImageSpec(name="cl", contrast_limits=(100.0, 3000.0)),
                 [("cl", "FFFFFF", 100.0, 3000.0, 0.0, 65535.0)], id="contrast-limits"),
    pytest.param(volume((8, 32, 32)), ImageSpec(name="m", channels=[
        Channel(label="GFP", color="#0f0", window=(10.0, 20.0))]),
        [("GFP", "00FF00", 10.0, 20.0, 0.0, 65535.0)], id="colormap"),
    pytest.param(volume((3, 8, 32, 32)), ImageSpec(name="rgb", axes=CZYX, channels=[
        Channel("DAPI", "0000FF", (0.0, 900.0)), Channel("GFP", "00FF00", (5.0, 800.0)),
        Channel("RFP", "FF0000")], contrast_limits=(0.0, 1000.0)),
        [("DAPI", "0000FF", 0.0, 900.0, 0.0, 65535.0), ("GFP", "00FF00", 5.0, 800.0, 0.0,
                                                         65535.0),
         ("RFP", "FF0000", 0.0, 1000.0, 0.0, 65535.0)], id="3-channels"),
    pytest.param(volume((3, 8, 32, 32)), ImageSpec(name="one", axes=CZYX,
                                                    contrast_limits=(1.0, 2.0)),
                 [(f"one c{i}", "FFFFFF", 1.0, 2.0, 0.0, 65535.0) for i in range(3)],
                 id="3-channels-one-window"),
    pytest.param(  # 2x2x2 blocks of one value: the coarsest level has the full range
        np.linspace(-2, 5, 4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
        .repeat(2, 0).repeat(2, 1).repeat(2, 2),
                 ImageSpec(name="f", channels=[Channel(label="flux", color="FF00FF")]),
                 [("flux", "FF00FF", -2.0, 5.0, -2.0, 5.0)], id="float-without-window"),
])
def test_every_omero_channel_is_complete(tmp_path, data, spec, expected):
    path = tmp_path / "x.zarr"
    save_image(path, data, spec, options=WriteOptions(levels=2))
    peer = assert_peers_accept(path, channels=len(expected))
    channels = zarr.open_group(str(path), mode="r").attrs["ome"]["omero"]["channels"]
    assert [(c["label"], c["color"], c["window"]["start"], c["window"]["end"],
             c["window"]["min"], c["window"]["max"], c["active"]) for c in channels] == \
        [(*e, True) for e in expected]
    ((_, meta),) = peer.images  # napari-ome-zarr shows each channel's window
    windows = [[e[2], e[3]] for e in expected]
    assert meta["contrast_limits"] == (windows if len(expected) > 1 else windows[0])


def test_a_channel_list_that_does_not_match_the_channel_axis_is_refused(tmp_path):
    spec = ImageSpec(axes=CZYX, channels=[Channel("a"), Channel("b")])
    with pytest.raises(MetadataError, match="2 omero channels for an image with 3 channels"):
        save_image(tmp_path / "x.zarr", volume((3, 8, 32, 32)), spec)
    assert leftovers(tmp_path) == []


def test_metadata_says_where_each_level_sits(saved):
    path, _, _ = saved
    ms = zarr.open_group(str(path), mode="r").attrs["ome"]["multiscales"][0]
    transforms = [d["coordinateTransformations"] for d in ms["datasets"]]
    assert transforms[0] == [{"type": "scale", "scale": [2.0, 0.5, 0.5]},
                             {"type": "translation", "translation": [10.0, 0.0, 0.0]}]
    # level 1 halves y/x only (4 µm z vs 0.5 µm xy): its voxel centres move by half a voxel
    assert transforms[1][0]["scale"] == [2.0, 1.0, 1.0]
    assert transforms[1][1]["translation"] == [10.0, 0.25, 0.25]


# -- every voxel arrives; pyramids are built as documented ---------------------------------
def test_dask_chunks_unaligned_with_shards_lose_nothing(tmp_path):
    # dask.array.to_zarr loses data when dask chunks cut across shards; this writer does not.
    data = volume((100, 200, 180), seed=3)
    lazy = da.from_array(data, chunks=(37, 100, 77))
    save_image(tmp_path / "x.zarr", lazy, options=WriteOptions(
        chunks=(32, 64, 64), shards=(64, 128, 128), levels=2))
    level0, level1 = levels_of(tmp_path / "x.zarr")
    assert level0.shards == (64, 128, 128)
    np.testing.assert_array_equal(level0[...], data)
    np.testing.assert_array_equal(level1[...], downsample(data, (2, 2, 2), "mean"))
    assert_peers_accept(tmp_path / "x.zarr")


def test_label_pyramids_only_hold_values_of_their_own_block(tmp_path):
    labels = blobs((37, 90, 101))  # odd sizes: edge blocks are partial
    save_image(tmp_path / "seg.zarr", labels, ImageSpec(kind="labels"),
               options=WriteOptions(chunks=(8, 32, 32), shards=(16, 64, 64), levels=3))
    levels = [a[...] for a in levels_of(tmp_path / "seg.zarr")]
    assert [lv.shape for lv in levels] == [(37, 90, 101), (19, 45, 51), (10, 23, 26)]
    for fine, coarse in itertools.pairwise(levels):
        in_block = (edge_blocks(fine, (2, 2, 2)) == coarse[..., None]).any(axis=-1)
        assert in_block.all()
        np.testing.assert_array_equal(coarse, downsample(fine, (2, 2, 2), "mode"))
    assert set(np.unique(levels[-1])) <= set(np.unique(labels))
    assert_peers_accept(tmp_path / "seg.zarr", labels=1)


def test_anisotropic_volumes_are_halved_along_y_x_until_voxels_are_about_cubic(tmp_path):
    data = volume((16, 256, 256), seed=4, dtype=np.uint8)
    save_image(tmp_path / "aniso.zarr", data, ImageSpec(scale=(4.0, 0.5, 0.5)),
               options=WriteOptions(levels=5))
    levels = levels_of(tmp_path / "aniso.zarr")
    assert [a.shape for a in levels] == [(16, 256, 256), (16, 128, 128), (16, 64, 64),
                                         (16, 32, 32), (8, 16, 16)]
    ms = zarr.open_group(str(tmp_path / "aniso.zarr")).attrs["ome"]["multiscales"][0]
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[4, .5, .5], [4, 1, 1], [4, 2, 2], [4, 4, 4], [8, 8, 8]]
    np.testing.assert_array_equal(levels[1][...], downsample(data, (1, 2, 2), "mean"))
    assert_peers_accept(tmp_path / "aniso.zarr")


def test_without_levels_the_pyramid_stops_at_a_level_napari_renders_in_3d(tmp_path):
    data = da.zeros((24, 600, 520), dtype=np.uint16, chunks=(24, 300, 260)) + 7
    save_image(tmp_path / "big.zarr", data, ImageSpec(scale=(4.0, 0.5, 0.5)))
    shapes = [a.shape for a in levels_of(tmp_path / "big.zarr")]
    assert shapes == [(24, 600, 520), (24, 300, 260), (24, 150, 130)]  # z is never halved
    assert max(shapes[-1]) <= 256
    assert_peers_accept(tmp_path / "big.zarr")


def test_a_time_series_pyramid_never_halves_time(tmp_path):
    data = volume((3, 20, 64, 64), seed=5)
    save_image(tmp_path / "t.zarr", data, options=WriteOptions(levels=2))
    group = zarr.open_group(str(tmp_path / "t.zarr"))
    axes = group.attrs["ome"]["multiscales"][0]["axes"]
    assert [(a["name"], a["type"]) for a in axes] == [("t", "time"), ("z", "space"),
                                                      ("y", "space"), ("x", "space")]
    assert [a.shape for a in levels_of(tmp_path / "t.zarr")] == [(3, 20, 64, 64),
                                                                  (3, 10, 32, 32)]
    np.testing.assert_array_equal(group["1"][...], downsample(data, (1, 2, 2, 2), "mean"))
    assert_peers_accept(tmp_path / "t.zarr")


def test_given_levels_are_written_as_they_are(tmp_path):
    pyramid = [volume((32, 64, 64), seed=6), volume((16, 32, 32), seed=7),
               volume((8, 16, 16), seed=8)]
    save_image(tmp_path / "given.zarr", pyramid, options=SMALL)
    for arr, level in zip(levels_of(tmp_path / "given.zarr"), pyramid, strict=True):
        np.testing.assert_array_equal(arr[...], level)
    assert_peers_accept(tmp_path / "given.zarr")


# -- layout: C order inside shards, one request per shard for a plane -----------------------
def shard_index(path: Path, n_chunks: int) -> np.ndarray:
    raw = path.read_bytes()
    return np.frombuffer(raw[-(16 * n_chunks + 4):-4], "<u8").reshape(n_chunks, 2)


@pytest.mark.parametrize(("level", "checksum"), [(3, False), (0, False), (1, True), (-5, False)])
def test_zstd_chunks_are_numcodecs_frames_whichever_library_compresses(level, checksum,
                                                                       monkeypatch):
    import threading

    import numcodecs.zstd

    import napari_zshard.engine.codecs as codecs

    chunk = volume((16, 32, 32))
    codec = codecs.ZstdCodec(level=level, checksum=checksum)
    kept = codec.encode(memoryview(chunk).cast("B"))  # a context kept per thread (zstandard)
    assert kept == numcodecs.zstd.compress(chunk, level, checksum)
    assert numcodecs.zstd.decompress(kept) == chunk.tobytes()
    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(
        (codec.encode(chunk), codecs._zstd_compressor(level, checksum))))
    thread.start()
    thread.join()
    assert elsewhere[0][0] == kept  # the same frame from another thread's own context
    assert elsewhere[0][1] is not codecs._zstd_compressor(level, checksum)
    monkeypatch.setattr(codecs, "_zstd_compressor", lambda level, checksum: None)
    assert codec.encode(chunk) == kept  # without zstandard, numcodecs makes the same frame


def test_inner_chunks_are_in_c_order_so_a_plane_costs_one_request_per_shard(
        tmp_path, http_server):
    data = volume((64, 128, 128), seed=9)
    save_image(tmp_path / "vol.zarr", data, options=WriteOptions(
        chunks=(8, 32, 32), shards=(32, 64, 64), levels=1))
    entries = shard_index(tmp_path / "vol.zarr" / "0" / "c" / "1" / "0" / "1", 4 * 2 * 2)
    assert (np.diff(entries[:, 0].astype(np.int64)) > 0).all()  # offsets follow C order
    assert (entries[1:, 0] == entries[:-1, 0] + entries[:-1, 1]).all()  # back to back
    assert_peers_accept(tmp_path / "vol.zarr")

    arr = nz.open_array(f"{http_server.url}/vol.zarr/0", cache=EngineCache())
    http_server.reset_log()
    np.testing.assert_array_equal(arr[40], data[40])
    shards_per_plane = 2 * 2
    assert arr.counters["index_requests"] == shards_per_plane
    assert arr.counters["data_requests"] == shards_per_plane
    assert http_server.count("/c/") == 2 * shards_per_plane


# -- defaults -------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "dtype"), [
    ((256, 1024, 1024), np.uint16), ((2000, 4000, 4000), np.uint8),
    ((512, 2048, 2048), np.float32), ((10, 200, 1024, 1024), np.uint16)])
def test_default_layout_is_64_cubed_chunks_in_shards_of_tens_of_megabytes(shape, dtype):
    chunks, shards = default_layout(shape, np.dtype(dtype))
    assert chunks[-3:] == (64, 64, 64) and all(c == 1 for c in chunks[:-3])
    shard_bytes = math.prod(shards) * np.dtype(dtype).itemsize
    assert 10 * 2**20 <= shard_bytes < 100 * 2**20  # below s3fs's multipart threshold
    assert all(s % c == 0 for s, c in zip(shards, chunks, strict=True))


def test_2d_data_gets_2d_chunks_and_every_default_can_be_overridden(tmp_path):
    chunks, shards = default_layout((5000, 6000), np.dtype(np.uint16))
    assert len(chunks) == 2 and chunks[0] > 1 and chunks[1] > 1
    assert math.prod(shards) * 2 < 100 * 2**20

    data = volume((300, 400), seed=10)
    save_image(tmp_path / "plain.zarr", data)
    default = levels_of(tmp_path / "plain.zarr")[0]
    assert default.chunks == default_layout(data.shape, data.dtype)[0]
    codecs = json.loads((tmp_path / "plain.zarr" / "0" / "zarr.json").read_text())["codecs"]
    inner = [c["name"] for c in codecs[0]["configuration"]["codecs"]]
    assert inner == ["bytes", "zstd", "crc32c"]

    save_image(tmp_path / "custom.zarr", data, options=WriteOptions(
        chunks=(50, 64), shards=(100, 128), compressor="blosc", level=5, checksum=False,
        levels=1))
    (custom,) = levels_of(tmp_path / "custom.zarr")
    assert (custom.chunks, custom.shards) == ((50, 64), (100, 128))
    codecs = json.loads((tmp_path / "custom.zarr" / "0" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs[0]["configuration"]["codecs"]] == ["bytes", "blosc"]
    np.testing.assert_array_equal(custom[...], data)
    assert_peers_accept(tmp_path / "plain.zarr")
    assert_peers_accept(tmp_path / "custom.zarr")


# -- bad input: a clear message, nothing half-written ---------------------------------------
def test_an_existing_store_is_kept_unless_overwrite_is_asked_for(tmp_path):
    first, second = volume((8, 32, 32), seed=1), volume((8, 32, 32), seed=2)
    save_image(tmp_path / "x.zarr", first, options=SMALL)
    with pytest.raises(StoreError, match="already exists"):
        save_image(tmp_path / "x.zarr", second, options=SMALL)
    np.testing.assert_array_equal(levels_of(tmp_path / "x.zarr")[0][...], first)

    save_image(tmp_path / "x.zarr", second, options=WriteOptions(overwrite=True))
    np.testing.assert_array_equal(levels_of(tmp_path / "x.zarr")[0][...], second)
    assert leftovers(tmp_path) == ["x.zarr"]
    assert_peers_accept(tmp_path / "x.zarr")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_overwrite_swaps_the_new_store_in_in_one_step(tmp_path, monkeypatch):
    from napari_zshard.multiscale.staging import exchange

    first, second = volume((8, 32, 32), seed=1), volume((8, 32, 32), seed=2)
    save_image(tmp_path / "x.zarr", first, options=SMALL)
    moved = []
    real_replace = os.replace

    def replace(src, dst):
        moved.append(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_image(tmp_path / "x.zarr", second, options=WriteOptions(overwrite=True))

    assert tmp_path / "x.zarr" not in moved  # never moved away: no moment without a store
    np.testing.assert_array_equal(levels_of(tmp_path / "x.zarr")[0][...], second)
    assert leftovers(tmp_path) == ["x.zarr"]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1").touch()
    (tmp_path / "b").mkdir()
    assert exchange(tmp_path / "a", tmp_path / "b")
    assert leftovers(tmp_path / "b") == ["1"] and leftovers(tmp_path / "a") == []


def test_overwrite_never_replaces_a_folder_that_is_not_a_zarr_store(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    with pytest.raises(StoreError, match="does not hold a Zarr store"):
        save_image(tmp_path / "thesis", volume((8, 32, 32)), options=WriteOptions(
            overwrite=True))
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "precious"
    assert leftovers(tmp_path) == ["thesis"]


def test_a_location_that_cannot_be_written_is_reported(tmp_path):
    # Tests run as root, so chmod would not stop the write: a path below a regular *file*
    # makes creating the folder fail the way a read-only location does.
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    with pytest.raises(StoreError, match="cannot write"):
        save_image(tmp_path / "notes.txt" / "x.zarr", volume((8, 32, 32)))
    assert leftovers(tmp_path) == ["notes.txt"]


def test_a_full_disk_stops_the_save_and_leaves_nothing(tmp_path, monkeypatch):
    from napari_zshard.store.local import LocalStore

    real_write = LocalStore.write
    written = []

    def write_until_full(self, key, data):
        if "/c/" in f"/{key}":
            if len(written) >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(key)
        real_write(self, key, data)

    monkeypatch.setattr(LocalStore, "write", write_until_full)
    with pytest.raises(StoreError, match="disk is full") as failed:
        save_image(tmp_path / "x.zarr", volume((64, 128, 128)), options=SMALL)
    assert str(tmp_path / "x.zarr") in str(failed.value)
    assert len(written) == 3
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("data", "problem"), [
    (np.zeros((4, 8, 8), np.complex64), "dtype complex64"),
    (np.empty((4, 8, 8), object), "dtype object"),
    (np.full((4, 8, 8), "abc"), "dtype <U3"),
    (np.zeros((0, 8, 8), np.uint8), "empty"),
    (np.zeros((8,), np.uint8), "1D"),
    (np.zeros((2, 2, 2, 2, 2, 2), np.uint8), "6D"),
])
def test_data_that_cannot_be_stored_is_refused_before_anything_is_written(
        tmp_path, data, problem):
    with pytest.raises(MetadataError, match=problem):
        save_image(tmp_path / "x.zarr", data)
    with pytest.raises(MetadataError, match=problem):
        save_image(tmp_path / "y.zarr", volume((8, 32, 32)),
                   labels={"bad": (data, ImageSpec(kind="labels"))})
    assert leftovers(tmp_path) == []


def test_options_that_make_no_sense_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of the chunk shape"):
        save_image(tmp_path / "x.zarr", volume((32, 64, 64)),
                   options=WriteOptions(chunks=(16, 32, 32), shards=(24, 64, 64)))
    with pytest.raises(ValueError, match="do not match the 3D data"):
        save_image(tmp_path / "x.zarr", volume((32, 64, 64)), options=WriteOptions(
            chunks=(32, 32)))
    with pytest.raises(ValueError, match="method must be one of"):
        save_image(tmp_path / "x.zarr", volume((32, 64, 64)), ImageSpec(method="median"))
    assert leftovers(tmp_path) == []


def test_a_cancelled_save_leaves_nothing(tmp_path):
    steps = write_image(tmp_path / "x.zarr", volume((64, 128, 128)), options=SMALL)
    for step in steps:
        if step.done == 3:
            break
    assert step.total > 3
    steps.close()  # what the widget's Cancel and the CLI's Ctrl-C do
    assert leftovers(tmp_path) == []
    save_image(tmp_path / "x.zarr", volume((8, 32, 32)), options=SMALL)  # the name is free
    assert_peers_accept(tmp_path / "x.zarr")


SAVE_UNTIL_KILLED = textwrap.dedent("""
    import sys, numpy as np
    from napari_zshard.multiscale.write import WriteOptions, write_image
    data = np.random.default_rng(0).integers(0, 4000, (128, 256, 256), dtype=np.uint16)
    for step in write_image(sys.argv[1], data, options=WriteOptions(
            chunks=(8, 32, 32), shards=(16, 64, 64), workers=1)):
        print(step.done, flush=True)
""")


@pytest.mark.slow
def test_a_killed_save_leaves_no_store_and_the_next_save_cleans_up(tmp_path):
    target = tmp_path / "x.zarr"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_UNTIL_KILLED, str(target)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 5:  # a few shards committed, most of the save still to do
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # nothing claims to be the store
    (partial,) = leftovers(tmp_path)
    assert partial.startswith(".x.zarr.partial-")

    data = volume((8, 32, 32))
    save_image(target, data, options=SMALL)
    np.testing.assert_array_equal(levels_of(target)[0][...], data)
    assert leftovers(tmp_path) == ["x.zarr"]  # the killed save's remains are gone
    assert_peers_accept(target)


def test_a_save_in_progress_is_not_swept_by_another(tmp_path):
    running = write_image(tmp_path / "x.zarr", volume((64, 128, 128)), options=SMALL)
    next(running)
    (partial,) = leftovers(tmp_path)
    save_image(tmp_path / "x.zarr", volume((8, 32, 32)), options=SMALL)  # the faster one
    assert partial in leftovers(tmp_path)  # the running save's folder was left alone
    with pytest.raises(StoreError, match="already exists"):
        for _ in running:  # it finds its name taken when it is done
            pass
    assert leftovers(tmp_path) == ["x.zarr"]
    assert_peers_accept(tmp_path / "x.zarr")


# -- dask.distributed ----------------------------------------------------------------------
@pytest.mark.slow
def test_a_local_cluster_writes_the_shards(tmp_path):
    from distributed import Client, LocalCluster

    image = volume((48, 96, 112), seed=11)
    labels = blobs((48, 96, 112))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        save_image(tmp_path / "x.zarr", da.from_array(image, chunks=(20, 50, 50)),
                   labels={"seg": (labels, ImageSpec(kind="labels"))},
                   options=WriteOptions(chunks=(16, 32, 32), shards=(32, 64, 64), levels=2,
                                        client=client))
        # Cancel while big shards are still being written on the workers: the tasks that
        # cannot be stopped finish before the partial save is removed, not after.
        steps = write_image(tmp_path / "cancelled.zarr", volume((128, 512, 512)),
                            options=WriteOptions(chunks=(32, 64, 64), shards=(64, 256, 256),
                                                 client=client))
        next(steps)
        steps.close()
        time.sleep(1)  # any straggler would have written by now
    level0, level1 = levels_of(tmp_path / "x.zarr")
    np.testing.assert_array_equal(level0[...], image)
    np.testing.assert_array_equal(level1[...], downsample(image, (2, 2, 2), "mean"))
    seg0, seg1 = levels_of(tmp_path / "x.zarr" / "labels" / "seg")
    np.testing.assert_array_equal(seg0[...], labels)
    np.testing.assert_array_equal(seg1[...], downsample(labels, (2, 2, 2), "mode"))
    assert leftovers(tmp_path) == ["x.zarr"]
    assert_peers_accept(tmp_path / "x.zarr", labels=1)


# -- S3 ---------------------------------------------------------------------------------------
def test_a_save_to_s3_reads_back_and_its_root_metadata_comes_last(
        s3_bucket, s3_options, monkeypatch, tmp_path):
    from napari_zshard.store.s3 import S3Store

    order = []
    real_write = S3Store.write

    def recording_write(self, key, data):
        order.append(f"{self.url}/{key}")
        real_write(self, key, data)

    monkeypatch.setattr(S3Store, "write", recording_write)
    image, labels = volume((20, 64, 80), seed=12), blobs((20, 64, 80))
    url = f"{s3_bucket}/x.zarr"
    save_image(url, image, ImageSpec(name="x"), labels={"seg": (labels,
               ImageSpec(kind="labels"))}, options=WriteOptions(
        chunks=(8, 32, 32), shards=(16, 64, 64), levels=2), storage_options=s3_options)

    assert order[-1] == f"{url}/zarr.json"
    node = nz.open_image(url, storage_options=s3_options)
    np.testing.assert_array_equal(node.arrays[0][:], image)
    np.testing.assert_array_equal(node.labels[0].arrays[0][:], labels)
    group = zarr.open_group(url, mode="r", storage_options=s3_options)
    np.testing.assert_array_equal(group["1"][...], downsample(image, (2, 2, 2), "mean"))
    assert_peers_accept_s3(url, s3_options["endpoint_url"], tmp_path, labels=1)


def test_a_cancelled_save_to_s3_leaves_no_root_metadata_nor_shards(s3_bucket, s3_options):
    from napari_zshard.testing.s3_server import s3_filesystem

    url = f"{s3_bucket}/x.zarr"
    steps = write_image(url, volume((32, 128, 128)), options=WriteOptions(
        chunks=(8, 32, 32), shards=(8, 64, 64)), storage_options=s3_options)
    for step in steps:
        if step.done == 2:
            break
    steps.close()
    fs = s3_filesystem(s3_options["endpoint_url"])
    fs.invalidate_cache()
    assert not fs.exists(f"{url}/zarr.json")
    assert fs.find(url) == []


def test_overwriting_a_store_open_on_s3_builds_the_pyramid_from_the_new_data(
        s3_bucket, s3_options, tmp_path):
    url = f"{s3_bucket}/x.zarr"
    options = WriteOptions(chunks=(8, 32, 32), shards=(16, 64, 64), levels=2)
    save_image(url, volume((16, 64, 64), seed=1), storage_options=s3_options, options=options)
    before = nz.open_image(url, storage_options=s3_options)
    before.arrays[0][:], before.arrays[1][:]  # the viewer has read (and cached) both levels

    new = volume((16, 64, 64), seed=2)
    options.overwrite = True
    save_image(url, new, storage_options=s3_options, options=options)

    group = zarr.open_group(url, mode="r", storage_options=s3_options)
    np.testing.assert_array_equal(group["1"][...], downsample(new, (2, 2, 2), "mean"))
    after = nz.open_image(url, storage_options=s3_options)
    np.testing.assert_array_equal(after.arrays[0][:], new)
    assert_peers_accept_s3(url, s3_options["endpoint_url"], tmp_path)
