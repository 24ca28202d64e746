"""Where an array's voxels live: the grid arithmetic of voxel → inner chunk → shard → slot.

One :class:`ShardLayout` per array (``ArrayMeta.layout``), used by the read planner, the
reader, the shard writer and updater, the annotation commit and the reshard cost model, so
that "which shard holds this chunk, at which index entry" is computed in one place. An
unsharded array is the degenerate layout of one chunk per object.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

Coords = tuple[int, ...]


@dataclass(frozen=True)
class ShardLayout:
    """The chunk and shard grids of an array of ``shape``.

    ``chunk_shape`` is the decode unit (the inner chunk of a shard, or the chunk of an
    unsharded array); ``chunks_per_shard`` how many of them each stored object holds per
    axis (all 1 when unsharded). A chunk's *slot* is its C-order position inside its shard:
    the entry of the shard index that locates it.
    """

    shape: Coords
    chunk_shape: Coords
    chunks_per_shard: Coords

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def shard_shape(self) -> Coords:
        return tuple(c * n for c, n in zip(self.chunk_shape, self.chunks_per_shard, strict=True))

    @property
    def chunk_grid(self) -> Coords:
        """Number of chunks along each axis (the last ones may be partial)."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunk_shape, strict=True))

    def chunk_ranges(self, region: Sequence[slice]) -> list[range]:
        """Per axis, the chunk coordinates the (clipped, non-empty) ``region`` touches."""
        return [range(s.start // c, (s.stop - 1) // c + 1)
                for s, c in zip(region, self.chunk_shape, strict=True)]

    def shard_of(self, chunk: Coords) -> Coords:
        return tuple(g // n for g, n in zip(chunk, self.chunks_per_shard, strict=True))

    def locate(self, chunk: Coords) -> tuple[Coords, int]:
        """``(shard, slot)`` of a chunk."""
        shard, slot = [], 0
        for g, n in zip(chunk, self.chunks_per_shard, strict=True):
            q, r = divmod(g, n)
            shard.append(q)
            slot = slot * n + r
        return tuple(shard), slot

    def shards_of(self, chunks: Iterable[Coords]) -> dict[Coords, list[Coords]]:
        """``chunks`` grouped by the shard holding them (first-seen order)."""
        out: dict[Coords, list[Coords]] = {}
        for c in chunks:
            out.setdefault(self.shard_of(c), []).append(c)
        return out

    def shards_spanned(self, ranges: Sequence[range]) -> Iterator[Coords]:
        """The shards holding the chunks ``ranges`` (per axis, as :meth:`chunk_ranges`) span."""
        return itertools.product(*(range(r.start // n, (r.stop - 1) // n + 1)
                                   for r, n in zip(ranges, self.chunks_per_shard, strict=True)))

    def shards_of_region(self, region: Sequence[slice]) -> Iterator[Coords]:
        """The shards a (clipped, non-empty) voxel ``region`` touches."""
        return self.shards_spanned(self.chunk_ranges(region))

    def chunks_of(self, shard: Coords) -> Iterator[Coords]:
        """Every chunk position of ``shard`` (also those past the array's edge), slot order."""
        return itertools.product(*(range(i * n, (i + 1) * n)
                                   for i, n in zip(shard, self.chunks_per_shard, strict=True)))

    def shard_region(self, shard: Coords) -> tuple[slice, ...]:
        """The voxels of ``shard``, clipped to the array."""
        return tuple(slice(i * s, min((i + 1) * s, n))
                     for i, s, n in zip(shard, self.shard_shape, self.shape, strict=True))
