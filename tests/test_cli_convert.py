"""zshard convert: an OME-Zarr 0.4 (Zarr v2) store becomes a sharded OME-Zarr 0.5 store."""

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from ome_checks import assert_peers_accept

import napari_zshard as nz
from napari_zshard.cli import main


@pytest.fixture
def ome_04(tmp_path):
    data = np.random.default_rng(0).integers(0, 1000, (40, 96, 128), dtype=np.uint16)
    root = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=2)
    root.create_array("0", data=data, chunks=(16, 32, 32))
    root.create_array("1", data=data[::2, ::2, ::2].copy(), chunks=(16, 32, 32))
    root.attrs["multiscales"] = [{"version": "0.4", "name": "old", "axes": [
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, .5, .5]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [4, 1, 1]}]}]}]
    labels = root.create_group("labels")
    labels.attrs["labels"] = ["cells"]
    cells = labels.create_group("cells")
    mask = (data > 900).astype(np.uint8)
    cells.create_array("0", data=mask, chunks=(16, 32, 32))
    cells.attrs["multiscales"] = [{"version": "0.4", "axes": root.attrs["multiscales"][0]["axes"],
                                   "datasets": [{"path": "0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [2, .5, .5]}]}]}]
    cells.attrs["image-label"] = {"version": "0.4", "colors": [
        {"label-value": 1, "rgba": [255, 0, 0, 255]}]}
    return tmp_path / "old.zarr", data, mask


def test_convert_keeps_data_levels_scales_and_labels(ome_04, tmp_path):
    src, data, mask = ome_04
    dst = tmp_path / "new.zarr"
    assert main(["convert", str(src), str(dst), "--chunks", "16,32,32", "--shards",
                 "32,64,64", "-q"]) == 0
    group = json.loads((dst / "zarr.json").read_text())
    assert group["attributes"]["ome"]["version"] == "0.5"
    node = nz.open_image(dst)
    assert [a.shape for a in node.arrays] == [(40, 96, 128), (20, 48, 64)]
    assert node.arrays[0].shards == (32, 64, 64)
    np.testing.assert_array_equal(node.arrays[0][:], data)
    np.testing.assert_array_equal(node.arrays[1][:], data[::2, ::2, ::2])
    assert node.scale == (2.0, 0.5, 0.5)
    (cells,) = node.labels
    np.testing.assert_array_equal(cells.arrays[0][:], mask)
    assert cells.image_label.colors[1] == (1.0, 0.0, 0.0, 1.0)
    # the standard reader agrees
    np.testing.assert_array_equal(zarr.open_array(str(dst / "0"))[:], data)
    assert_peers_accept(dst, channels=1, labels=1)


def test_converting_incomplete_omero_channels_writes_complete_ones(ome_04, tmp_path):
    src, _, _ = ome_04
    root = zarr.open_group(str(src), mode="r+", zarr_format=2)
    root.attrs["omero"] = {"channels": [{"label": "DAPI"}]}  # no color, no window: as found
    dst = tmp_path / "new.zarr"
    assert main(["convert", str(src), str(dst), "-q"]) == 0
    assert_peers_accept(dst, channels=1, labels=1)
    (channel,) = json.loads((dst / "zarr.json").read_text())["attributes"]["ome"]["omero"][
        "channels"]
    assert channel == {"label": "DAPI", "color": "FFFFFF", "active": True, "window": {
        "start": 0.0, "end": 65535.0, "min": 0.0, "max": 65535.0}}


def test_rebuilding_the_pyramid(ome_04, tmp_path):
    src, _, _ = ome_04
    dst = tmp_path / "re.zarr"
    assert main(["convert", str(src), str(dst), "--levels", "3", "-q"]) == 0
    # 2 µm z, 0.5 µm y/x: only y and x are halved until the voxels are cubic
    assert [a.shape for a in nz.open_image(dst).arrays] == [(40, 96, 128), (40, 48, 64),
                                                            (40, 24, 32)]
    assert_peers_accept(dst, labels=1)


@pytest.mark.parametrize("dst_name", ["old.zarr", "old.zarr/inside.zarr"])
def test_refuses_to_write_over_or_into_its_source(ome_04, tmp_path, dst_name):
    src, _, _ = ome_04
    out = subprocess.run([sys.executable, "-m", "napari_zshard.cli", "convert", str(src),
                          str(tmp_path / dst_name)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("zshard: error:") and "Traceback" not in out.stderr
    assert "source" in out.stderr
    assert zarr.open_group(str(src), mode="r").attrs["multiscales"]  # untouched


def test_an_existing_destination_needs_overwrite(ome_04, tmp_path, capsys):
    src, _, _ = ome_04
    dst = tmp_path / "new.zarr"
    assert main(["convert", str(src), str(dst), "-q"]) == 0
    assert main(["convert", str(src), str(dst), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "-q", "--overwrite"]) == 0
    assert_peers_accept(dst, labels=1)
