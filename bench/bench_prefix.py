"""How to decode the top of a cold chunk row first (engine/progressive.py): the options measured.

A cold plane at the top of a chunk row needs the first plane (8 KiB) of each of the row's
chunks. This bench decodes a row of 256 chunks of 64³ uint16 (the bench volume's image-like
data, ``volume.StructuredField``; zstd 3 without and with frame checksum, gzip 5) these ways,
one thread, the options interleaved round by round:

* ``whole``  (d) no prefix: every chunk decoded whole before the plane is served;
* ``old``    (a) the removed block decoder (zstd's buffer-less API through ``zstandard``'s
             private cffi module): prefix, then resumed. Loaded from git history
             (``--old-rev``), so this file imports no private module; skipped when that
             revision is not there;
* ``paused`` (b) zstandard's public ``stream_reader``, one decompressor per chunk, paused
             after the prefix and resumed later;
* ``redo``   (c) the prefix through a public streaming read, the decoder closed; later the
             chunk decoded whole in one shot (the prefix decoded twice, nothing held);
* ``engine`` what napari_zshard.engine.progressive ships now (decode_prefix, Prefix.finish).

Figures per option: the CPU time until every chunk's prefix is decoded (what a cold napari
step at the top of a row waits for), the CPU time of prefix + rest for the row (and its ratio
to the whole decode's in the same round), and the memory held while the 256 chunks are paused
(RSS and tracemalloc growth after the prefixes, each option in a fresh process). Then blosc
(zstd, shuffle, level 5, numcodecs): how many blosc blocks a chunk has and what decoding only
the first one would cost (numcodecs 0.16 has no partial decode; measured as a one-block buffer
of the same data).

``python bench/bench_prefix.py`` (about two minutes); ``--repeats N``, ``--old-rev REV``,
``--options whole,engine``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CHUNK = (64, 64, 64)
ROW = (64, 1024, 1024)  # 16 x 16 = 256 chunks
PREFIX = 64 * 64 * 2  # one plane of a chunk: what the top-of-row plane needs
OPTIONS = ("whole", "old", "paused", "redo", "engine")  # whole first: the others relative to it
VARIANTS = ("zstd3", "zstd3+checksum", "gzip5")
ZSTD_ONLY = ("paused", "redo")


def make_chunks(path: Path) -> None:
    """Compress the row's chunks (zstd 3 with and without frame checksum, blosc) into ``path``."""
    import gzip

    import numcodecs
    import zstandard
    from volume import StructuredField, voxels

    field = StructuredField(ROW, seed=20240601)
    data = voxels(field, (slice(0, 64), slice(0, 1024), slice(0, 1024)), "uint16")
    chunks = [np.ascontiguousarray(data[:, y:y + 64, x:x + 64])
              for y in range(0, 1024, 64) for x in range(0, 1024, 64)]
    out = {}
    for name, checksum in (("zstd3", False), ("zstd3+checksum", True)):
        c = zstandard.ZstdCompressor(level=3, write_checksum=checksum, write_content_size=True)
        out[name] = [c.compress(ch.tobytes()) for ch in chunks]
    out["gzip5"] = [gzip.compress(ch.tobytes(), 5) for ch in chunks]
    blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    out["blosc"] = [bytes(blosc.encode(ch)) for ch in chunks]
    out["raw"] = [ch.tobytes() for ch in chunks]
    path.write_bytes(pickle.dumps(out))


# -- the options ---------------------------------------------------------------------------

def _view(out: np.ndarray) -> memoryview:
    return memoryview(out.reshape(-1).view("B"))


def _read_into(reader, view: memoryview, done: int, until: int) -> int:
    while done < until:
        n = reader.readinto(view[done:until])
        if not n:
            raise RuntimeError("stream ended early")
        done += n
    return done


class Paused:
    """(b) one public streaming decoder per chunk, kept between the prefix and the rest."""

    def prefix(self, data: bytes, out: np.ndarray):
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(data)
        view = _view(out)
        return reader, view, _read_into(reader, view, 0, PREFIX)

    def rest(self, handle) -> None:
        reader, view, done = handle
        _read_into(reader, view, done, len(view))
        reader.close()


class Redo:
    """(c) the prefix through this thread's public streaming decoder, closed at once; the
    rest is the whole chunk decoded again in one shot."""

    def __init__(self):
        import zstandard

        self.d = zstandard.ZstdDecompressor()

    def prefix(self, data: bytes, out: np.ndarray):
        view = _view(out)
        with self.d.stream_reader(data) as reader:
            _read_into(reader, view, 0, PREFIX)
        return data, out

    def rest(self, handle) -> None:
        from napari_zshard.engine.codecs import ZstdCodec

        data, out = handle
        ZstdCodec().decode(data, out.nbytes, out=out)


def chain(variant: str):
    from napari_zshard.engine.codecs import ChunkCodecs, ZlibCodec, ZstdCodec

    return ChunkCodecs(bytes_codecs=(ZlibCodec() if variant.startswith("gzip") else ZstdCodec(),))


class Whole:
    """(d) no prefix: the chunk decoded whole before the plane is served."""

    def __init__(self, variant: str):
        self.codecs = chain(variant)

    def prefix(self, data: bytes, out: np.ndarray):
        self.codecs.decode(data, CHUNK, out.dtype, out=out)

    def rest(self, handle) -> None:
        pass


class Module:
    """(a) and the shipped module: ``decode_prefix`` then ``Prefix.finish``."""

    def __init__(self, module, variant: str):
        self.m, self.codecs = module, chain(variant)

    def prefix(self, data: bytes, out: np.ndarray):
        return self.m.decode_prefix(self.codecs, data, CHUNK, out.dtype, PREFIX, out=out)

    def rest(self, handle) -> None:
        assert handle.finish() is not None


def load_old(rev: str):
    """The progressive module as of ``rev`` (it imports ``zstandard._cffi`` itself)."""
    try:
        source = subprocess.run(["git", "-C", str(HERE.parent), "show",
                                 f"{rev}:napari_zshard/engine/progressive.py"],
                                capture_output=True, check=True, text=True).stdout
    except subprocess.CalledProcessError:
        return None
    path = Path(tempfile.mkdtemp()) / "progressive_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("napari_zshard.engine._bench_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def option(name: str, variant: str, old_rev: str):
    if name == "old":
        module = load_old(old_rev)
        return None if module is None else Module(module, variant)
    if name == "engine":
        from napari_zshard.engine import progressive

        return Module(progressive, variant)
    if name == "whole":
        return Whole(variant)
    return {"paused": Paused, "redo": Redo}[name]()


# -- measuring (in a child process per option) ---------------------------------------------

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(chunks_path: str, name: str, variant: str, old_rev: str) -> dict:
    """What 256 chunks paused after their prefix hold (run in a fresh process)."""
    chunks = pickle.loads(Path(chunks_path).read_bytes())
    stored, raw = chunks[variant], chunks["raw"]
    impl = option(name, variant, old_rev)
    if impl is None:
        return {"skipped": f"no progressive.py at {old_rev}"}
    outs = [np.ones(CHUNK, "uint16") for _ in stored]  # touched: only the decoders counted
    impl.rest(impl.prefix(stored[0], np.ones(CHUNK, "uint16")))  # imports, per-thread state
    gc.collect()
    before = rss()
    tracemalloc.start()
    handles = [impl.prefix(d, o) for d, o in zip(stored, outs, strict=True)]
    held_rss = rss() - before
    held_traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    for h in handles:
        impl.rest(h)
    for o, r in zip(outs, raw, strict=True):
        assert o.tobytes() == r, f"{name} decoded other bytes"
    return {"held_rss": held_rss, "held_traced": held_traced}


def timing(chunks_path: str, variant: str, names: list[str], repeats: int, old_rev: str
           ) -> dict:
    """CPU time (this thread) of the prefixes, and of prefixes + rests, per option; the
    options interleaved, so the machine's noise falls on all alike; each option's total is
    also divided by the whole decode's of the same round."""
    chunks = pickle.loads(Path(chunks_path).read_bytes())
    stored, raw = chunks[variant], chunks["raw"]
    impls = {n: option(n, variant, old_rev) for n in names}
    impls = {n: i for n, i in impls.items() if i is not None}
    outs = [np.ones(CHUNK, "uint16") for _ in stored]
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in impls}
    order = list(impls)
    for rnd in range(repeats + 1):  # round 0 warms up
        for n in order[rnd % len(order):] + order[:rnd % len(order)]:
            impl = impls[n]
            for o in outs:
                o.fill(1)
            gc.collect()
            t0 = time.thread_time()
            handles = [impl.prefix(d, o) for d, o in zip(stored, outs, strict=True)]
            t1 = time.thread_time()
            for h in handles:
                impl.rest(h)
            t2 = time.thread_time()
            del handles
            assert all(o.tobytes() == r for o, r in zip(outs, raw, strict=True)), n
            if rnd:
                times[n].append((t1 - t0, t2 - t0))
    whole = [t for _, t in times["whole"]]
    return {n: {"prefix": statistics.median(p for p, _ in ts),
                "total": statistics.median(t for _, t in ts),
                "vs_whole": statistics.median(t / w for (_, t), w in zip(ts, whole, strict=True))}
            for n, ts in times.items()}


def blosc_figures(chunks_path: str, repeats: int) -> dict:
    """Blocks per blosc chunk, its whole decode, and a one-block buffer's decode."""
    import numcodecs
    from numcodecs import blosc as nb

    nb.use_threads = False  # as in the engine's decode threads
    chunks = pickle.loads(Path(chunks_path).read_bytes())
    stored, raw = chunks["blosc"], chunks["raw"]
    blocksize = int.from_bytes(stored[0][8:12], "little")
    codec = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE,
                            blocksize=blocksize)
    first = [bytes(codec.encode(np.frombuffer(r[:blocksize], "uint16"))) for r in raw]
    outs = [np.empty(len(r), "B") for r in raw]
    small = [np.empty(blocksize, "B") for _ in raw]
    whole_t, first_t = [], []
    for _ in range(repeats):
        t0 = time.thread_time()
        for d, o in zip(stored, outs, strict=True):
            codec.decode(d, out=o)
        t1 = time.thread_time()
        for d, o in zip(first, small, strict=True):
            codec.decode(d, out=o)
        t2 = time.thread_time()
        whole_t.append(t1 - t0)
        first_t.append(t2 - t1)
    return {"blocksize": blocksize, "blocks": len(raw[0]) // blocksize,
            "whole": statistics.median(whole_t), "first": statistics.median(first_t),
            "ratio": sum(map(len, raw)) / sum(map(len, stored))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--old-rev", default="362eb81")
    p.add_argument("--options", default=",".join(OPTIONS))
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        if a.child[0] == "memory":
            print(json.dumps(memory(*a.child[1:4], a.old_rev)))
        else:
            print(json.dumps(timing(a.child[1], a.child[2], a.child[3].split(","), a.repeats,
                                    a.old_rev)))
        return
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    chunks_path = data / "prefix-row-chunks.pkl"
    if not chunks_path.exists():
        make_chunks(chunks_path)
    chunks = pickle.loads(chunks_path.read_bytes())
    print(f"row: 256 chunks of 64³ uint16, prefix {PREFIX} B per chunk, one thread, "
          f"median of {a.repeats} interleaved rounds")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))

    def run(*args: str) -> dict:
        res = subprocess.run([sys.executable, __file__, "--repeats", str(a.repeats),
                              "--old-rev", a.old_rev, "--child", *args],
                             capture_output=True, text=True, env=env, check=True)
        return json.loads(res.stdout)

    for variant in VARIANTS:
        names = [n for n in a.options.split(",")
                 if n not in ZSTD_ONLY or variant.startswith("zstd")]
        if "whole" not in names:
            names.insert(0, "whole")
        ratio = sum(map(len, chunks["raw"])) / sum(map(len, chunks[variant]))
        print(f"\n{variant} (compresses {ratio:.2f}x)")
        print(f"{'option':8} {'prefix ms':>10} {'prefix+rest ms':>15} {'vs whole':>9} "
              f"{'held RSS MiB':>13} {'traced MiB':>11}")
        times = run("time", str(chunks_path), variant, ",".join(names))
        for name in names:
            if name not in times:
                print(f"{name:8} skipped: no progressive.py at {a.old_rev}")
                continue
            t, m = times[name], run("memory", str(chunks_path), name, variant)
            print(f"{name:8} {t['prefix'] * 1e3:10.1f} {t['total'] * 1e3:15.1f} "
                  f"{t['vs_whole']:8.2f}x {m['held_rss'] / 2**20:13.1f} "
                  f"{m['held_traced'] / 2**20:11.1f}")
    b = blosc_figures(str(chunks_path), a.repeats)
    print(f"\nblosc zstd 5 shuffle (compresses {b['ratio']:.2f}x): {b['blocks']} blocks of "
          f"{b['blocksize'] // 1024} KiB per chunk; whole row {b['whole'] * 1e3:.1f} ms, "
          f"first block of each chunk {b['first'] * 1e3:.1f} ms "
          f"({b['first'] / b['whole']:.2f} of it)")


if __name__ == "__main__":
    main()
