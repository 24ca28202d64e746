"""Inner chunks decompressed front to back, readable while they grow.

A z-step into a chunk row nobody has read needs one plane of every inner chunk in the row.
In C order that plane lies at the same depth in each chunk, and a zstd or gzip stream yields
its output in order: the planes at the top of a 64-deep chunk are in the stream's first block.
So the engine decodes, for every chunk a read waits for, only the prefix that read needs; the
read returns; the rest of each chunk is decoded at low priority, ready for the next planes.
The work is done once: whoever needs more of a chunk advances the same stream.

Integrity is unchanged: a crc32c over the stored bytes is verified before anything is decoded,
the output never grows past the chunk (a longer stream is a decompression bomb) and a stream
that ends early is corrupt. A stream without a checksum that is damaged past the prefix a read
used fails when the rest is decoded, and every later read of that chunk raises.
"""

from __future__ import annotations

import threading
import zlib

import numpy as np

from ..errors import CorruptDataError, DecompressionBombError
from .codecs import ChunkCodecs, Crc32cCodec, ZlibCodec, ZstdCodec, zstd_frame_content_size

#: Output bytes per step when finishing a chunk (a zstd block).
STEP = 128 * 1024


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


class ProgressiveChunk:
    """One inner chunk whose stream is decoded into its final array as far as readers need.

    ``array`` has the chunk's shape and dtype; its first :attr:`done` bytes (C order) are final.
    """

    def __init__(self, codecs: ChunkCodecs, data, shape: tuple[int, ...], dtype: np.dtype):
        payload = memoryview(data).cast("B")
        chain = codecs.bytes_codecs
        if isinstance(chain[-1], Crc32cCodec):
            payload = chain[-1].decode(payload, None)  # raises ChecksumError
            chain = chain[:-1]
        self.array = np.empty(shape, dtype)
        self._out = self.array.reshape(-1).view("B")
        self.total = self._out.nbytes
        self.done = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        codec = chain[0]
        if isinstance(codec, ZstdCodec):
            declared = zstd_frame_content_size(payload)
            if declared is not None and declared > self.total:
                raise DecompressionBombError(
                    f"zstd frame declares {declared} bytes but the chunk holds only {self.total}")
            if declared is not None and declared != self.total:
                raise CorruptDataError(f"zstd frame holds {declared} bytes, expected {self.total}")
            self._stream: _Stream = _ZstdStream(payload)
        else:
            self._stream = _ZlibStream(payload, codec.gzip, codec.name)

    def advance_to(self, nbytes: int) -> None:
        """Decode until at least ``nbytes`` bytes of the array are final (or raise why not).

        Threads that need more of the same chunk take turns advancing it one step at a time.
        """
        nbytes = min(nbytes, self.total)
        while self.done < nbytes:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self.done >= nbytes:
                    return
                # Ask for exactly what is needed: a zstd stream given room past a block's end
                # decodes the next block too. Finishing a chunk goes in steps so that readers
                # needing a little more of it get turns.
                stop = nbytes if nbytes < self.total else min(self.total, self.done + STEP)
                try:
                    n = self._stream.read_into(self._out[self.done:stop])
                    if n == 0:
                        raise CorruptDataError(
                            f"truncated stream: {self.done} of {self.total} bytes decoded")
                    if self.done + n == self.total and not self._stream.at_end():
                        raise DecompressionBombError(
                            f"compressed chunk expands beyond the {self.total} bytes the "
                            "chunk holds")
                except BaseException as e:
                    self._error = e
                    raise
                self.done += n

    def finish(self) -> np.ndarray:
        """Decode the rest; the whole chunk, read-only."""
        self.advance_to(self.total)
        self._stream = _Done()  # drop the decoder and the stored bytes
        self.array.flags.writeable = False
        return self.array


class _Stream:
    def read_into(self, view: memoryview) -> int:
        raise NotImplementedError

    def at_end(self) -> bool:
        raise NotImplementedError


class _Done(_Stream):
    def read_into(self, view):
        return 0

    def at_end(self):
        return True


class _ZstdStream(_Stream):
    def __init__(self, payload: memoryview):
        zstandard = _zstandard()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            payload, read_size=len(payload), read_across_frames=False)
        self._error = zstandard.ZstdError

    def read_into(self, view):
        try:
            return self._reader.readinto(view)
        except self._error as e:
            raise CorruptDataError(f"cannot decompress chunk: {e}") from e

    def at_end(self):
        try:
            return self._reader.read(1) == b""
        except self._error as e:
            raise CorruptDataError(f"cannot decompress chunk: {e}") from e


class _ZlibStream(_Stream):
    def __init__(self, payload: memoryview, gzip: bool, name: str):
        self._d = zlib.decompressobj(31 if gzip else 15)
        self._input: memoryview | bytes = payload
        self._name = name

    def read_into(self, view):
        try:
            chunk = self._d.decompress(self._input, len(view))
        except zlib.error as e:
            raise CorruptDataError(f"cannot decompress {self._name} chunk: {e}") from e
        self._input = self._d.unconsumed_tail
        view[:len(chunk)] = np.frombuffer(chunk, dtype="B")
        return len(chunk)

    def at_end(self):
        if self._input or not self._d.eof:
            # more input left over, or the stream has not ended: either more output or a cut
            try:
                extra = self._d.decompress(self._input, 1)
            except zlib.error as e:
                raise CorruptDataError(f"cannot decompress {self._name} chunk: {e}") from e
            if extra:
                return False
            if not self._d.eof:
                raise CorruptDataError(f"truncated {self._name} stream")
        return True
