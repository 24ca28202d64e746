"""Write benchmark: saving a volume with its pyramid — napari-zshard against tensorstore and
zarr-python writing the same layout, each in a fresh process, from a lazy on-disk source.

    python bench/bench_write.py --small        # 64 MiB, streaming check at 256 MiB, ~1 min
    python bench/bench_write.py --repeats 3    # 1 GiB, streaming check at 4 GiB, ~20 min

The source is the read benchmark's structured uint16 volume (``bench/volume.py``: sharded
Zarr v3, 64³ chunks in 256³ shards, zstd 3), generated once under ``--data-dir`` and read from
a warm page cache. Every contender writes the same arrays: the levels napari-zshard chooses
(halved until napari can render the coarsest in 3D), napari-zshard's default layout per level,
inner codecs ``bytes → zstd(3) → crc32c``, index ``bytes + crc32c`` at the end; level 0 is
copied shard by shard from the source and each coarser level is the mean 2x of the level just
written (``napari_zshard.multiscale.downsample``, computed in slabs), on ``--workers`` threads
with at most twice as many shards in flight:

* ``zshard``: ``save_image(dst, open_array(src))`` — the writer slices the lazy array per shard;
* ``zshard-dask``: the same source as a dask array (``to_dask("shards")``), as a napari layer;
* ``tensorstore``: ``zarr3`` driver, ``dst[region].write(src[region].read())`` per shard;
* ``zarr-python``: ``dst[region] = src[region]`` per shard (``zarr.create_array(shards=...)``).

Each run is a fresh interpreter that imports everything first; the RSS increase is the peak
resident set (``VmHWM``) minus the resident set just before the save. napari-zshard commits each
shard atomically with an fsync; the others do not fsync. Runs interleave the contenders (round
robin), the table shows the median wall time and the largest RSS increase. The streaming check
then saves a 4x larger volume with napari-zshard: its RSS increase should not grow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from volume import VolumeSpec, data_dir_size, ensure_volume

FULL = (512, 1024, 1024)  # 1 GiB of uint16
BIG = (2048, 1024, 1024)  # 4 GiB
SMALL = (128, 512, 512)  # --small: 64 MiB and (512, 512, 512) 256 MiB
SMALL_BIG = (512, 512, 512)
CONTENDERS = ("zshard", "zshard-dask", "tensorstore", "zarr-python")
ZSTD_LEVEL = 3
SOURCE_CACHE = 64 * 2**20  # engine cache of the zshard source (a napari session has 512 MiB)


# -- the common pyramid recipe (also used by the tensorstore and zarr-python contenders) -------
def pyramid_plan(shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...],
                                                       tuple[int, ...]]]:
    """(shape, inner chunks, shard) of every level, exactly as napari-zshard chooses them:
    halve until the coarsest level fits napari's 3D view, default layout per level."""
    from napari_zshard.engine.create import default_layout
    from napari_zshard.multiscale.downsample import level_factors

    shapes = [tuple(shape)]
    for factors in level_factors(shape):
        shapes.append(tuple(-(-n // f) for n, f in zip(shapes[-1], factors, strict=True)))
    return [(s, *default_layout(s, np.dtype(np.uint16))) for s in shapes]


def shard_regions(shape, shard) -> Iterator[tuple[slice, ...]]:
    grid = [range(0, n, s) for n, s in zip(shape, shard, strict=True)]
    for starts in np.ndindex(*[len(g) for g in grid]):
        yield tuple(slice(g[i], min(n, g[i] + s)) for g, i, n, s in
                    zip(grid, starts, shape, shard, strict=True))


def downsampled_region(read: Callable, src_shape, region, slab: int) -> np.ndarray:
    """A destination region of the next level: mean 2x of the source, read in slabs of
    ``slab`` destination planes (bounded memory, as napari-zshard does)."""
    from napari_zshard.multiscale.downsample import downsample

    out = np.empty(tuple(s.stop - s.start for s in region), np.uint16)
    for lo in range(region[0].start, region[0].stop, slab):
        hi = min(lo + slab, region[0].stop)
        piece = (slice(lo, hi), *region[1:])
        src = tuple(slice(s.start * 2, min(n, s.stop * 2)) for s, n in
                    zip(piece, src_shape, strict=True))
        out[lo - region[0].start:hi - region[0].start] = downsample(read(src), (2, 2, 2))
    return out


def run_bounded(fn: Callable, items: list, workers: int) -> None:
    """``fn(item)`` for every item on ``workers`` threads, at most 2x workers in flight."""
    with ThreadPoolExecutor(workers) as pool:
        pending: set = set()
        for item in items:
            pending.add(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    f.result()
        for f in pending:
            f.result()


# -- contenders (run inside the child process) -------------------------------------------------
def write_zshard(src: Path, dst: Path, workers: int, dask_source: bool) -> None:
    import napari_zshard as nz
    from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image

    source = nz.open_array(src, cache=nz.EngineCache(SOURCE_CACHE))
    if dask_source:
        source = source.to_dask("shards")
    save_image(dst, source, ImageSpec(name="bench"), options=WriteOptions(workers=workers))


def tensorstore_spec(path: Path, shape, chunks, shard) -> dict:
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {
                "shape": list(shape), "data_type": "uint16", "fill_value": 0,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(shard)}},
                "chunk_key_encoding": {"name": "default"},
                "codecs": [{"name": "sharding_indexed", "configuration": {
                    "chunk_shape": list(chunks),
                    "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                               {"name": "zstd", "configuration": {"level": ZSTD_LEVEL,
                                                                  "checksum": False}},
                               {"name": "crc32c"}],
                    "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                     {"name": "crc32c"}],
                    "index_location": "end"}}]},
            "create": True, "delete_existing": True}


def write_tensorstore(src: Path, dst: Path, workers: int) -> None:
    import tensorstore as ts

    source = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(src)}},
                     read=True).result()
    previous = None
    for i, (shape, chunks, shard) in enumerate(pyramid_plan(source.shape)):
        level = ts.open(tensorstore_spec(dst / str(i), shape, chunks, shard)).result()
        if i == 0:
            def task(region, level=level):
                level[region].write(source[region].read().result()).result()
        else:
            def task(region, level=level, prev=previous, slab=chunks[0]):
                block = downsampled_region(lambda r: prev[r].read().result(), prev.shape,
                                           region, slab)
                level[region].write(block).result()
        run_bounded(task, list(shard_regions(shape, shard)), workers)
        previous = level


def write_zarr_python(src: Path, dst: Path, workers: int) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    source = zarr.open_array(str(src), mode="r")
    previous = None
    for i, (shape, chunks, shard) in enumerate(pyramid_plan(source.shape)):
        level = zarr.create_array(str(dst / str(i)), shape=shape, dtype="uint16",
                                  chunks=chunks, shards=shard, fill_value=0,
                                  compressors=[ZstdCodec(level=ZSTD_LEVEL), Crc32cCodec()],
                                  zarr_format=3, overwrite=True)
        if i == 0:
            def task(region, level=level):
                level[region] = source[region]
        else:
            def task(region, level=level, prev=previous, slab=chunks[0]):
                level[region] = downsampled_region(lambda r: prev[r], prev.shape, region, slab)
        run_bounded(task, list(shard_regions(shape, shard)), workers)
        previous = level


def child(contender: str, src: Path, dst: Path, workers: int) -> dict:
    """Runs in a fresh interpreter: imports and opens everything, then measures one save."""
    import psutil
    import tensorstore  # noqa: F401
    import zarr  # noqa: F401

    import napari_zshard  # noqa: F401  (imported by every contender: same baseline)

    run = {"zshard": lambda: write_zshard(src, dst, workers, dask_source=False),
           "zshard-dask": lambda: write_zshard(src, dst, workers, dask_source=True),
           "tensorstore": lambda: write_tensorstore(src, dst, workers),
           "zarr-python": lambda: write_zarr_python(src, dst, workers)}[contender]
    proc = psutil.Process()
    base = proc.memory_info().rss
    sampled = [base]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            sampled.append(proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    sampler.join()
    peak = peak_rss()
    return {"contender": contender, "wall_s": wall, "cpu_s": cpu, "base_rss": base,
            "peak_rss": max(peak, max(sampled)), "rss_increase": max(peak, max(sampled)) - base,
            "written_bytes": data_dir_size(dst)}


def peak_rss() -> int:
    """This process's peak resident set size in bytes. Linux: VmHWM, which starts afresh at
    exec (``ru_maxrss`` keeps the peak of the forking parent across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# -- the parent: sources, fresh processes, checks, table ---------------------------------------
def warm(path: Path) -> None:
    """Read every file once, so every contender reads the source from the page cache."""
    for f in sorted(path.rglob("*")):
        if f.is_file():
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def measure(contender: str, src: Path, out_dir: Path, workers: int) -> dict:
    dst = out_dir / f"{contender}-{src.name}"
    shutil.rmtree(dst, ignore_errors=True)
    warm(src)
    cmd = [sys.executable, __file__, "--child", contender, str(src), str(dst), str(workers)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["check"] = check(src, dst)
    shutil.rmtree(dst, ignore_errors=True)
    return result


def check(src: Path, dst: Path) -> str:
    """Every level readable by zarr-python; level 0 planes equal the source's; the coarsest
    level equal to the one computed in numpy from the stored level before it."""
    import zarr

    from napari_zshard.multiscale.downsample import downsample

    source = zarr.open_array(str(src), mode="r")
    levels = sorted((p for p in dst.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    arrays = [zarr.open_array(str(p), mode="r") for p in levels]
    for z in (0, source.shape[0] // 2 + 3, source.shape[0] - 1):
        if not np.array_equal(arrays[0][z], source[z]):
            return f"level 0 plane {z} differs"
    if len(arrays) > 1:
        expected = downsample(arrays[-2][...], (2, 2, 2))
        if not np.array_equal(arrays[-1][...], expected):
            return "coarsest level differs from mean 2x of the level before"
    return f"ok ({len(arrays)} levels)"


def fmt_mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def print_table(title: str, rows: list[dict], reference: str) -> None:
    print(f"\n{title}")
    print(f"{'contender':<14}{'wall':>9}{'cpu':>9}{'peak RSS +':>13}{'written':>12}"
          f"{'wall / ' + reference:>18}  check")
    ref = next((r for r in rows if r["contender"] == reference), None)
    for r in rows:
        ratio = f"{r['wall_s'] / ref['wall_s']:.2f}" if ref else "-"
        print(f"{r['contender']:<14}{r['wall_s']:>8.1f}s{r['cpu_s']:>8.1f}s"
              f"{fmt_mib(r['rss_increase']):>13}{fmt_mib(r['written_bytes']):>12}{ratio:>18}"
              f"  {r['check']}")


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time; RSS is the largest seen over the runs."""
    best = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]
    return {**best, "rss_increase": max(r["rss_increase"] for r in runs), "runs": len(runs),
            "walls": [round(r["wall_s"], 2) for r in runs]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true",
                   help=f"{SMALL} and {SMALL_BIG} instead of {FULL} and {BIG}")
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent / "data",
                   help="where the source volumes and outputs go (git-ignored)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"a subset of {','.join(CONTENDERS)}")
    p.add_argument("--repeats", type=int, default=1, help="runs per contender, interleaved")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="shard tasks in parallel (every contender)")
    p.add_argument("--no-streaming", action="store_true", help="skip the 4 GiB streaming check")
    p.add_argument("--json", type=Path, help="also write every result to this JSON file")
    p.add_argument("--child", nargs=4, metavar=("CONTENDER", "SRC", "DST", "WORKERS"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        contender, src, dst, workers = args.child
        print(json.dumps(child(contender, Path(src), Path(dst), int(workers))))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    shape, big_shape = (SMALL, SMALL_BIG) if args.small else (FULL, BIG)
    contenders = [c for c in args.contenders.split(",") if c]
    out_dir = args.data_dir / "write-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    src = ensure_volume(args.data_dir, VolumeSpec(shape), log=log)
    print(f"write benchmark, {platform.node()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; load before: {os.getloadavg()}")
    print(f"source: {src} {shape} uint16 = {fmt_mib(math.prod(shape) * 2)}, sharded zarr v3 "
          f"(64^3 chunks, 256^3 shards, zstd {ZSTD_LEVEL}) on local disk, page cache warm")
    plan = pyramid_plan(shape)
    print("every contender writes: " + "; ".join(
        f"level {i} {s} chunks {c} shards {sh}" for i, (s, c, sh) in enumerate(plan)))
    print(f"workers: {args.workers} shard tasks at a time (at most {2 * args.workers} in flight)")

    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for rep in range(args.repeats):
        for contender in contenders:  # round robin: load from elsewhere hits all alike
            log(f"[{rep + 1}/{args.repeats}] {contender} ...")
            runs[contender].append(measure(contender, src, out_dir, args.workers))
    rows = [median_run(runs[c]) for c in contenders]
    print_table(f"{fmt_mib(math.prod(shape) * 2)} volume with its pyramid "
                f"(median of {args.repeats})", rows, "tensorstore")

    streaming = []
    if not args.no_streaming and "zshard" in contenders:
        big = ensure_volume(args.data_dir, VolumeSpec(big_shape), log=log)
        log("streaming check: zshard on the large volume ...")
        large = measure("zshard", big, out_dir, args.workers)
        streaming = [{**runs["zshard"][0], "source": list(shape)},
                     {**large, "source": list(big_shape)}]
        print("\nstreaming (napari-zshard, lazy on-disk source): peak RSS increase")
        for r in streaming:
            size = math.prod(r["source"]) * 2
            print(f"  {fmt_mib(size):>10} source: {fmt_mib(r['rss_increase']):>9} "
                  f"in {r['wall_s']:.1f} s ({size / r['wall_s'] / 2**20:.0f} MiB/s)  "
                  f"{r['check']}")
        ratio = streaming[1]["rss_increase"] / max(1, streaming[0]["rss_increase"])
        print(f"  large / small RSS increase: {ratio:.2f}")

    print("\ntargets (issue 4):")
    by = {r["contender"]: r for r in rows}
    if "zshard" in by and "tensorstore" in by:
        r = by["zshard"]["wall_s"] / by["tensorstore"]["wall_s"]
        print(f"  zshard wall / tensorstore wall = {r:.2f} (target <= 1): "
              f"{'met' if r <= 1 else 'NOT met'}")
    for r in [by.get("zshard"), *(streaming[1:] if streaming else [])]:
        if r is not None:
            ok = r["rss_increase"] < 2**30
            print(f"  zshard RSS increase {fmt_mib(r['rss_increase'])} (target < 1 GiB): "
                  f"{'met' if ok else 'NOT met'}")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": shape, "rows": rows, "runs": runs,
                                         "streaming": streaming,
                                         "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
