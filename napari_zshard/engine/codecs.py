"""Chunk codecs: decode (bounded, into preallocated buffers) and encode one inner chunk.

Compression itself is numcodecs' (zstd frames are made by ``zstandard``, which gives the same
bytes with a compression context kept per thread); this module chains the Zarr codecs, checks
every size before and after decompressing, and verifies crc32c checksums. A codec chain it
does not implement raises :class:`UnsupportedCodecError` at parse time, so the caller can fall
back to zarr-python.
"""

from __future__ import annotations

import math
import sys
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import (
    ChecksumError,
    ChunkSizeMismatchError,
    CorruptDataError,
    DecompressionBombError,
    UnsupportedCodecError,
)
from .checksum import crc32c as _crc32c

_NATIVE = sys.byteorder


def zstd_frame_content_size(data) -> int | None:
    """The decompressed size a zstd frame header declares, or None when it does not say."""
    mv = memoryview(data)
    if len(mv) < 6 or int.from_bytes(mv[:4], "little") != 0xFD2FB528:
        raise CorruptDataError("not a zstd frame (bad magic number)")
    fhd = mv[4]
    fcs_flag, single_segment, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(mv) < pos + size:
        raise CorruptDataError("truncated zstd frame header")
    value = int.from_bytes(mv[pos:pos + size], "little")
    return value + 256 if size == 2 else value


#: A frame declaring up to this many times the chunk's size (or as little as its inverse) is
#: a metadata/data mismatch (say, uint32 data under a uint16 ``data_type``), not a bomb.
MISMATCH_RATIO = 8


def declared_size_error(what: str, declared: int, expected: int) -> CorruptDataError:
    """The error for a frame (``what``: "zstd frame", ...) declaring ``declared`` decoded bytes
    where the chunk holds ``expected``: a bomb when far larger, else a size mismatch that
    names its likely cause."""
    if declared > expected * MISMATCH_RATIO or expected == 0:
        return DecompressionBombError(
            f"{what} declares {declared} bytes but the chunk holds only {expected}")
    if declared and (declared % expected == 0 or expected % declared == 0):
        ratio = (f"{declared // expected} times" if declared > expected
                 else f"1/{expected // declared} of")
        return ChunkSizeMismatchError(
            f"{what} holds {declared} bytes, {ratio} the {expected} bytes the chunk holds: "
            "the array's data_type or chunk shape does not match the stored data (was "
            "zarr.json written for other data, or edited?)")
    return ChunkSizeMismatchError(f"{what} holds {declared} bytes, expected {expected}")


def zlib_overflow_error(d, decoded: int, expected: int | None, what: str
                        ) -> CorruptDataError:
    """The error for a gzip/zlib stream (decompressor ``d``) that did not end within the
    ``decoded`` bytes it was allowed. Decoding goes on, a chunk's worth at a time and
    discarded, to at most :data:`MISMATCH_RATIO` times the chunk, to tell a data type
    mismatch (a stream of exactly 2, 4 or 8 chunks) from a bomb: memory stays one piece, and
    the time is spent on the error path only."""
    total = decoded
    if expected:
        while d.unconsumed_tail and total <= expected * MISMATCH_RATIO:
            total += len(d.decompress(d.unconsumed_tail, expected))
        if d.eof and total <= expected * MISMATCH_RATIO:
            return declared_size_error(what, total, expected)
    return DecompressionBombError(
        f"{what} expands beyond the {expected or decoded} bytes the chunk holds")


class BytesCodec:
    """A bytes → bytes codec. ``decode`` gets the size its output must have, when known."""

    name = ""
    size_delta: int | None = None  # encoded size - decoded size, when fixed

    def decode(self, data, expected: int | None, out: np.ndarray | None = None):
        raise NotImplementedError

    def encode(self, data) -> bytes:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


class Crc32cCodec(BytesCodec):
    name = "crc32c"
    size_delta = 4

    def decode(self, data, expected, out=None):
        mv = memoryview(data).cast("B")
        if len(mv) < 4:
            raise ChecksumError("chunk too short to hold its crc32c checksum")
        stored = int.from_bytes(mv[-4:], "little")
        if _crc32c(mv[:-4]) != stored:
            raise ChecksumError("crc32c checksum mismatch: the chunk's bytes were altered")
        return mv[:-4]

    def encode(self, data) -> bytes:
        mv = memoryview(data).cast("B")
        # one copy: the data and its checksum joined straight into the result
        return b"".join((mv, _crc32c(mv).to_bytes(4, "little")))

    def to_json(self):
        return {"name": "crc32c"}


def _bound(expected: int | None, n_input: int) -> int:
    if expected is not None:
        return expected
    # Unknown output size (a compressor inside another one): a generous but finite bound.
    return n_input * 4 + (1 << 20)


def _decode_into(decode, data, size: int, out: np.ndarray | None, *, exact: bool = True):
    """``decode(data, target)`` (returning the bytes written, None: all of ``target``) into
    ``out`` when it has ``size`` bytes, else into a new buffer of ``size`` bytes. ``exact``:
    the output must be ``size`` bytes; else ``size`` is only a bound (the result is cut)."""
    into_out = out is not None and out.nbytes == size
    target = (out.reshape(-1).view("B") if out is not None and into_out
              else np.empty(size, dtype="B"))
    try:
        written = decode(data, target)
    except (ValueError, RuntimeError) as e:
        if "too small" in str(e):  # the stream expands past the chunk: stopped, not allocated
            raise DecompressionBombError(
                f"compressed chunk expands beyond the {size} bytes the chunk holds") from e
        raise CorruptDataError(f"cannot decompress chunk: {e}") from e
    if written is not None and written != size:
        if into_out or exact:
            raise CorruptDataError(f"chunk decompresses to {written} bytes, expected {size}")
        return target[:written]
    return out if into_out else target


@dataclass(frozen=True)
class ZstdCodec(BytesCodec):
    level: int = 0
    checksum: bool = False
    name = "zstd"

    def decode(self, data, expected, out=None):
        declared = zstd_frame_content_size(data)
        bound = _bound(expected, len(data))
        if declared is not None and declared > bound:
            if expected is None:
                raise DecompressionBombError(
                    f"zstd frame declares {declared} bytes but the chunk holds only {bound}")
            raise declared_size_error("zstd frame", declared, expected)
        if expected is not None and declared is not None and declared != expected:
            raise declared_size_error("zstd frame", declared, expected)
        size = declared if declared is not None else bound
        result = _decode_into(_zstd_decompress, data, size, out,
                              exact=declared is not None or expected is not None)
        if expected is not None and declared is not None and declared != expected:
            raise CorruptDataError(f"zstd frame holds {declared} bytes, expected {expected}")
        return result

    def encode(self, data) -> bytes:
        compressor = _zstd_compressor(self.level, self.checksum)
        if compressor is not None:
            return compressor.compress(data)
        # numcodecs' module function: its codec's encode only adds argument checks (costly
        # across thousands of small chunks) before calling it; the result is new bytes
        return _numcodecs_zstd().compress(data, self.level, self.checksum)

    def to_json(self):
        return {"name": "zstd", "configuration": {"level": self.level, "checksum": self.checksum}}


def _zstd_decompress(data, target: np.ndarray) -> int | None:
    """Decompress zstd ``data`` into ``target`` (bytes); the bytes written (None: all).

    With ``zstandard``, through this thread's decompressor (its context kept from chunk to
    chunk; numcodecs makes one per chunk: 8% of the CPU time of a reshard of small chunks),
    reading one byte past ``target`` to see the frame end there — the frame is verified to
    its end, and one that holds more raises "too small" (a bomb) having written no further.
    """
    decompressor = zstd_decompressor()
    if decompressor is None:
        # numcodecs' module function, which its codec's decode calls after argument checks
        _numcodecs_zstd().decompress(data, target)
        return None
    view = target.data
    written = 0
    try:
        with decompressor.stream_reader(data, read_across_frames=True) as reader:
            while written < len(view):
                n = reader.readinto(view[written:])
                if not n:
                    break
                written += n
            if written == len(view) and reader.read(1):
                raise ValueError(f"destination buffer too small ({len(view)} bytes)")
    except _zstandard_error() as e:
        raise RuntimeError(str(e)) from e
    return written


def _numcodecs_zstd():
    """``numcodecs.zstd``, imported once (an import statement per chunk costs)."""
    global _zstd_module
    if _zstd_module is None:
        import numcodecs.zstd

        _zstd_module = numcodecs.zstd
    return _zstd_module


_zstd_module = None
_per_thread = threading.local()


def zstd_decompressor():
    """This thread's ``zstandard`` decompressor (None without zstandard)."""
    found = getattr(_per_thread, "unzstd", None)
    if found is None:
        try:
            import zstandard
        except ImportError:
            return None
        found = _per_thread.unzstd = zstandard.ZstdDecompressor()
    return found


def _zstandard_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def _zstd_compressor(level: int, checksum: bool):
    """This thread's ``zstandard`` compressor for ``level`` (None without zstandard).

    It keeps its compression context from chunk to chunk, where numcodecs makes a new one for
    each chunk and clears its tables (about 4% of the CPU time of a reshard into 32³ chunks);
    the frames are the same bytes. A context serves one thread at a time, hence one per thread.
    """
    compressors = getattr(_per_thread, "zstd", None)
    if compressors is None:
        compressors = _per_thread.zstd = {}
    found = compressors.get((level, checksum))
    if found is None:
        try:
            import zstandard
        except ImportError:
            return None
        found = compressors[level, checksum] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=True)
    return found


_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class BloscCodec(BytesCodec):
    cname: str = "zstd"
    clevel: int = 5
    shuffle: str = "shuffle"
    typesize: int = 1
    blocksize: int = 0
    name = "blosc"

    def _impl(self):
        from numcodecs import Blosc

        return Blosc(cname=self.cname, clevel=self.clevel, shuffle=_SHUFFLE[self.shuffle],
                     blocksize=self.blocksize)

    def decode(self, data, expected, out=None):
        mv = memoryview(data).cast("B")
        if len(mv) < 16:
            raise CorruptDataError("blosc frame shorter than its 16-byte header")
        declared = int.from_bytes(mv[4:8], "little")
        bound = _bound(expected, len(mv))
        if declared > bound and expected is None:
            raise DecompressionBombError(
                f"blosc frame declares {declared} bytes but the chunk holds only {bound}")
        if expected is not None and declared != expected:
            raise declared_size_error("blosc frame", declared, expected)
        impl = self._impl()

        def decode(data, target) -> None:
            impl.decode(data, out=target)

        return _decode_into(decode, mv, declared, out)

    def encode(self, data) -> bytes:
        from numcodecs import Blosc

        arr = np.frombuffer(memoryview(data).cast("B"), dtype=f"u{self.typesize}"
                            if self.typesize in (1, 2, 4, 8) else "B")
        impl = Blosc(cname=self.cname, clevel=self.clevel, shuffle=_SHUFFLE[self.shuffle],
                     blocksize=self.blocksize)
        return bytes(impl.encode(arr))

    def to_json(self):
        return {"name": "blosc", "configuration": {
            "cname": self.cname, "clevel": self.clevel, "shuffle": self.shuffle,
            "typesize": self.typesize, "blocksize": self.blocksize}}


@dataclass(frozen=True)
class ZlibCodec(BytesCodec):
    """gzip (Zarr v3 ``gzip``, numcodecs ``gzip``) or zlib (numcodecs ``zlib``) streams."""

    level: int = 5
    gzip: bool = True
    name = "gzip"

    def decode(self, data, expected, out=None):
        bound = _bound(expected, len(data))
        d = zlib.decompressobj(31 if self.gzip else 15)
        try:
            result = d.decompress(data, bound)
            if d.unconsumed_tail:
                raise zlib_overflow_error(d, bound, expected, f"{self.name} stream")
            if not d.eof:
                raise CorruptDataError(f"truncated {self.name} stream")
        except zlib.error as e:
            raise CorruptDataError(f"cannot decompress {self.name} chunk: {e}") from e
        return result

    def encode(self, data) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, 31 if self.gzip else 15)
        return c.compress(memoryview(data).cast("B")) + c.flush()

    def to_json(self):
        return {"name": "gzip", "configuration": {"level": self.level}}


@dataclass(frozen=True)
class ChunkCodecs:
    """How one chunk's bytes map to its array: transpose, byte order, bytes codecs, v2 filters.

    ``order`` is the axis permutation applied before serialising (Zarr v3 ``transpose``; a v2
    ``order: F`` array is the reversed permutation). ``bytes_codecs`` are in encode order.
    """

    endian: str = "little"
    order: tuple[int, ...] | None = None
    bytes_codecs: tuple[BytesCodec, ...] = ()
    filters: tuple[Any, ...] = field(default=())  # numcodecs filters (v2), encode order

    def stored_dtype(self, dtype: np.dtype) -> np.dtype:
        if dtype.itemsize == 1:
            return dtype
        order: Literal["<", ">"] = "<" if self.endian == "little" else ">"
        if dtype.byteorder == order or (dtype.byteorder == "=" and self.endian == _NATIVE):
            return dtype  # (already so: no new dtype object per chunk)
        return dtype.newbyteorder(order)

    def decode(self, data, chunk_shape: tuple[int, ...], dtype: np.dtype,
               out: np.ndarray | None = None, *, checksum_verified: bool = False) -> np.ndarray:
        """Decode one chunk into a new C-ordered array of ``chunk_shape`` and native ``dtype``,
        or into ``out``, such an array: a caller decoding chunk after chunk into one buffer
        spares the allocator a new one per chunk. ``checksum_verified``: the caller already
        checked a trailing crc32c over these very bytes; it is stripped, not computed again."""
        n = math.prod(chunk_shape) * dtype.itemsize
        if out is not None and (out.shape != tuple(chunk_shape) or out.dtype != dtype
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writable C-ordered {dtype} array of shape "
                             f"{tuple(chunk_shape)}")
        given = out
        stored = self.stored_dtype(dtype)
        direct = not self.filters and self.order is None and stored == dtype
        out = (given if given is not None else np.empty(chunk_shape, dtype)) if direct else given
        sizes: list[int | None] = [n]
        for codec in self.bytes_codecs:
            prev, delta = sizes[-1], codec.size_delta
            sizes.append(prev + delta if prev is not None and delta is not None else None)
        buf = data
        if self.filters:
            sizes[0] = None  # v2 filters may change the size (e.g. a packing filter)
        last = len(self.bytes_codecs) - 1
        if checksum_verified and last >= 0 and isinstance(self.bytes_codecs[last], Crc32cCodec):
            buf = memoryview(buf).cast("B")[:-4]
            last -= 1
        for i in range(last, -1, -1):
            buf = self.bytes_codecs[i].decode(buf, sizes[i], out if i == 0 and direct else None)
        if out is not None and buf is out:
            return out
        for f in reversed(self.filters):
            buf = f.decode(buf)
        raw = np.frombuffer(memoryview(buf).cast("B") if not isinstance(buf, np.ndarray)
                            else buf.reshape(-1).view("B"), dtype="B")
        if raw.nbytes != n:
            raise CorruptDataError(f"decoded chunk has {raw.nbytes} bytes, expected {n}")
        arr = raw.view(stored)
        if self.order is not None:
            arr = arr.reshape(tuple(chunk_shape[o] for o in self.order))
            arr = arr.transpose(np.argsort(self.order))
        else:
            arr = arr.reshape(chunk_shape)
        if out is not None:
            out[...] = arr
            return out
        return np.ascontiguousarray(arr, dtype=dtype)

    def encode(self, chunk: np.ndarray) -> bytes:
        """Encode one full chunk (already padded to the chunk shape)."""
        arr = chunk.transpose(self.order) if self.order is not None else chunk
        buf: Any = np.ascontiguousarray(arr, dtype=self.stored_dtype(chunk.dtype))
        if self.filters:
            for f in self.filters:
                buf = f.encode(buf)
            buf = np.ascontiguousarray(buf)
        buf = memoryview(buf).cast("B")
        for codec in self.bytes_codecs:
            buf = codec.encode(buf)
        return buf if type(buf) is bytes else bytes(buf)

    def to_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.order is not None:
            out.append({"name": "transpose", "configuration": {"order": list(self.order)}})
        out.append({"name": "bytes", "configuration": {"endian": self.endian}})
        out.extend(c.to_json() for c in self.bytes_codecs)
        return out


def _bytes_codec_v3(spec: dict[str, Any], where: str) -> BytesCodec:
    name = spec.get("name")
    cfg = spec.get("configuration") or {}
    if name == "crc32c":
        return Crc32cCodec()
    if name == "zstd":
        return ZstdCodec(level=int(cfg.get("level", 0)), checksum=bool(cfg.get("checksum", False)))
    if name == "gzip":
        return ZlibCodec(level=int(cfg.get("level", 5)), gzip=True)
    if name == "blosc":
        shuffle = cfg.get("shuffle", "noshuffle")
        if shuffle not in _SHUFFLE:
            raise UnsupportedCodecError(f"{where}: blosc shuffle {shuffle!r}")
        return BloscCodec(cname=cfg.get("cname", "zstd"), clevel=int(cfg.get("clevel", 5)),
                          shuffle=shuffle, typesize=int(cfg.get("typesize") or 1),
                          blocksize=int(cfg.get("blocksize", 0)))
    raise UnsupportedCodecError(f"{where}: codec {name!r}")


def parse_v3_codecs(specs: list[Any], ndim: int, where: str) -> ChunkCodecs:
    """A Zarr v3 ``codecs`` list → :class:`ChunkCodecs` (or UnsupportedCodecError)."""
    order: tuple[int, ...] | None = None
    endian = "little"
    seen_bytes = False
    bytes_codecs: list[BytesCodec] = []
    for spec in specs:
        if not isinstance(spec, dict):
            raise UnsupportedCodecError(f"{where}: codec {spec!r}")
        name = spec.get("name")
        cfg = spec.get("configuration") or {}
        if not seen_bytes:
            if name == "transpose":
                o = cfg.get("order")
                if not isinstance(o, list) or sorted(o) != list(range(ndim)):
                    raise UnsupportedCodecError(f"{where}: transpose order {o!r}")
                order = tuple(o) if order is None else tuple(order[i] for i in o)
                continue
            if name == "bytes":
                endian = cfg.get("endian", "little")
                if endian not in ("little", "big"):
                    raise UnsupportedCodecError(f"{where}: bytes endian {endian!r}")
                seen_bytes = True
                continue
            raise UnsupportedCodecError(f"{where}: array codec {name!r}")
        bytes_codecs.append(_bytes_codec_v3(spec, where))
    if not seen_bytes:
        raise UnsupportedCodecError(f"{where}: no 'bytes' codec")
    if order == tuple(range(ndim)):
        order = None
    return ChunkCodecs(endian=endian, order=order, bytes_codecs=tuple(bytes_codecs))


def parse_v2_codecs(doc: dict[str, Any], stored: np.dtype, ndim: int, where: str) -> ChunkCodecs:
    """A Zarr v2 ``.zarray``'s compressor, filters and order → :class:`ChunkCodecs`."""
    comp = doc.get("compressor")
    bytes_codecs: list[BytesCodec] = []
    if comp is not None:
        cid = comp.get("id") if isinstance(comp, dict) else None
        if cid == "zstd":
            bytes_codecs.append(ZstdCodec(level=int(comp.get("level", 0))))
        elif cid == "blosc":
            shuffle = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle", -1: "shuffle"}.get(
                comp.get("shuffle", 1), "shuffle")
            bytes_codecs.append(BloscCodec(cname=comp.get("cname", "lz4"),
                                           clevel=int(comp.get("clevel", 5)), shuffle=shuffle,
                                           typesize=stored.itemsize,
                                           blocksize=int(comp.get("blocksize", 0))))
        elif cid in ("gzip", "zlib"):
            bytes_codecs.append(ZlibCodec(level=int(comp.get("level", 5)), gzip=cid == "gzip"))
        else:
            raise UnsupportedCodecError(f"{where}: compressor {cid!r}")
    filters = []
    for spec in doc.get("filters") or []:
        try:
            from numcodecs import get_codec

            filters.append(get_codec(dict(spec)))
        except (ValueError, TypeError, KeyError) as e:
            raise UnsupportedCodecError(f"{where}: filter {spec!r}") from e
    endian = "big" if stored.byteorder == ">" else "little"
    order = tuple(reversed(range(ndim))) if doc.get("order", "C") == "F" and ndim > 1 else None
    return ChunkCodecs(endian=endian, order=order, bytes_codecs=tuple(bytes_codecs),
                       filters=tuple(filters))
