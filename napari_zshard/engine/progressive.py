"""The first part of an inner chunk, decoded alone: what a plane at the top of a chunk needs.

A z-step into a chunk row nobody has read needs one plane of every inner chunk in the row.
In C order that plane lies at the same depth in each chunk, and a zstd or gzip stream yields
its output in order: the planes at the top of a 64-deep chunk come out of the stream's first
block. So for a cold read the engine decodes only that prefix of each chunk, straight into
the chunk's final array, the read returns, and the rest is decoded later at low priority
(:meth:`Prefix.finish`), ready for the next planes.

zstd goes through ``zstandard``'s public streaming reader: this thread's decompressor reads
the prefix into the array (to the end of the zstd block that holds it, less a byte, see
:data:`ZSTD_BLOCK`: 15 of the 16 planes of a 64² uint16 block come at no extra cost) and is
closed at once; :meth:`Prefix.finish` decodes the chunk whole by the ordinary one-shot path,
the prefix again, into this thread's scratch buffer, and copies what follows the prefix into
the array (readers are copying the prefix out of it meanwhile). Measured on a row of 256 64³
uint16 chunks of image-like data, zstd level 3 without / with frame checksum, one thread,
options interleaved, three runs on this 2-core machine under other load
(``bench/bench_prefix.py``; CPU ms; the whole decode of the row 134-171 ms):

==========================================  ===========  ===============  ==================
option                                      prefix (ms)  prefix + rest    held, 256 paused
==========================================  ===========  ===============  ==================
(d) whole decode, no prefix                 134-171      1.00x            0.1 MiB
(a) buffer-less block decoder, resumed       42-69       1.04-1.25x       19 MiB RSS
    (the private cffi module; the previous
    version of this module)
(b) public stream reader per chunk, paused   60-75       1.41-1.59x       53 MiB RSS
(c) prefix streamed, then whole (this one)   35-46       1.18-1.35x       0.2 MiB
==========================================  ===========  ===============  ==================

A cold plane at the top of a row waits for the prefix column: (c) is 3-4x sooner than a
whole decode and as soon as (a) or sooner (no context allocated per chunk). Decoding the
prefix twice costs a fifth to a third more CPU for the rows read that way (25-50 ms a row of
256 chunks, at low priority behind the reads); (b) costs more still (each paused decoder
page-faults its own window buffer and copies through it) and holds it until its chunk is
finished. Without ``zstandard`` zstd chunks are decoded whole (:func:`progressive_codecs`
says None).

gzip/zlib streams are resumed where they stopped, through ``zlib``'s own decompressor object
(each paused one holds its 32 KiB window and one input piece, :class:`_ZlibStream`): the row's
prefixes in 15 ms (53 ms before, when each copied the rest of its input), 7.5 MiB held
(77 MiB before), prefixes + rests 0.86x the whole decode (665 ms).

blosc (the commonest codec in converted data) is decoded whole: numcodecs 0.16 has no partial
decode (``Blosc.decode_partial`` is gone), and a 64³ uint16 blosc-zstd-shuffle chunk is two
256 KiB blosc blocks, so decoding only the first would cost half the whole decode (42 of 84 ms
for the row, measured as a one-block buffer), against a quarter for zstd.

Integrity is unchanged: a crc32c over the stored bytes is verified before anything is decoded,
and the rest is checked as the ordinary path checks it (zstd's frame checksum, the output size,
a stream that would overflow the chunk). A chunk without a checksum that is damaged past the
prefix fails :meth:`Prefix.finish`, and every read that needs more than the prefix raises.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import CorruptDataError
from .codecs import (
    ChunkCodecs,
    Crc32cCodec,
    ZlibCodec,
    ZstdCodec,
    declared_size_error,
    zlib_overflow_error,
    zstd_decompressor,
    zstd_frame_content_size,
)

#: Above this share of a chunk, decoding a prefix first saves too little: decode it whole.
MAX_PREFIX_SHARE = 0.5
#: zstd's largest block (ZSTD_BLOCKSIZE_MAX). A prefix is read to one byte before the end of
#: the block that holds it: that block is decoded whole anyway, and a read that ends exactly
#: at a block's end makes zstd's streaming decoder go on to decode the next block too (its
#: output buffer flushed, it reads on) -- twice the work for a 128 KiB prefix.
ZSTD_BLOCK = 128 * 1024
#: Stored bytes handed to ``zlib`` at a time while decoding a prefix (see :class:`_ZlibStream`).
ZLIB_FEED = 16 * 1024


def progressive_codecs(codecs: ChunkCodecs, dtype: np.dtype) -> ChunkCodecs | None:
    """``codecs`` when its chunks can be decoded front to back straight into the chunk's final
    array (C order, native byte order, no filters, one zstd or gzip stream, optionally crc32c
    after it), else None."""
    if codecs.filters or codecs.order is not None or codecs.stored_dtype(dtype) != dtype:
        return None
    chain = codecs.bytes_codecs
    if chain and isinstance(chain[-1], Crc32cCodec):
        chain = chain[:-1]
    if len(chain) != 1 or not isinstance(chain[0], ZstdCodec | ZlibCodec):
        return None
    if isinstance(chain[0], ZstdCodec) and zstd_decompressor() is None:
        return None
    return codecs


class Prefix:
    """A chunk's array whose first ``done`` bytes (C order) are decoded; the rest is undefined
    until :meth:`finish` decodes it into the same array."""

    __slots__ = ("_rest", "array", "done")

    def __init__(self, array: np.ndarray, done: int, rest: Callable[[], bool] | None):
        self.array, self.done, self._rest = array, done, rest

    def finish(self) -> np.ndarray | None:
        """Decode the rest; the whole array, or None when more bytes follow the stream (the
        caller hands them to the one-shot decoder, which tells). Raises what a whole decode
        raises; a chunk already whole (decoded by :func:`decode_prefix`, or finished) is
        returned as it is."""
        rest, self._rest = self._rest, None
        if rest is None:
            if self.done == self.array.nbytes:
                return self.array
            raise RuntimeError("chunk already finished")  # its rest failed
        if not rest():
            return None
        self.done = self.array.nbytes
        return self.array


def decode_prefix(codecs: ChunkCodecs, data, shape: tuple[int, ...], dtype: np.dtype,
                  nbytes: int, out: np.ndarray | None = None) -> Prefix:
    """Decode at least the first ``nbytes`` bytes (C order) of a chunk stored as ``data``
    (into ``out``, a C-ordered array of ``shape`` and ``dtype``, when given)."""
    payload = memoryview(data).cast("B")
    chain = codecs.bytes_codecs
    if isinstance(chain[-1], Crc32cCodec):
        payload = chain[-1].decode(payload, None)  # raises ChecksumError
        chain = chain[:-1]
    array = np.empty(shape, dtype) if out is None else out
    flat = array.reshape(-1).view("B")
    if isinstance(chain[0], ZlibCodec):
        stream = _ZlibStream(payload, flat, chain[0])
        stream.run(nbytes)
        return Prefix(array, stream.done, stream.finish)
    block_end = (nbytes // ZSTD_BLOCK + 1) * ZSTD_BLOCK
    if block_end >= flat.nbytes:  # the prefix's block is the last: the one-shot path, once
        codecs.decode(data, shape, dtype, out=array, checksum_verified=True)
        return Prefix(array, flat.nbytes, None)
    done = _zstd_prefix(payload, flat, block_end - 1)
    if done < nbytes:
        raise CorruptDataError(f"truncated stream: {done} of {flat.nbytes} bytes decoded")

    def rest() -> bool:
        """The whole chunk again, the prefix included (see the docstring), into this thread's
        scratch buffer, and what follows the prefix copied into the array: readers copy the
        prefix out of the array meanwhile, and a zstd decoder writes its output area more
        than once (literals first, matches over them)."""
        whole = _scratch(flat.nbytes).view(dtype).reshape(shape)
        codecs.decode(data, shape, dtype, out=whole, checksum_verified=True)
        flat[done:] = whole.reshape(-1).view("B")[done:]
        return True

    return Prefix(array, done, rest)


_per_thread = threading.local()


def _scratch(nbytes: int) -> np.ndarray:
    """This thread's scratch buffer of at least ``nbytes`` (kept: one per decode thread)."""
    buf = getattr(_per_thread, "scratch", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _per_thread.scratch = np.empty(nbytes, "B")
    return buf[:nbytes]


def _zstd_prefix(payload: memoryview, out: np.ndarray, want: int) -> int:
    """Decode the first ``want`` bytes of the zstd frame(s) in ``payload`` into ``out``;
    how many were (fewer when the stream ends sooner)."""
    import zstandard

    declared = zstd_frame_content_size(payload)  # raises on a bad magic number
    if declared is not None and declared != out.nbytes:
        raise declared_size_error("zstd frame", declared, out.nbytes)
    view, done = out.data, 0
    try:
        with zstd_decompressor().stream_reader(payload, read_across_frames=True) as reader:
            while done < want:
                n = reader.readinto(view[done:want])
                if not n:
                    break
                done += n
    except zstandard.ZstdError as e:
        raise CorruptDataError(f"cannot decompress chunk: {e}") from e
    return done


class _ZlibStream:
    """One gzip or zlib stream, decoded into ``out`` piece by piece (``zlib``'s own object).

    The prefix is fed in pieces of :data:`ZLIB_FEED` stored bytes: ``zlib`` keeps a copy of
    the input it did not consume (``unconsumed_tail``) for as long as the object lives, and
    a whole chunk's worth of it per paused stream held 77 MiB for a row of 256 64³ uint16
    chunks (``bench/bench_prefix.py``); now each holds its window and one piece.
    """

    def __init__(self, src: memoryview, out: np.ndarray, codec: ZlibCodec):
        self._d: Any = zlib.decompressobj(31 if codec.gzip else 15)  # None once finished
        self._src: memoryview | None = src
        self._in, self._out, self._name = 0, out, codec.name
        self.total, self.done = out.nbytes, 0

    def run(self, until: int) -> None:
        """Decode until ``until`` bytes are out (all of them: to the stream's end, checked)."""
        d, total, src = self._d, self.total, self._src
        if d is None or src is None:
            raise RuntimeError("stream already finished")
        last = until >= total
        while self.done < until and not d.eof:
            done, pos = self.done, self._in
            feed = src[pos:] if last else src[pos:pos + ZLIB_FEED]
            if not feed:
                break
            try:
                # one byte more than the chunk holds at the end: an overflowing stream shows
                piece = d.decompress(feed, total - done + 1 if last else until - done)
            except zlib.error as e:
                raise CorruptDataError(f"cannot decompress {self._name} chunk: {e}") from e
            if done + len(piece) > total:
                raise zlib_overflow_error(d, done + len(piece), total, f"{self._name} stream")
            self._out[done:done + len(piece)] = np.frombuffer(piece, "B")
            self.done, self._in = done + len(piece), pos + len(feed) - len(d.unconsumed_tail)
        if self.done < until or (last and not d.eof):
            raise CorruptDataError(f"truncated {self._name} stream: {self.done} of {total} "
                                   "bytes decoded")

    def finish(self) -> bool:
        try:
            self.run(self.total)
        finally:
            self._d = self._src = None
        return True
