"""The diff a commit writes (``commits/<id>/diff.npz``): per global level-0 inner chunk, the
flat indexes of the voxels an annotator changed with their base and new values. It is what
repair replays, so every format ever written stays readable."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import DTypeLike

Coords = tuple[int, ...]


#: the format :meth:`Diff.to_npz` writes; 1 = absolute indexes, 2 = delta-coded indexes
DIFF_FORMAT = 2
_INDEX_CODING = {1: "absolute", 2: "delta"}


def _encode_index(index: np.ndarray, coding: str) -> bytes:
    index = np.asarray(index, dtype=np.uint32)
    if coding == "delta":
        if len(index) > 1 and not (index[1:] > index[:-1]).all():
            raise ValueError("diff indexes must be strictly ascending")
        return np.diff(index, prepend=np.uint32(0)).astype(np.uint32, copy=False).tobytes()
    return index.tobytes()


class _Chunks(Mapping):
    """``Diff.chunks``: chunk -> (flat indexes, base, ours), decompressed on access."""

    def __init__(self, diff: Diff):
        self._diff = diff

    def __getitem__(self, chunk: Coords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._diff.get(chunk)

    def __iter__(self):
        return iter(self._diff._blobs)

    def __len__(self) -> int:
        return len(self._diff._blobs)


class Diff:
    """Changed voxels per global level-0 inner chunk: (flat indexes in the chunk, base, ours),
    each chunk's kept as one zstd frame (a fully repainted region costs its compressed size,
    not 12 bytes per voxel). A chunk changed whole stores no indexes.

    The indexes (ascending) are stored as differences from the previous one (format 2): a
    painted blob is mostly runs of 1, which zstd packs ~25x smaller than absolute indexes, so
    the diff stays small next to the shards a commit rewrites. Diffs of format 1 (absolute
    indexes, no ``format`` field) are still read: repair replays old intents."""

    def __init__(self, dtype: DTypeLike = np.uint32, chunk_size: int = 0, *,
                 format: int = DIFF_FORMAT):
        if format not in _INDEX_CODING:
            raise ValueError(f"unknown diff format {format} (this version reads "
                             f"{sorted(_INDEX_CODING)})")
        self.dtype = np.dtype(dtype)
        self.chunk_size = int(chunk_size)
        self.format = format
        self.index_coding = _INDEX_CODING[format]
        self._blobs: dict[Coords, bytes] = {}
        self._counts: dict[Coords, int] = {}
        self.chunks = _Chunks(self)

    @property
    def voxels(self) -> int:
        return sum(self._counts.values())

    def put(self, chunk: Coords, index: np.ndarray, base: np.ndarray, ours: np.ndarray) -> None:
        import zstandard

        whole = len(index) == self.chunk_size
        parts = [] if whole else [_encode_index(index, self.index_coding)]
        parts += [np.asarray(base, dtype=self.dtype).tobytes(),
                  np.asarray(ours, dtype=self.dtype).tobytes()]
        frame = zstandard.ZstdCompressor(level=1).compress(b"".join(parts))
        # a copy of its own size: the frame keeps the allocation of its worst-case bound
        # (~the input size), which would make the diff of a repainted region as large as it
        self._blobs[chunk] = bytes(memoryview(frame))
        self._counts[chunk] = len(index)

    def get(self, chunk: Coords) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import zstandard

        n = self._counts[chunk]
        whole = n == self.chunk_size
        size = (0 if whole else 4 * n) + 2 * n * self.dtype.itemsize
        raw = zstandard.ZstdDecompressor().decompress(self._blobs[chunk], max_output_size=size)
        if len(raw) != size:
            raise ValueError(f"diff of chunk {chunk} is damaged")
        rest: bytes | memoryview
        if whole:
            index = np.arange(n, dtype=np.uint32)
            rest = raw
        else:
            index = np.frombuffer(raw, dtype=np.uint32, count=n)
            if self.index_coding == "delta":
                index = np.cumsum(index, dtype=np.uint32)
            rest = memoryview(raw)[4 * n:]
        values = np.frombuffer(rest, dtype=self.dtype, count=2 * n)
        return index, values[:n], values[n:]

    def to_npz(self) -> bytes:
        import io

        keys = sorted(self._blobs)
        nd = len(keys[0]) if keys else 0
        buf = io.BytesIO()
        np.savez(buf, chunks=np.array(keys, dtype=np.int64).reshape(len(keys), nd),
                 counts=np.array([self._counts[k] for k in keys], dtype=np.int64),
                 sizes=np.array([len(self._blobs[k]) for k in keys], dtype=np.int64),
                 blob=np.frombuffer(b"".join(self._blobs[k] for k in keys), dtype=np.uint8),
                 dtype=np.array(self.dtype.str), chunk_size=np.array(self.chunk_size),
                 format=np.array(self.format))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, raw: bytes) -> Diff:
        import io

        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            fmt = int(z["format"]) if "format" in z.files else 1
            out = cls(str(z["dtype"]), int(z["chunk_size"]), format=fmt)
            blob = z["blob"].tobytes()
            pos = 0
            for k, n, size in zip(z["chunks"], z["counts"], z["sizes"], strict=True):
                chunk = tuple(int(c) for c in k)
                out._blobs[chunk] = blob[pos:pos + int(size)]
                out._counts[chunk] = int(n)
                pos += int(size)
        return out
