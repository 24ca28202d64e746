"""Writing the merge's outputs (``labels/consensus``, ``labels/conflicts``) so that a merge
killed at any point never leaves one that looks complete.

Order: unlist the name from ``labels/zarr.json`` and delete its group ``zarr.json`` (from now
on nobody takes it for a finished label image), write level 0 shard by shard, the coarser
levels (mode of each block, the writer's own task), the tables, then the group ``zarr.json``
and finally list it again (compare-and-swap). A rerun simply redoes everything: every shard is
overwritten (or deleted when all background), so no piece of an older run survives.

Nothing here depends on time, thread count or store: the bytes are a function of the values.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...engine.create import create_array
from ...engine.metadata import ArrayMeta
from ...engine.shard_writer import iter_shards, write_shard
from ...multiscale.write import group_json, write_downsampled_shard
from ...ome import parse_label_names
from ...store import Store
from ..labelimage import LabelImage, _list_label_image

Coords = tuple[int, ...]
OUTPUT_DTYPE = np.dtype(np.uint32)


@dataclass
class OutputImage:
    store: Store  # the image's root store
    name: str
    metas: list[ArrayMeta]
    stores: list[Store]
    factors: tuple[tuple[int, ...], ...]
    attributes: dict[str, Any]

    def write0(self, shard: Coords, block: np.ndarray) -> int:
        return write_shard(self.stores[0], self.metas[0], shard, block.astype(OUTPUT_DTYPE))

    def zshard_key(self, rel: str) -> str:
        return f"labels/{self.name}/zshard/{rel}"


def _unlist(store: Store, name: str) -> None:
    def remove(current: bytes | None) -> bytes | None:
        if current is None:
            return None
        doc = json.loads(current)
        ome = (doc.get("attributes") or {}).get("ome") or {}
        names = [n for n in ome.get("labels") or [] if n != name]
        if names == list(ome.get("labels") or []):
            return current
        doc["attributes"]["ome"] = {**ome, "labels": names}
        return json.dumps(doc, indent=2).encode()

    raw = store.read("labels/zarr.json")
    if raw is not None and name in parse_label_names(
            json.loads(raw).get("attributes") or {}):
        store.update("labels/zarr.json", remove, tries=50)


def begin(store: Store, name: str, template: LabelImage) -> OutputImage:
    """Hide ``labels/<name>`` (unlisted, no group document) and (re)create its level arrays
    with the template's levels, chunking and sharding."""
    _unlist(store, name)
    store.delete(f"labels/{name}/zarr.json")
    doc = json.loads(store.read(f"{template.prefix}/zarr.json") or b"{}")
    ms = doc["attributes"]["ome"]["multiscales"][0]
    dims = [a["name"] for a in ms["axes"]]
    metas, stores = [], []
    for path, meta in zip(template.paths, template.metas, strict=True):
        level_store, m = create_array(
            store.child(f"labels/{name}/{path}"), shape=meta.shape, dtype=OUTPUT_DTYPE,
            chunks=meta.chunk_shape, shards=meta.grid_shape, fill_value=0,
            dimension_names=dims, overwrite=True)
        metas.append(m)
        stores.append(level_store)
    ome = {"version": "0.5",
           "multiscales": [{"axes": ms["axes"], "datasets": ms["datasets"], "name": name}],
           "image-label": {"version": "0.5", "source": {"image": "../../"}}}
    return OutputImage(store=store, name=name, metas=metas, stores=stores,
                       factors=template.factors, attributes={"ome": ome})


def map_shards(fn: Callable, items: Iterable, *, workers: int, client: Any = None
               ) -> Iterable:
    """``fn`` over ``items`` in order, on threads (or a dask.distributed client).

    Not :class:`~napari_zshard.engine.shard_tasks.ShardTaskRunner`, which yields in completion
    order: the merge folds per-shard statistics (float coordinate sums among them) in shard
    order, so that its outputs are the same bytes whatever the thread count."""
    items = list(items)
    if client is not None:
        futures = client.map(fn, items, pure=False)
        for f in futures:
            yield f.result()
        return
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zshard-merge") as pool:
        yield from pool.map(fn, items)


def pyramid_steps(out: OutputImage, *, workers: int, client: Any = None) -> Iterator[None]:
    """Levels 1.. from the level below, by mode (what the writer does for labels); yields
    after each shard."""
    for level in range(1, len(out.metas)):
        meta, store, prev = out.metas[level], out.stores[level], out.stores[level - 1]
        prev_meta, f = out.metas[level - 1], out.factors[level - 1]

        def one(shard, meta=meta, store=store, prev=prev, prev_meta=prev_meta, f=f):
            return write_downsampled_shard(store, meta, prev, prev_meta, f, "mode", shard)

        for _ in map_shards(one, iter_shards(meta), workers=workers, client=client):
            yield


def publish(out: OutputImage, tables: dict[str, bytes]) -> None:
    """Tables, then the group document, then the listing: the label image is complete."""
    for rel, data in sorted(tables.items()):
        out.store.write(out.zshard_key(rel), data)
    out.store.write(f"labels/{out.name}/zarr.json", group_json(out.attributes))
    _list_label_image(out.store, out.name)


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    """A CSV table with fixed formatting (floats to 6 significant digits) so it is the same
    bytes on every machine."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        if isinstance(v, (list, tuple)):
            return " ".join(cell(x) for x in v)
        text = str(v)
        return f'"{text}"' if any(c in text for c in ',"\n') else text

    lines = [",".join(header)] + [",".join(cell(v) for v in r) for r in rows]
    return ("\n".join(lines) + "\n").encode()
