"""What every save test asks of the store it wrote: that the validators and a peer reader take it.

One helper so that no save path (File ▸ Save Layers, the Save widget, ``write_image``,
``zshard convert``) can write metadata that only this package reads back:

* ome-zarr-models validates the image, its ``labels/`` group and each label image;
* yaozarrs validates the whole hierarchy (``validate_zarr_store``: metadata and structure);
* napari-ome-zarr, through its public reader hook, opens it as napari layers.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr


@dataclass
class PeerLayers:
    """What napari-ome-zarr made of a store: its layer tuples, split by kind."""

    images: list[tuple[Any, dict[str, Any]]]
    labels: list[tuple[Any, dict[str, Any]]]

    def image_names(self) -> list[str]:
        names: list[str] = []
        for _, meta in self.images:
            name = meta.get("name")
            names.extend(name if isinstance(name, list) else [name])
        return names


def _validate_ome_zarr_models(path: str) -> None:
    from ome_zarr_models.v05 import Image, ImageLabel, Labels

    root = zarr.open_group(path, mode="r")
    ome = root.attrs.asdict().get("ome", {})
    if "image-label" in ome:
        ImageLabel.from_zarr(root)
    else:
        Image.from_zarr(root)
    if "labels" in root:
        labels = root["labels"]
        Labels.from_zarr(labels)
        for name in labels.attrs["ome"]["labels"]:
            ImageLabel.from_zarr(labels[name])


def _open_in_napari_ome_zarr(path: str) -> PeerLayers:
    from napari_ome_zarr import napari_get_reader

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the groups it walks
        reader = napari_get_reader(path)
        assert reader is not None, f"napari-ome-zarr declined {path}"
        layers = reader(path)
    assert layers, f"napari-ome-zarr opened nothing at {path}"
    images = [(data, meta) for data, meta, kind in layers if kind == "image"]
    labels = [(data, meta) for data, meta, kind in layers if kind == "labels"]
    for data, _ in images + labels:  # every level reads
        for level in (data if isinstance(data, list) else [data]):
            np.asarray(level[(0,) * (level.ndim - 2)][:4, :4])
    return PeerLayers(images, labels)


def assert_peers_accept(path: str | os.PathLike, *, channels: int | None = None,
                        labels: int | None = None) -> PeerLayers:
    """Validate the OME-Zarr 0.5 store at ``path`` with ome-zarr-models and yaozarrs, open it
    in napari-ome-zarr and return what that gave. ``channels``: how many image channels
    napari-ome-zarr must show (one layer each); ``labels``: how many label layers."""
    import yaozarrs

    path = os.fspath(path)
    _validate_ome_zarr_models(path)
    yaozarrs.validate_zarr_store(path)
    peer = _open_in_napari_ome_zarr(path)
    root = zarr.open_group(path, mode="r").attrs.asdict()["ome"]
    omero = root.get("omero")
    if omero is not None:  # complete channels: what napari-ome-zarr indexes per channel
        for ch in omero["channels"]:
            assert {"color", "window", "label", "active"} <= set(ch), ch
            assert {"start", "end", "min", "max"} <= set(ch["window"]), ch
    if channels is not None:
        assert len(peer.image_names()) == channels, peer.image_names()
        if omero is not None:
            assert len(omero["channels"]) == channels
    if labels is not None:
        assert len(peer.labels) == labels
    return peer


def assert_peers_accept_s3(url: str, endpoint: str, tmp_path: Path, **expect: Any) -> PeerLayers:
    """:func:`assert_peers_accept` for a store on the moto S3 server: checked on a copy of
    its objects (the peer readers take no storage options)."""
    from napari_zshard.testing.s3_server import s3_filesystem

    local = tmp_path / f"copy-{url.rstrip('/').rsplit('/', 1)[-1]}"
    s3_filesystem(endpoint).get(url.removeprefix("s3://").rstrip("/") + "/", str(local),
                                recursive=True)
    return assert_peers_accept(local, **expect)
