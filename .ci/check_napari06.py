"""With napari 0.6.x, which still has it, ``napari.view_path(url, plugin="napari-zshard")``
opens a sharded store. Run by `make test-napari06` in a separate small environment."""

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np

from napari_zshard.sample import make_cells, make_sample


def main() -> int:
    shape = (16, 64, 64)
    path = make_sample(Path(tempfile.mkdtemp()) / "cells.zarr", shape=shape)
    viewer = napari.view_path(str(path), plugin="napari-zshard")
    kinds = [type(layer).__name__ for layer in viewer.layers]
    image = viewer.layers[0]
    expected, _ = make_cells(shape)
    ok = kinds == ["Image", "Labels"] and image.multiscale and np.array_equal(
        np.asarray(image.data[0][5]), expected[5])
    viewer.close()
    print(f"napari {napari.__version__}: view_path(..., plugin='napari-zshard') gave {kinds}")
    print("napari 0.6 view_path check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
