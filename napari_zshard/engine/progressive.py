"""The first part of an inner chunk, decoded alone: what a plane at the top of a chunk needs.

A z-step into a chunk row nobody has read needs one plane of every inner chunk in the row.
In C order that plane lies at the same depth in each chunk, and a zstd or gzip stream yields
its output in order: the planes at the top of a 64-deep chunk are in the stream's first block.
So for a cold read the engine decodes only that prefix of each chunk, straight into the
chunk's final array, the read returns, and the decoder is later resumed at low priority where
it stopped (:meth:`Prefix.finish`), ready for the next planes. Nothing is decoded twice.

zstd streams are decoded block by block with zstd's buffer-less API (through the cffi module
that ships with ``zstandard``): each block goes from the stored bytes into the array, and its
back-references point into the array itself, so a paused decoder holds no window buffer — only
its context (96 KiB, re-used from a small pool). A cold row of 256 chunks keeps 256 of them
until its chunks are finished: peak RSS of a 64-plane scroll 322 MiB, against 301 MiB when
each chunk is decoded whole at once. Measured on a row of 256 64³ uint16 chunks
(one thread): first blocks then the rest 1.11-1.14x the CPU time of one-shot decodes, where
decoding the first block and then the whole chunk again cost 1.23-1.30x. What is left of the
difference is the cache: resuming a chunk, its first block is no longer in the CPU's cache.
gzip/zlib streams resume through ``zlib``'s own decompressor object.

Integrity is unchanged: a crc32c over the stored bytes is verified before anything is decoded,
and the rest is checked as the ordinary path checks it (zstd's frame checksum, the output size,
a stream that would overflow the chunk). A chunk without a checksum that is damaged past the
prefix fails that decode, and every read that needs more than the prefix raises.
"""

from __future__ import annotations

import ctypes
import threading
import zlib

import numpy as np

from ..errors import CorruptDataError, DecompressionBombError
from .codecs import (
    ChunkCodecs,
    Crc32cCodec,
    ZlibCodec,
    ZstdCodec,
    declared_size_error,
    zlib_overflow_error,
    zstd_frame_content_size,
)

#: Above this share of a chunk, decoding a prefix first saves too little: decode it whole.
MAX_PREFIX_SHARE = 0.5


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
    if isinstance(chain[0], ZstdCodec) and _zstd_lib() is None:
        return None
    return codecs


class Prefix:
    """A chunk's array whose first ``done`` bytes (C order) are decoded; the rest is undefined
    until :meth:`finish` decodes it, into the same array, from where the decoder stopped."""

    __slots__ = ("_stream", "array", "done")

    def __init__(self, array: np.ndarray, done: int, stream):
        self.array, self.done, self._stream = array, done, stream

    def finish(self) -> np.ndarray | None:
        """Decode the rest; the whole array, or None when more bytes follow the stream (a
        second stream, or garbage: the caller hands them to the one-shot decoder, which
        tells). Raises what a whole decode raises."""
        stream, self._stream = self._stream, None
        if stream is None:
            raise RuntimeError("chunk already finished")
        try:
            if not stream.run(stream.total):
                return None
        finally:
            stream.close()
        self.done = stream.total
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
    out = array.reshape(-1).view("B")
    codec = chain[0]
    if isinstance(codec, ZstdCodec):
        declared = zstd_frame_content_size(payload)
        if declared is not None and declared != out.nbytes:
            raise declared_size_error("zstd frame", declared, out.nbytes)
        stream = _ZstdStream(payload, out)
    else:
        stream = _ZlibStream(payload, out, codec)
    try:
        stream.run(nbytes)
    except BaseException:
        stream.close()
        raise
    if stream.done < nbytes:
        stream.close()
        raise CorruptDataError(f"truncated stream: {stream.done} of {out.nbytes} bytes decoded")
    return Prefix(array, stream.done, stream)


class _ZstdStream:
    """One zstd frame decoded block by block into ``out`` (zstd's buffer-less API)."""

    def __init__(self, src: memoryview, out: np.ndarray):
        ffi, lib = _zstd_lib()
        self._ffi, self._lib = ffi, lib
        self._dctx = _take_dctx()
        if lib.ZSTD_isError(lib.ZSTD_decompressBegin(self._dctx)):
            raise CorruptDataError("cannot start a zstd decoder")
        # Raw addresses, the buffers kept alive here: a cffi buffer view of a memoryview
        # crashes the garbage collector when both end up in one reference cycle.
        self._keep = stored = np.frombuffer(src, "B"), out
        self._src = ffi.cast("char *", _address(stored[0]))
        self._out_address = _address(out)
        self._dst = ffi.cast("char *", self._out_address)
        self._src_len, self._in, self.total, self.done = len(src), 0, out.nbytes, 0
        # zstd's error codes are the top values of size_t (what ZSTD_isError tests); a block
        # decodes to at most 128 KiB: compared here, without another call into C per block
        self._errors = 1 << (8 * ffi.sizeof("size_t") - 1)

    def run(self, until: int) -> bool:
        """Decode blocks until ``until`` bytes are out or the frame ends. Returns False when
        stored bytes follow the finished frame (a second frame, or garbage: the one-shot
        decoder tells which); raises on damage, truncation and overflow."""
        lib, dctx, src, dst = self._lib, self._dctx, self._src, self._dst
        if dctx is None:
            raise RuntimeError("zstd stream already closed")
        total, src_len, errors = self.total, self._src_len, self._errors
        done, pos = self.done, self._in
        if done:  # resumed: read the window back into the CPU cache in one sequential pass
            _warm(self._out_address + max(0, done - _WINDOW), min(done, _WINDOW))
        try:
            while True:
                n = lib.ZSTD_nextSrcSizeToDecompress(dctx)
                if n == 0:  # the frame is complete (its checksum, if any, verified)
                    break
                if done >= until and until < total:
                    break
                if pos + n > src_len:
                    raise CorruptDataError(
                        f"truncated zstd stream: {done} of {total} bytes decoded")
                r = lib.ZSTD_decompressContinue(dctx, dst + done, total - done, src + pos, n)
                if r >= errors:
                    name = self._ffi.string(lib.ZSTD_getErrorName(r)).decode()
                    if "too small" in name:
                        raise DecompressionBombError(
                            f"compressed chunk expands beyond the {total} bytes the chunk holds")
                    raise CorruptDataError(f"cannot decompress chunk: {name}")
                pos += n
                done += r
        finally:
            self.done, self._in = done, pos
        if until >= total:
            if pos < src_len:  # more after the frame: the one-shot decoder judges it
                return False
            if done < total:
                raise CorruptDataError(f"chunk decompresses to {done} bytes, expected {total}")
        return True

    def close(self) -> None:
        dctx, self._dctx = self._dctx, None
        self._keep = None
        if dctx is not None:
            _give_dctx(dctx)


#: How much of a paused chunk's output is read back into the cache before its decoder
#: resumes. The blocks after a chunk's first one copy matches from all of it: read
#: sequentially first (a memmove, GIL released), the rest of a row of 256 64³ uint16 chunks
#: decoded in 117-118 ms of CPU instead of 126-129 ms; a 64 KiB window or less gained nothing.
_WINDOW = 128 * 1024
_thread = threading.local()


def _warm(address: int, nbytes: int) -> None:
    scratch = getattr(_thread, "scratch", None)
    if scratch is None:
        scratch = _thread.scratch = ctypes.create_string_buffer(_WINDOW)
    ctypes.memmove(scratch, address, nbytes)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class _ZlibStream:
    """One gzip or zlib stream, decoded into ``out`` piece by piece (``zlib``'s own object)."""

    def __init__(self, src: memoryview, out: np.ndarray, codec: ZlibCodec):
        self._d = zlib.decompressobj(31 if codec.gzip else 15)
        self._tail, self._out, self._name = src, out, codec.name
        self.total, self.done = out.nbytes, 0

    def run(self, until: int) -> bool:
        d, done, total = self._d, self.done, self.total
        try:
            # one byte more than the chunk holds when finishing: an overflowing stream shows
            piece = d.decompress(self._tail, until - done if until < total else total - done + 1)
        except zlib.error as e:
            raise CorruptDataError(f"cannot decompress {self._name} chunk: {e}") from e
        if done + len(piece) > total:
            raise zlib_overflow_error(d, done + len(piece), total, f"{self._name} stream")
        self._out[done:done + len(piece)] = np.frombuffer(piece, "B")
        self.done, self._tail = done + len(piece), d.unconsumed_tail
        if until >= total and (not d.eof or self.done != total):
            raise CorruptDataError(f"truncated {self._name} stream: {self.done} of {total} "
                                   "bytes decoded")
        return True

    def close(self) -> None:
        self._d = self._tail = None


def _zstd_lib():
    """``(ffi, lib)`` of the cffi module that ships with ``zstandard``; None without it."""
    global _lib
    if _lib is None:
        try:
            from zstandard import _cffi
        except ImportError:  # optional speed-up: chunks are then decoded whole
            _lib = False
        else:
            _lib = (_cffi.ffi, _cffi.lib)
    return _lib or None


_lib = None
#: Decoder contexts not in use (list.pop/append are atomic): a new one allocates 96 KiB that
#: the kernel zero-fills on first touch.
_idle: list = []
_MAX_IDLE = 64


def _take_dctx():
    if _idle:
        try:
            return _idle.pop()
        except IndexError:  # another thread took the last one
            pass
    ffi, lib = _zstd_lib()
    dctx = lib.ZSTD_createDCtx()
    if dctx == ffi.NULL:
        raise MemoryError("cannot allocate a zstd decoder")
    # freed when dropped: a prefix whose rest is never decoded leaks nothing
    return ffi.gc(dctx, lib.ZSTD_freeDCtx, size=lib.ZSTD_sizeof_DCtx(dctx))


def _give_dctx(dctx) -> None:
    if len(_idle) < _MAX_IDLE:
        _idle.append(dctx)
