"""Dask arrays over the engine: one dask array per Zarr array, blocks sized for the reader.

napari computes dask arrays with task fusion off, on the Qt thread, as many blocks at once as
there are cores, and each block a view touches is built whole. So the default ("napari") blocks
are one plane deep along the leading axes and a canvas tile wide; the engine's chunk cache and
read-ahead give the re-use along z. Notebook users can ask for shard-aligned blocks.

With fusion off dask cannot push a slice into the read that feeds it: it builds the blocks,
then cuts them. So the engine's dask array pushes the slice itself when it is taken: slicing it
with ints and step-1 slices (what napari does on every step, for the level it shows and again
for the thumbnail) gives a one-task dask array that reads exactly that region through the
engine, which decodes in parallel itself. Other selections, and regions too big for one task,
slice block-wise as any dask array does. napari then calls ``np.asarray`` on that slice: with no
scheduler configured, its one task runs right there, without a pass through dask's scheduler.
Measured on a warm 1024² plane: raw engine 0.49 ms; through dask before 2.2 ms, now 0.57 ms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import dask
import dask.array as da
import numpy as np
from dask.local import get_sync

from .cache import generation

if TYPE_CHECKING:
    from .array import ShardedArray

# Pixels along each of the last two axes: about a canvas. napari's slices of the level it shows
# are one-task reads (EngineDaskArray below), so blocks shape block-wise work: a whole-level
# compute, a strided preview, a slice over ONE_TASK_SLICE_BYTES. Measured when they also shaped
# every napari step (warm 1024² uint16 plane, 64³ chunks): dask cost ~4 ms per compute plus
# ~2.5 ms per extra block, so 512² blocks took 11-13 ms and 1024² blocks 6-8 ms. A block stays
# canvas-sized, so a zoomed-in view of a huge plane never builds the whole plane.
NAPARI_TILE = 1024


def napari_blocks(shape: tuple[int, ...], chunks: tuple[int, ...], tile: int = NAPARI_TILE
                  ) -> tuple[int, ...]:
    """One plane deep along leading axes; the last two axes a chunk-aligned tile of ~``tile``."""
    if len(shape) < 2:
        return tuple(max(1, min(n, max(c, tile * tile)))
                     for n, c in zip(shape, chunks, strict=True))
    lead = (1,) * (len(shape) - 2)
    yx = tuple(max(1, min(n, c * max(1, tile // c) if c < tile else c))
               for n, c in zip(shape[-2:], chunks[-2:], strict=True))
    return lead + yx


def block_shape(array: ShardedArray, blocks: str | Sequence[int]) -> tuple[int, ...]:
    if isinstance(blocks, str):
        if blocks == "napari":
            return napari_blocks(array.shape, array.chunks)
        if blocks == "shards":
            return tuple(min(n, s) or 1 for n, s in zip(array.shape, array.shards or array.chunks,
                                                        strict=True))
        if blocks == "chunks":
            return tuple(min(n, c) or 1 for n, c in zip(array.shape, array.chunks, strict=True))
        raise ValueError(f"blocks must be 'napari', 'shards', 'chunks' or a shape, not {blocks!r}")
    shape = tuple(int(b) for b in blocks)
    if len(shape) != array.ndim or any(b <= 0 for b in shape):
        raise ValueError(f"blocks {tuple(blocks)} must have {array.ndim} positive entries")
    return shape


def to_dask(array: ShardedArray, blocks: str | Sequence[int] = "napari"):
    """Wrap ``array`` in a dask array whose blocks have the shape ``blocks`` asks for.

    ``"napari"`` (default): one plane deep, ~1024² tiles. ``"shards"``: one block per shard, for
    notebook and cluster work. ``"chunks"``: one block per inner chunk. Or an explicit shape.
    The graph holds a credential-free reference to the store, never secrets.
    """
    from dask.base import tokenize

    shape = block_shape(array, blocks)
    name = "zshard-" + tokenize(array.url, array.shape, str(array.dtype), shape,
                                array.meta.grid_shape, array.meta.chunk_shape)
    plain = da.from_array(array, chunks=shape, name=name, asarray=False, fancy=False,
                          lock=False, meta=np.empty((0,) * array.ndim, dtype=array.dtype))
    out = EngineDaskArray(plain.dask, plain.name, plain.chunks, meta=plain._meta)
    out._source = array
    return out


#: A slice up to this many bytes becomes one task reading exactly that region; a bigger one is
#: sliced block-wise, so that it computes in parallel tasks (and across a cluster's workers).
ONE_TASK_SLICE_BYTES = 256 * 1024 * 1024


class EngineDaskArray(da.Array):
    """The dask array of an engine array (see the module docstring): its blocks are the ones
    :func:`to_dask` was asked for; a small rectangular slice of it reads that region in one task.

    Anything dask does with it (reductions, ``map_blocks``, pickling) is what it does with any
    dask array, and gives plain dask arrays.
    """

    _source: ShardedArray

    def __getitem__(self, index):
        from .array import _plan_selection

        source = getattr(self, "_source", None)
        try:
            region, post = _plan_selection(index, self.shape)
        except (IndexError, TypeError, ValueError):
            region = None  # fancy, boolean, newaxis, out of bounds: dask's own way and errors
        if source is None or region is None or any(
                isinstance(p, slice) and p != slice(None) for p in post):
            return super().__getitem__(index)
        lengths = [s.stop - s.start for s in region]
        if int(np.prod(lengths)) * self.dtype.itemsize > ONE_TASK_SLICE_BYTES:
            return super().__getitem__(index)
        shape = tuple(n for n, p in zip(lengths, post or (slice(None),) * len(lengths),
                                         strict=True) if not isinstance(p, int))
        digest = hashlib.blake2b(repr((region, post)).encode(), digest_size=8).hexdigest()
        # the generation changes when cached data of the store was found stale or replaced
        # (engine/cache.py): napari caches computed tasks by name, and must not serve the old
        name = f"{self.name}-region-{generation(source.url)}-{digest}"
        graph = {(name, *(0,) * len(shape)): (_read_region, source, region, post)}
        part = RegionDaskArray(graph, name, tuple((n,) for n in shape),
                               meta=np.empty((0,) * len(shape), dtype=self.dtype))
        part._read = (source, region, post)
        return part


class RegionDaskArray(da.Array):
    """A slice of an :class:`EngineDaskArray`: one task, which the engine parallelises inside.

    Its graph is already minimal (nothing to optimise), its one block is its value (nothing to
    concatenate), and unless a scheduler is configured (a ``distributed`` client is) it runs in
    the calling thread: a thread pool would only add a hand-over for the one task.
    """

    __dask_scheduler__ = staticmethod(get_sync)
    _read: tuple | None = None  # (source, region, post) of its one task

    def __array__(self, dtype=None, copy=None, **kwargs):
        """``np.asarray(part)``, what napari calls on every slice: with no scheduler configured,
        the one task runs right here, without dask's compute machinery (graph conversion,
        ordering, a scheduler pass: ~0.8 ms a call, twice per napari step). With a scheduler
        configured (a ``distributed`` client is), it computes as any dask array does."""
        read = self._read
        if read is None or kwargs or copy is False or dask.config.get("scheduler", None):
            return super().__array__(dtype=dtype, copy=copy, **kwargs)
        value = np.asarray(_read_region(*read))  # a new array: nothing else holds it
        return value if dtype is None else value.astype(dtype, copy=False)

    @staticmethod
    def __dask_optimize__(dsk, keys, **kwargs):
        return dsk

    def __dask_postcompute__(self):
        return _the_block, ()


def _read_region(source: ShardedArray, region: tuple[slice, ...], post: tuple) -> np.ndarray:
    out = source.read_region(region)
    return out[post] if post else out


def _the_block(results):
    """The value of a one-block array from what the scheduler returns (nested per axis)."""
    while isinstance(results, list | tuple):
        (results,) = results
    return results
