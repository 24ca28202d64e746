"""Opening stores in napari: what a user gets when they drop or open a .zarr."""

import json
import warnings

import numpy as np
import pytest
import zarr

from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_writer import write_array_data
from napari_zshard.plugin.reader import get_reader
from napari_zshard.sample import make_sample, write_image_pyramid
from napari_zshard.store import open_store

napari = pytest.importorskip("napari")


@pytest.fixture
def viewer_model(npe2pm):
    from napari.components import ViewerModel

    with npe2pm.tmp_plugin(package="napari-zshard"):
        yield ViewerModel()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("sample") / "cells.zarr", shape=(32, 96, 128))


def write_plain_array(path, data, **kw):
    store, meta = create_array(path, shape=data.shape, dtype=data.dtype, chunks=(8, 32, 32),
                               shards=(16, 64, 64), **kw)
    for _ in write_array_data(store, meta, data):
        pass
    return path


def test_reader_declines_quietly_what_it_does_not_open(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("hello")
    (tmp_path / "broken.zarr").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_reader(str(tmp_path / "photos")) is None
        assert get_reader(str(tmp_path / "broken.zarr")) is None
        assert get_reader(str(tmp_path / "missing.zarr")) is None
        assert get_reader("http://127.0.0.1:9/nothing.zarr") is None
    assert capsys.readouterr() == ("", "")


def write_hcs_plate(path):
    """An HCS plate (OME-Zarr 0.5) as zarr-python writes it: a valid store of another kind."""
    plate = zarr.open_group(str(path), mode="w", zarr_format=3)
    plate.attrs["ome"] = {"version": "0.5", "plate": {
        "columns": [{"name": "1"}], "rows": [{"name": "A"}],
        "wells": [{"path": "A/1", "rowIndex": 0, "columnIndex": 0}]}}
    well = plate.create_group("A").create_group("1")
    well.attrs["ome"] = {"version": "0.5", "well": {"images": [{"path": "0"}]}}
    write_image_pyramid(open_store(path / "A" / "1" / "0"), [np.zeros((4, 16, 16), np.uint8)],
                        name="field", chunks=(4, 16, 16), shards=(4, 16, 16))
    return path


def write_bioformats2raw(path):
    """bioformats2raw's layout: a root naming its series, each series an image below it."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    root.create_group("OME").attrs["ome"] = {"version": "0.5", "series": ["0"]}
    write_image_pyramid(open_store(path / "0"), [np.zeros((4, 16, 16), np.uint8)],
                        name="series 0", chunks=(4, 16, 16), shards=(4, 16, 16))
    return path


def test_valid_zarr_of_a_kind_it_does_not_open_is_left_to_other_readers(tmp_path, capsys,
                                                                          caplog):
    plate = write_hcs_plate(tmp_path / "plate.zarr")
    bf2raw = write_bioformats2raw(tmp_path / "converted.zarr")
    caplog.set_level("DEBUG", logger="napari_zshard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_reader(str(plate)) is None
        assert get_reader(str(plate / "A" / "1")) is None  # a well
        assert get_reader(str(bf2raw)) is None
        assert get_reader([str(plate), str(bf2raw)]) is None
    assert capsys.readouterr() == ("", "")
    assert caplog.records == []
    assert get_reader(str(bf2raw / "0")) is not None  # one of its series is an image we open


NOT_JSON = b'{"zarr_format": 3, "node_type": "array",'
NO_DATA_TYPE = json.dumps({
    "zarr_format": 3, "node_type": "array", "shape": [8, 8], "fill_value": 0,
    "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 4]}},
    "chunk_key_encoding": {"name": "default"}, "codecs": [{"name": "bytes"}]}).encode()


@pytest.mark.parametrize(("files", "broken", "problem"), [
    pytest.param({"zarr.json": NOT_JSON}, "zarr.json", "is not valid JSON", id="not-json"),
    pytest.param({"zarr.json": NO_DATA_TYPE}, "zarr.json", "data_type is missing",
                 id="array-without-data_type"),
    pytest.param({"zarr.json": b"[1, 2]"}, "zarr.json", "must be a JSON object", id="a-list"),
    pytest.param({"zarr.json": b'{"zarr_format": 3, "node_type": "table"}'}, "zarr.json",
                 "not a Zarr v3 array or group", id="unknown-node-type"),
    pytest.param({".zarray": b'{"zarr_format": 2, "shape": [8], "chunks": [4]}'}, ".zarray",
                 "dtype is missing", id="v2-array-without-dtype"),
])
def test_broken_metadata_is_claimed_and_the_error_names_the_file(tmp_path, viewer_model,
                                                                 files, broken, problem):
    from napari_zshard import MetadataError

    store = tmp_path / "damaged.zarr"
    store.mkdir()
    for name, raw in files.items():
        (store / name).write_bytes(raw)

    reader = get_reader(str(store))

    assert reader is not None  # claimed: napari will not say "no reader could open it"
    with pytest.raises(MetadataError, match=problem) as raised:
        reader(str(store))
    assert f"damaged.zarr/{broken}" in str(raised.value)
    # what napari shows its user: our error (napari passes a reader's exception on)
    with pytest.raises(MetadataError, match=problem):
        viewer_model.open(str(store), plugin="napari-zshard")


def test_sample_opens_as_multiscale_image_with_labels_on_top(sample, viewer_model):
    viewer_model.open(str(sample), plugin="napari-zshard")
    image, labels = viewer_model.layers
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    # labels/cells of the image "cells": told apart by name, not napari's "cells [1]"
    assert (image.name, labels.name) == ("cells", "cells (labels)")
    assert image.multiscale and len(image.data) == 3
    assert image.data[0].shape == (32, 96, 128)
    assert tuple(image.axis_labels) == ("z", "y", "x")
    assert [str(u) for u in image.units] == ["micrometer"] * 3
    # contrast limits come from the omero window, not from reading the data
    window = zarr.open_group(str(sample)).attrs["ome"]["omero"]["channels"][0]["window"]
    assert tuple(image.contrast_limits) == (window["start"], window["end"])
    # the trailing slash a URL or a drop may carry changes nothing
    viewer_model.layers.clear()
    viewer_model.open(str(sample) + "/", plugin="napari-zshard")
    assert len(viewer_model.layers) == 2


def test_scale_translate_and_channels_come_from_ome_metadata(tmp_path, viewer_model):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(2, 16, 64, 64), dtype=np.uint16)
    store = open_store(tmp_path / "two_channels.zarr")
    for i, level in enumerate([data, data[:, :, ::2, ::2]]):
        sub, meta = create_array(store.child(str(i)), shape=level.shape, dtype=level.dtype,
                                 chunks=(1, 8, 32, 32), shards=(1, 16, 64, 64))
        for _ in write_array_data(sub, meta, level):
            pass
    ome = {"version": "0.5", "multiscales": [{
        "name": "embryo",
        "axes": [{"name": "c", "type": "channel"}, {"name": "z", "type": "space",
                 "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [
            {"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 2.0, 0.5, 0.5]},
                {"type": "translation", "translation": [0, 10, 20, 30]}]},
            {"path": "1", "coordinateTransformations": [
                {"type": "scale", "scale": [1, 2.0, 1.0, 1.0]}]}]}],
        "omero": {"channels": [
            {"label": "DAPI", "color": "0000FF", "window": {"start": 10, "end": 900}},
            {"label": "GFP", "color": "00FF00", "window": {"start": 50, "end": 3000}}]}}
    (tmp_path / "two_channels.zarr" / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}}))
    viewer_model.open(str(tmp_path / "two_channels.zarr"), plugin="napari-zshard")
    dapi, gfp = viewer_model.layers
    assert (dapi.name, gfp.name) == ("DAPI", "GFP")
    assert dapi.colormap.name == "blue" and gfp.colormap.name == "green"
    assert tuple(dapi.contrast_limits) == (10, 900) and tuple(gfp.contrast_limits) == (50, 3000)
    np.testing.assert_allclose(dapi.scale, [2.0, 0.5, 0.5])
    np.testing.assert_allclose(dapi.translate, [10, 20, 30])
    np.testing.assert_array_equal(np.asarray(gfp.data[0][3]), data[1, 3])


def test_ome_zarr_04_v2_store_opens_too(tmp_path, viewer_model):
    data = np.arange(8 * 32 * 32, dtype=np.uint16).reshape(8, 32, 32)
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=(4, 16, 16))
    root.create_array("1", data=data[:, ::2, ::2], chunks=(4, 16, 16))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "z", "type": "space"}, {"name": "y", "type": "space"},
        {"name": "x", "type": "space"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]}]}]
    viewer_model.open(str(tmp_path / "old.zarr"), plugin="napari-zshard")
    (layer,) = viewer_model.layers
    assert layer.multiscale
    np.testing.assert_array_equal(np.asarray(layer.data[0][5]), data[5])
    # no omero window: limits come from the (small) coarsest level
    assert tuple(layer.contrast_limits) == (float(data[:, ::2, ::2].min()),
                                            float(data[:, ::2, ::2].max()))


def test_plain_array_and_group_of_arrays(tmp_path, viewer_model):
    data = np.random.default_rng(1).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    write_plain_array(tmp_path / "plain.zarr", data)
    viewer_model.open(str(tmp_path / "plain.zarr"), plugin="napari-zshard")
    (layer,) = viewer_model.layers
    assert not layer.multiscale and layer.data.shape == data.shape
    np.testing.assert_array_equal(np.asarray(layer.data[7]), data[7])

    # a plain group whose arrays halve in size is one multiscale layer
    group = open_store(tmp_path / "pyr.zarr")
    write_plain_array(tmp_path / "pyr.zarr" / "big", data)
    write_plain_array(tmp_path / "pyr.zarr" / "small", data[::2, ::2, ::2].copy())
    group.write("zarr.json", b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    viewer_model.layers.clear()
    viewer_model.open(str(tmp_path / "pyr.zarr"), plugin="napari-zshard")
    (layer,) = viewer_model.layers
    assert layer.multiscale and [d.shape for d in layer.data] == [(16, 64, 64), (8, 32, 32)]


def test_labels_keep_their_colors_and_properties(tmp_path, viewer_model):
    image = np.zeros((8, 32, 32), np.uint16)
    labels = np.zeros((8, 32, 32), np.uint32)
    labels[2:5, 4:10, 4:10] = 1
    labels[5:7, 20:30, 20:30] = 2
    store = open_store(tmp_path / "img.zarr")
    lab = store.child("labels")
    write_image_pyramid(lab.child("nuclei"), [labels], name="nuclei", chunks=(8, 16, 16),
                        shards=(8, 32, 32), extra_attrs={"image-label": {
                            "version": "0.5",
                            "colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]},
                                       {"label-value": 2, "rgba": [0, 0, 255, 255]}],
                            "properties": [{"label-value": 1, "area": 108, "class": "a"},
                                           {"label-value": 2, "area": 200, "class": "b"}]}})
    lab.write("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "ome": {"version": "0.5", "labels": ["nuclei"]}}}).encode())
    write_image_pyramid(store, [image], name="img", chunks=(8, 16, 16), shards=(8, 32, 32))
    viewer_model.open(str(tmp_path / "img.zarr"), plugin="napari-zshard")
    _, nuclei = viewer_model.layers
    assert type(nuclei).__name__ == "Labels" and nuclei.name == "nuclei"
    np.testing.assert_allclose(nuclei.colormap.map(np.array([1]))[0], [1, 0, 0, 1])
    np.testing.assert_allclose(nuclei.colormap.map(np.array([2]))[0], [0, 0, 1, 1])
    assert list(nuclei.features["area"]) == [108, 200]
    np.testing.assert_array_equal(np.asarray(nuclei.data[3]), labels[3])


def test_a_broken_store_is_reported_and_the_others_still_open(tmp_path, sample, viewer_model,
                                                              monkeypatch):
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", "shape": [-1]}')
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    from napari_zshard.plugin.reader import read_zarr

    layers = read_zarr([str(bad), str(sample)])
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    assert len(shown) == 1 and "bad.zarr" in shown[0] and "shape" in shown[0]
