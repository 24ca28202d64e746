"""The first part of an inner chunk, decoded alone: what a plane at the top of a chunk needs.

A z-step into a chunk row nobody has read needs one plane of every inner chunk in the row.
In C order that plane lies at the same depth in each chunk, and a zstd or gzip stream yields
its output in order: the planes at the top of a 64-deep chunk are in the stream's first block.
So for a cold read the engine decodes only that prefix of each chunk (one call into the
decoder, then the decoder is dropped), the read returns, and each chunk is then decoded whole
at low priority by the ordinary one-shot path, ready for the next planes. The prefix is decoded
twice; measured, keeping a streaming decoder per chunk alive instead (a window buffer each,
a handover of the GIL for every piece) cost more CPU than that.

Integrity is unchanged: a crc32c over the stored bytes is verified before anything is decoded,
and the whole-chunk decode that follows checks everything the ordinary path checks. A chunk
without a checksum that is damaged past the prefix fails that decode, and every read that needs
more than the prefix raises.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np

from ..errors import CorruptDataError, DecompressionBombError
from .codecs import ChunkCodecs, Crc32cCodec, ZlibCodec, ZstdCodec, zstd_frame_content_size

#: zstd's largest block, what encoders use: the unit a zstd stream is decoded in.
BLOCK = 128 * 1024
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
    if isinstance(chain[0], ZstdCodec) and _zstandard() is None:
        return None
    return codecs


def _zstandard():
    try:
        import zstandard
    except ImportError:  # optional speed-up: chunks are then decoded whole
        return None
    return zstandard


def decode_prefix(codecs: ChunkCodecs, data, shape: tuple[int, ...], dtype: np.dtype,
                  nbytes: int) -> tuple[np.ndarray, int]:
    """Decode at least the first ``nbytes`` bytes (C order) of a chunk stored as ``data``.

    Returns a chunk-shaped array and how many of its first bytes are final (up to the end of
    the zstd block holding ``nbytes``: that block is decoded whole anyway); the rest of the
    array is undefined.
    """
    payload = memoryview(data).cast("B")
    chain = codecs.bytes_codecs
    if isinstance(chain[-1], Crc32cCodec):
        payload = chain[-1].decode(payload, None)  # raises ChecksumError
        chain = chain[:-1]
    array = np.empty(shape, dtype)
    out = array.reshape(-1).view("B")
    total = out.nbytes
    codec = chain[0]
    if isinstance(codec, ZstdCodec):
        declared = zstd_frame_content_size(payload)
        if declared is not None and declared > total:
            raise DecompressionBombError(
                f"zstd frame declares {declared} bytes but the chunk holds only {total}")
        if declared is not None and declared != total:
            raise CorruptDataError(f"zstd frame holds {declared} bytes, expected {total}")
        # just short of the block's end: given room up to it, zstd decodes the next block too
        want = max(nbytes, min(total, -(-nbytes // BLOCK) * BLOCK - 1))
        done = _zstd_prefix(payload, out[:want])
    else:
        want = nbytes
        done = _zlib_prefix(payload, out[:want], codec)
    if done < nbytes:
        raise CorruptDataError(f"truncated stream: {done} of {total} bytes decoded")
    return array, done


_local = threading.local()


def _zstd_prefix(payload: memoryview, out: np.ndarray) -> int:
    zstandard = _zstandard()
    # One decompression context per thread, re-used: a new one allocates (and the kernel
    # zero-fills) a window buffer the size of the chunk every time.
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    reader = dctx.stream_reader(payload, read_size=len(payload), read_across_frames=False)
    done = 0
    try:
        while done < out.nbytes:
            n = reader.readinto(out[done:])
            if n == 0:
                break
            done += n
    except zstandard.ZstdError as e:
        raise CorruptDataError(f"cannot decompress chunk: {e}") from e
    finally:
        reader.close()
    return done


def _zlib_prefix(payload: memoryview, out: np.ndarray, codec: ZlibCodec) -> int:
    d = zlib.decompressobj(31 if codec.gzip else 15)
    try:
        chunk = d.decompress(payload, out.nbytes)
    except zlib.error as e:
        raise CorruptDataError(f"cannot decompress {codec.name} chunk: {e}") from e
    out[:len(chunk)] = np.frombuffer(chunk, dtype="B")
    return len(chunk)
