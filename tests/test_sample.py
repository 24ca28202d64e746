"""The generated sample a new user sees first: a sharded OME-Zarr 0.5 image with labels."""

import numpy as np
import zarr

import napari_zshard as nz
from napari_zshard.sample import make_cells, make_sample


def test_sample_is_a_sharded_ome_zarr_05_pyramid_with_labels(tmp_path):
    path = make_sample(tmp_path / "cells.zarr", shape=(64, 128, 128))
    group = zarr.open_group(str(path), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    paths = [d["path"] for d in ome["multiscales"][0]["datasets"]]
    assert paths == ["0", "1", "2"]
    level0 = nz.open_array(path / "0")
    assert level0.shards is not None and level0.shape == (64, 128, 128)
    image, labels = make_cells((64, 128, 128))
    np.testing.assert_array_equal(level0[:], image)
    np.testing.assert_array_equal(nz.open_array(path / "labels" / "cells" / "0")[:], labels)
    # zarr-python, the reference, reads the same bytes
    np.testing.assert_array_equal(group["0"][:], image)


def test_sample_is_generated_once_and_reused(tmp_path):
    first = make_sample(tmp_path / "s.zarr", shape=(32, 64, 64))
    stamp = (first / "0" / "zarr.json").stat().st_mtime_ns
    again = make_sample(tmp_path / "s.zarr", shape=(32, 64, 64))
    assert again == first and (again / "0" / "zarr.json").stat().st_mtime_ns == stamp
