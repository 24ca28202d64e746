"""Resharding a store: a user previews what a new layout costs, runs it, and gets the same
voxels and metadata in the new layout — images with their pyramids and labels, plain arrays,
per-level layouts. (Resuming, S3 and clusters: test_reshard_resume.py; bad input:
test_reshard_errors.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

import napari_zshard as nz
from napari_zshard.engine import EngineCache, open_array
from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_writer import write_array_data
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.ome import Axis
from napari_zshard.reshard import JOURNAL, plan_reshard, reshard, suggest_layout


def cells(shape=(48, 96, 112), seed=0) -> np.ndarray:
    """Compressible, structured uint16 data (a gradient, blobs and noise)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    data = 200 + 3 * x + 2 * y + rng.integers(0, 40, shape)
    data[(z - 20) ** 2 + (y - 40) ** 2 + (x - 50) ** 2 < 300] += 1500
    return data.astype(np.uint16)


def run_to_end(plan, **options):
    steps = list(plan.run(**options))
    assert [s.done for s in steps] == sorted(s.done for s in steps)  # progress only grows
    return steps[-1].summary


@pytest.fixture
def image(tmp_path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An OME-Zarr 0.5 image: 2 levels, 16³ chunks in 32x64x64 shards, with a label image."""
    data = cells()
    labels = np.zeros(data.shape, np.uint16)
    labels[5:30, 10:60, 20:90] = 3
    labels[30:, 50:, :40] = 7
    save_image(tmp_path / "src.zarr", data,
               ImageSpec(name="cells", scale=(2.0, 0.5, 0.5), contrast_limits=(100, 2000)),
               labels={"nuclei": (labels, ImageSpec(name="nuclei", kind="labels"))},
               options=WriteOptions(chunks=(16, 16, 16), shards=(32, 64, 64), levels=2))
    return tmp_path / "src.zarr", data, labels


def test_a_preview_prices_a_plane_exactly_as_the_engine_reads_it(tmp_path):
    # 64x128x128 uint16, 16³ chunks in 32x64x64 shards; the middle plane is z=32
    data = cells((64, 128, 128))
    store, meta = create_array(tmp_path / "vol.zarr", shape=data.shape, dtype=data.dtype,
                               chunks=(16, 16, 16), shards=(32, 64, 64))
    list(write_array_data(store, meta, data))
    plan = plan_reshard(tmp_path / "vol.zarr", tmp_path / "new.zarr", chunks=(8, 64, 64),
                        shards=(32, 128, 128))
    (level,) = plan.arrays
    src, dst = level.views["plane"]
    # By hand: z=32 lies in the second row of shards, 2x2 shards cover y and x; in each the
    # plane needs the 4x4 chunks of its first chunk layer, contiguous (C order): 1 range.
    assert src.requests == 4 + 4
    assert src.decoded == 4 * 16 * (16 * 16 * 16 * 2)
    index_bytes = 2 * 4 * 4 * 16 + 4  # 32 entries of (offset, nbytes) + crc32c
    chunk_bytes = 0
    for y in (0, 1):
        for x in (0, 1):
            raw = (tmp_path / f"vol.zarr/c/1/{y}/{x}").read_bytes()
            entries = np.frombuffer(raw[-index_bytes:-4], "<u8").reshape(-1, 2)
            chunk_bytes += int(entries[:16, 1].sum())  # chunks 0..15: the first layer
    assert src.fetched == 4 * index_bytes + chunk_bytes and not src.estimated
    assert (level.source_objects, level.source_index_bytes) == (8, 8 * index_bytes)
    # the new layout: one shard holds the whole plane's 2x2 chunks of 8x64x64
    assert (dst.requests, dst.decoded) == (1 + 1, 4 * 8 * 64 * 64 * 2)
    assert (level.n_shards, level.target_index_bytes) == (2, 2 * (16 * 16 + 4))
    assert level.views["tile"] == level.views["plane"]  # 128² is smaller than a 512² tile

    # what the engine then really does, cold and without read-ahead
    def cold_read(url):
        arr = open_array(url, cache=EngineCache(0), readahead=False)
        arr.reset_counters()
        np.testing.assert_array_equal(arr[32], data[32])
        c = arr.counters
        return c["index_requests"] + c["data_requests"], arr.store.stats.bytes, c[
            "decoded_bytes"]

    assert cold_read(tmp_path / "vol.zarr") == (src.requests, src.fetched, src.decoded)
    summary = run_to_end(plan)
    requests, fetched, decoded = cold_read(tmp_path / "new.zarr")
    assert (requests, decoded) == (dst.requests, dst.decoded)
    assert abs(fetched - dst.fetched) < 0.25 * fetched  # sizes estimated from the sample
    assert summary.complete and summary.written == 2
    text = plan.table()
    assert "16x16x16 in 32x64x64" in text and "8x64x64 in 32x128x128" in text
    assert "plane z=32: requests" in text and "estimated time" in text


def test_an_image_with_its_pyramid_and_labels_is_resharded_bit_for_bit(image, tmp_path):
    src, data, labels = image
    dst = tmp_path / "dst.zarr"
    plan = plan_reshard(src, dst, chunks=(8, 32, 32), shards=(16, 128, 128))
    assert [a.path for a in plan.arrays] == ["0", "1", "labels/nuclei/0", "labels/nuclei/1"]
    summary = run_to_end(plan, verify="full")
    assert summary.complete and summary.verified == plan.n_shards
    assert summary.written + summary.fill == plan.n_shards and summary.resumed == 0
    assert not (dst / JOURNAL).exists()
    before, after = nz.open_image(src), nz.open_image(dst)
    for old, new in zip([*before.arrays, *before.labels[0].arrays],
                        [*after.arrays, *after.labels[0].arrays], strict=True):
        np.testing.assert_array_equal(new[:], old[:])
        assert new.chunks[0] == 8 and new.meta.dimension_names == ("z", "y", "x")
    assert after.arrays[0].shards == (16, 96, 128)  # clipped to the array (whole chunks)
    # all metadata carried over: the groups' attributes are the source's
    for group in ("", "labels", "labels/nuclei"):
        doc = json.loads((dst / group / "zarr.json").read_text())
        assert doc["attributes"] == json.loads((src / group / "zarr.json").read_text())[
            "attributes"]
    assert after.scale == (2.0, 0.5, 0.5) and after.contrast_limits == (100, 2000)
    # the reference implementation reads the result
    np.testing.assert_array_equal(zarr.open_array(str(dst / "0"), mode="r")[:], data)
    np.testing.assert_array_equal(zarr.open_array(str(dst / "labels/nuclei/0"))[:], labels)
    assert zarr.open_array(str(dst / "0")).shards == (16, 96, 128)
    # the source was not touched
    np.testing.assert_array_equal(nz.open_image(src).arrays[0][:], data)


def test_each_level_can_have_its_own_layout(image, tmp_path):
    src, _, _ = image
    plan = plan_reshard(src, tmp_path / "dst.zarr", chunks=(16, 32, 32), shards=(16, 64, 64),
                        levels=[None, ((8, 8, 8), (24, 56, 56))])
    summary = run_to_end(plan, verify="none")
    node = nz.open_image(tmp_path / "dst.zarr")
    assert [(a.chunks, a.shards) for a in node.arrays] == [
        ((16, 32, 32), (16, 64, 64)), ((8, 8, 8), (24, 48, 56))]
    assert [(a.chunks, a.shards) for a in node.labels[0].arrays] == [
        ((16, 32, 32), (16, 64, 64)), ((8, 8, 8), (24, 48, 56))]
    np.testing.assert_array_equal(node.arrays[1][:], nz.open_image(src).arrays[1][:])
    assert summary.verify == "none" and summary.verified == 0


def test_a_plain_unsharded_array_from_zarr_python_becomes_sharded(tmp_path):
    data = cells((40, 80, 72)).astype(np.float32)
    data[:, :, 60:] = np.nan  # NaN is the fill value: those chunks are not stored
    arr = zarr.create_array(str(tmp_path / "acq.zarr"), shape=data.shape, dtype="float32",
                            chunks=(16, 16, 16), fill_value=np.nan,
                            dimension_names=["z", "y", "x"],
                            attributes={"instrument": "lightsheet", "voxel_um": [1, 0.4, 0.4]})
    arr[:] = data
    summary = reshard(tmp_path / "acq.zarr", tmp_path / "out.zarr", chunks=(8, 32, 32),
                      shards=(40, 64, 64), verify="full")
    assert summary.complete
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")
    np.testing.assert_array_equal(out[:], data)  # NaNs in the same places
    assert out.shards == (40, 64, 64) and out.chunks == (8, 32, 32)
    assert dict(out.attrs) == {"instrument": "lightsheet", "voxel_um": [1, 0.4, 0.4]}
    assert out.metadata.dimension_names == ("z", "y", "x") and np.isnan(out.fill_value)


def test_an_ome_zarr_04_image_comes_out_as_05(tmp_path):
    data = cells((24, 64, 64))
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=(8, 32, 32))
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]
    reshard(tmp_path / "old.zarr", tmp_path / "new.zarr", chunks=(8, 32, 32),
            shards=(24, 64, 64))
    attrs = json.loads((tmp_path / "new.zarr/zarr.json").read_text())["attributes"]
    assert attrs["ome"]["version"] == "0.5" and "version" not in attrs["ome"]["multiscales"][0]
    node = nz.open_image(tmp_path / "new.zarr")
    assert node.axes == tuple(Axis(n, "space") for n in "zyx")
    assert node.arrays[0].meta.dimension_names == ("z", "y", "x")
    np.testing.assert_array_equal(node.arrays[0][:], data)


def test_the_suggested_layout_streams_planes(tmp_path, image):
    chunks, shards = suggest_layout((2000, 4096, 4096), np.uint16)
    assert chunks == (64, 64, 64) and shards == (256, 256, 256)  # 32 MiB objects
    assert suggest_layout((10, 8192, 8192), np.uint8) == ((10, 64, 64), (10, 1024, 2048))
    src, _, _ = image
    plan = plan_reshard(src, tmp_path / "x.zarr", measure=False)  # no shapes: the suggestion
    assert plan.arrays[0].target.chunk_shape == (48, 64, 64)  # 64³, clipped to the array
    assert plan.suggest()["0"] == suggest_layout((48, 96, 112), np.uint16)
    assert plan.sample is None and plan.estimated_seconds is None


@pytest.mark.parametrize("fill", [0, np.nan])
def test_a_shard_streamed_layer_by_layer_is_the_shard_encoded_whole(tmp_path, fill):
    from napari_zshard.engine.create import array_metadata
    from napari_zshard.engine.metadata import parse_json, parse_v3
    from napari_zshard.engine.shard_writer import encode_shard, encode_shard_by_layers

    data = cells((40, 50, 60)).astype(np.float32)
    data[:16] = fill  # whole chunks of fill are left out of the shard
    raw = array_metadata(shape=data.shape, dtype=data.dtype, chunks=(8, 16, 16),
                         shards=(32, 32, 64), fill_value=fill, compressor="none")
    meta = parse_v3(parse_json(raw, "x"), "x")
    for shard in [(0, 0, 0), (1, 1, 0)]:  # a whole shard; one cut by the array's edges
        region = meta.layout.shard_region(shard)
        whole = encode_shard(meta, data[region])
        def read(r, out):
            out[...] = data[r]

        layered = encode_shard_by_layers(meta, shard, read, depth=16)  # 2 chunk rows a layer
        assert layered == whole


def test_unchanged_chunks_are_copied_as_stored_yet_checked(tmp_path):
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from napari_zshard.reshard import CorruptSourceError

    data = cells((32, 64, 96))
    # acquisition-style: one object per 16³ chunk, zstd(3) + crc32c, as the destination
    zarr.create_array(str(tmp_path / "acq.zarr"), data=data, chunks=(16, 16, 16),
                      compressors=[ZstdCodec(level=3), Crc32cCodec()])
    plan = plan_reshard(tmp_path / "acq.zarr", tmp_path / "out.zarr", chunks=(16, 16, 16),
                        shards=(32, 64, 96))
    assert plan.arrays[0].passthrough == "copy" and "copied as stored" in plan.table()
    assert run_to_end(plan, verify="full").complete
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], data)
    # the shard holds the very bytes of the source's chunk objects, in C order
    shard = (tmp_path / "out.zarr/c/0/0/0").read_bytes()
    first = (tmp_path / "acq.zarr/c/0/0/0").read_bytes()
    assert shard.startswith(first)
    # zarr-python's default codec (zstd level 0, no checksum) gains a crc32c on the way
    zarr.create_array(str(tmp_path / "plain.zarr"), data=data, chunks=(16, 16, 16))
    plan = plan_reshard(tmp_path / "plain.zarr", tmp_path / "crc.zarr", chunks=(16, 16, 16),
                        shards=(32, 64, 96), codec_level=0)
    assert plan.arrays[0].passthrough == "add-crc32c"
    run_to_end(plan)
    out = zarr.open_array(str(tmp_path / "crc.zarr"))
    np.testing.assert_array_equal(out[:], data)
    assert [c.to_dict()["name"] for c in out.metadata.codecs[0].codecs] == [
        "bytes", "zstd", "crc32c"]
    # ...and a damaged stored chunk is caught before it is copied
    path = tmp_path / "acq.zarr/c/1/2/3"
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0x10
    path.write_bytes(bytes(raw))
    plan = plan_reshard(tmp_path / "acq.zarr", tmp_path / "bad.zarr", chunks=(16, 16, 16),
                        shards=(32, 64, 96), measure=False)
    with pytest.raises(CorruptSourceError, match=r"acq.zarr/c/1/2/3: inner chunk \(1, 2, 3\)"):
        list(plan.run())
    # asked to, it decodes and re-encodes instead
    plan = plan_reshard(tmp_path / "plain.zarr", tmp_path / "re.zarr", chunks=(16, 16, 16),
                        shards=(32, 64, 96), codec_level=0, recompress=True, measure=False)
    assert plan.arrays[0].passthrough == "transcode" and "re-encoded" in plan.table()
    assert run_to_end(plan, verify="full").complete
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "re.zarr"))[:], data)


@pytest.mark.parametrize("fill", [0, np.nan])
def test_smaller_chunks_are_cut_from_each_decoded_source_chunk(tmp_path, fill):
    from napari_zshard.engine.shard_writer import encode_shard_by_layers, iter_shards
    from napari_zshard.reshard import CorruptSourceError
    from napari_zshard.reshard.passthrough import copy_shard
    from napari_zshard.reshard.tasks import SourceRef

    data = cells((40, 50, 60)).astype(np.float32)
    data[:16] = fill  # whole source chunks of fill value: not stored, nor are their pieces
    data[20:24, 8:40] = fill  # some destination chunks of fill inside stored source chunks
    store, meta = create_array(tmp_path / "src.zarr", shape=data.shape, dtype=data.dtype,
                               chunks=(16, 16, 16), shards=(32, 32, 32), fill_value=fill)
    list(write_array_data(store, meta, data))
    plan = plan_reshard(tmp_path / "src.zarr", tmp_path / "out.zarr", chunks=(8, 8, 16),
                        shards=(16, 32, 64))
    assert plan.arrays[0].passthrough == "split" and "cut from each" in plan.table()
    assert run_to_end(plan, verify="full").complete
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], data)
    # byte for byte the shards that decoding whole layers makes (edges padded with fill)
    target = plan.arrays[0].target
    for shard in iter_shards(target):
        cut = copy_shard(SourceRef.of(plan.arrays[0].source).reader(), target, shard, "split")

        def read(r, out):
            out[...] = data[r]

        assert cut == encode_shard_by_layers(target, shard, read)
    # a damaged source chunk is caught, and named, before anything is cut from it
    path = tmp_path / "src.zarr/c/1/0/1"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0x10
    path.write_bytes(bytes(raw))
    plan = plan_reshard(tmp_path / "src.zarr", tmp_path / "bad.zarr", chunks=(8, 8, 16),
                        shards=(16, 32, 64), measure=False)
    with pytest.raises(CorruptSourceError, match=r"src.zarr/c/1/0/1: inner chunk \(2, 0, 2\)"):
        list(plan.run())


def test_chunks_that_do_not_tile_the_source_chunks_are_read_by_layers(tmp_path):
    from napari_zshard.reshard.passthrough import passthrough_mode

    data = cells((40, 64, 64))
    store, meta = create_array(tmp_path / "src.zarr", shape=data.shape, dtype=data.dtype,
                               chunks=(16, 16, 16), shards=(32, 32, 32))
    list(write_array_data(store, meta, data))
    for chunks, shards, mode in [((8, 8, 8), (16, 16, 16), "split"),
                                 ((8, 8, 8), (8, 64, 64), None),  # a source chunk, 2 shards
                                 ((8, 8, 8), (40, 64, 64), "split"),  # one shard along z
                                 ((8, 32, 32), (16, 64, 64), None),  # larger along y, x
                                 ((12, 8, 8), (24, 64, 64), None)]:  # 16 is not 12 * n
        plan = plan_reshard(tmp_path / "src.zarr", tmp_path / "o.zarr", chunks=chunks,
                            shards=shards, measure=False)
        assert plan.arrays[0].passthrough == mode == passthrough_mode(meta, plan.arrays[0].target)
