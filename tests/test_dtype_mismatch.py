"""A ``zarr.json`` whose data_type does not match the stored data is named as such, not
reported as a decompression bomb."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import napari_zshard as nz
from napari_zshard import EngineCache
from napari_zshard.errors import ChunkSizeMismatchError, DecompressionBombError


@pytest.mark.parametrize("progressive", [True, False])
@pytest.mark.parametrize("compressor", ["zstd", "blosc", "gzip"])
def test_uint32_data_under_a_uint16_data_type_is_a_size_mismatch(compressor, progressive,
                                                                 tmp_path):
    path = tmp_path / "vol.zarr"
    codec = {"zstd": zarr.codecs.ZstdCodec(), "blosc": zarr.codecs.BloscCodec(cname="lz4"),
             "gzip": zarr.codecs.GzipCodec()}[compressor]
    zarr.create_array(store=str(path), shape=(32, 32, 32), chunks=(16, 16, 16),
                      shards=(32, 32, 32), dtype="uint32", compressors=[codec],
                      fill_value=0)[:] = np.arange(32**3, dtype=np.uint32).reshape(32, 32, 32)
    meta = json.loads((path / "zarr.json").read_text())
    meta["data_type"] = "uint16"
    if compressor == "blosc":
        meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]["typesize"] = 2
    (path / "zarr.json").write_text(json.dumps(meta))

    arr = nz.open_array(path, cache=EngineCache(), progressive=progressive)
    # zstd and blosc frames declare their size: the mismatch shows before anything is decoded,
    # whatever plane is read. A gzip stream says nothing until its end: a progressive read of
    # the top planes may return before the rest is decoded (the error then surfaces on a later
    # read), so the gzip case reads the chunk's last plane, which needs the whole stream.
    plane = 15 if compressor == "gzip" else 5
    with pytest.raises(ChunkSizeMismatchError, match=r"2 times .*data_type") as caught:
        arr[plane]
    assert not isinstance(caught.value, DecompressionBombError)
