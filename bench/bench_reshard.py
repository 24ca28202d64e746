"""Reshard benchmark: napari-zshard against tensorstore and zarr-python, side by side.

A 1 GiB uint16 volume (512x1024x1024, the read benchmark's data) is rewritten as 32³ inner chunks
in 512³ shards (zstd level 3 + crc32c inner checksums, crc32c index), from two sources:

* ``sharded``   — 64³ chunks in 256³ shards (``bench/volume.py``, written by tensorstore);
* ``unsharded`` — unsharded 32³ chunks (one object per chunk, 32,768 files), made once from it.

Tools, each in a fresh process (so peak RSS is its own; the source's files are read once before
each run, so every tool starts from a warm page cache):

* ``zshard``      — ``plan_reshard(src, dst, ..., measure=False)`` then ``run_reshard`` (threads,
                    verification off: the others do not verify either). Where the chunk shape
                    and codecs do not change (the ``unsharded`` source has the destination's
                    32³ chunks and zstd(3) + crc32c) it copies the stored chunks after
                    checking their crc32c instead of recompressing them;
* ``zshard-recompress`` — the same with ``recompress=True`` (``unsharded`` only): decode and
                    re-encode every chunk, like the others do;
* ``tensorstore`` — open the source, create the destination spec, ``dst.write(src)``;
* ``zarr``        — ``zarr.from_array(dst, data=zarr.open_array(src), chunks=..., shards=...)``.

Wall time and CPU time (user + system) are of the copy itself (imports and opening excluded);
peak RSS is the whole process's (``VmHWM``). Every result is checked against the source (two
planes and one whole shard column).

    .venv/bin/python bench/bench_reshard.py                  # full: 1 GiB, about 5 minutes
    .venv/bin/python bench/bench_reshard.py --shape 128 512 512 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from volume import MARKER, VolumeSpec, ensure_volume

CHUNKS, SHARDS, LEVEL = (32, 32, 32), (512, 512, 512), 3
TOOLS = ("zshard", "zshard-recompress", "tensorstore", "zarr")


def clipped(shape) -> tuple[int, ...]:
    """The shard shape every tool writes: 512³, clipped to a smaller volume."""
    return tuple(min(s, n) for s, n in zip(SHARDS, shape, strict=True))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


# -- the tools (run in a child process) --------------------------------------------------------

def _ts_codecs(chunks=CHUNKS) -> list[dict]:
    inner = [{"name": "bytes", "configuration": {"endian": "little"}},
             {"name": "zstd", "configuration": {"level": LEVEL, "checksum": False}},
             {"name": "crc32c"}]
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": list(chunks), "codecs": inner,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                         {"name": "crc32c"}],
        "index_location": "end"}}]


def run_zshard(src: str, dst: str, recompress: bool = False) -> None:
    from napari_zshard.reshard import plan_reshard

    plan = plan_reshard(src, dst, chunks=CHUNKS, shards=SHARDS, codec_level=LEVEL,
                        measure=False, recompress=recompress)
    for _ in plan.run(verify="none"):
        pass


def run_tensorstore(src: str, dst: str) -> None:
    import tensorstore as ts

    source = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": src}}).result()
    target = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": dst},
                      "metadata": {"shape": list(source.shape), "data_type": "uint16",
                                   "chunk_grid": {"name": "regular", "configuration": {
                                       "chunk_shape": list(clipped(source.shape))}},
                                   "fill_value": 0, "codecs": _ts_codecs()},
                      "create": True, "delete_existing": True}).result()
    target.write(source).result()


def run_zarr(src: str, dst: str) -> None:
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    source = zarr.open_array(src, mode="r")
    zarr.from_array(dst, data=source, chunks=CHUNKS,
                    shards=clipped(source.shape),
                    compressors=[ZstdCodec(level=LEVEL), Crc32cCodec()], overwrite=True)


def worker(tool: str, src: str, dst: str) -> None:
    run = {"zshard": run_zshard, "tensorstore": run_tensorstore, "zarr": run_zarr,
           "zshard-recompress": lambda s, d: run_zshard(s, d, recompress=True)}[tool]
    # imports outside the timed part
    if tool.startswith("zshard"):
        import zarr  # (zarr-python writes the new zarr.json)

        import napari_zshard.reshard  # noqa: F401
    elif tool == "tensorstore":
        import tensorstore  # noqa: F401
    else:
        import zarr  # noqa: F401
    cpu, wall = _cpu(), time.perf_counter()
    run(src, dst)
    print(json.dumps({"seconds": time.perf_counter() - wall, "cpu": _cpu() - cpu,
                      "peak_rss_mib": _peak_rss_mib()}))


def _peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it starts afresh at exec, so
    the parent's memory at fork time does not count)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -- the sources -------------------------------------------------------------------------------

def ensure_unsharded(data_dir: Path, sharded: Path, spec: VolumeSpec) -> Path:
    """The same voxels as unsharded 32³ chunks (bytes → zstd(3) → crc32c), made once."""
    import tensorstore as ts

    path = data_dir / spec.name.replace(".zarr", "-u32.zarr")
    want = {**spec.marker(), "layout": "unsharded 32"}
    marker = path / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return path
    print(f"writing {path} (once; cached for later runs) ...", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    source = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                                                     "path": str(sharded)}}).result()
    codecs = _ts_codecs()[0]["configuration"]["codecs"]
    target = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                      "metadata": {"shape": list(spec.shape), "data_type": "uint16",
                                   "chunk_grid": {"name": "regular", "configuration": {
                                       "chunk_shape": [32, 32, 32]}},
                                   "fill_value": 0, "codecs": codecs},
                      "create": True, "delete_existing": True}).result()
    for z in range(0, spec.shape[0], 64):
        target[z:z + 64].write(source[z:z + 64]).result()
    marker.write_text(json.dumps(want, indent=1))
    return path


def warm(path: Path) -> None:
    """Read every file once: each tool starts from the same warm page cache."""
    for folder, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def check(src: Path, dst: Path) -> None:
    """The destination holds the source's voxels (two planes, one shard column) and layout."""
    from napari_zshard.engine import EngineCache, open_array

    a = open_array(src, cache=EngineCache(0))
    b = open_array(dst, cache=EngineCache(0))
    assert (b.chunks, b.shards) == (CHUNKS, clipped(a.shape)), (b.chunks, b.shards)
    for region in [(a.shape[0] // 2,), (a.shape[0] - 1,),
                   (slice(None), slice(0, 64), slice(a.shape[2] - 64, None))]:
        np.testing.assert_array_equal(a[region], b[region])


# -- the run -----------------------------------------------------------------------------------

def measure(tool: str, src: Path, dst: Path) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    warm(src)
    proc = subprocess.Popen([sys.executable, __file__, "--worker", tool, str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait()
    if proc.returncode:
        raise RuntimeError(f"{tool} failed:\n{err}")
    result = json.loads(out.strip().splitlines()[-1])
    check(src, dst)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    shutil.rmtree(dst, ignore_errors=True)
    return {**result, "written_mib": size / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--worker", nargs=3, metavar=("TOOL", "SRC", "DST"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--shape", nargs=3, type=int, default=(512, 1024, 1024))
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where destinations go (default: DATA_DIR/reshard-out)")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--scenarios", default="sharded,unsharded")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    spec = VolumeSpec(tuple(args.shape))
    sharded = ensure_volume(args.data_dir, spec)
    sources = {"sharded": sharded}
    if "unsharded" in args.scenarios:
        sources["unsharded"] = ensure_unsharded(args.data_dir, sharded, spec)
    out_dir = args.out_dir or args.data_dir / "reshard-out"
    out_dir.mkdir(parents=True, exist_ok=True)
    tools = args.tools.split(",")
    print(f"{os.cpu_count()} cores; volume {'x'.join(map(str, spec.shape))} uint16 "
          f"({np.prod(spec.shape) * 2 / 2**30:.2f} GiB) -> {CHUNKS[0]}³ chunks in "
          f"{SHARDS[0]}³ shards, zstd({LEVEL}) + crc32c; {args.repeats} run(s) each, "
          "interleaved; median shown", flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for scenario in args.scenarios.split(","):
        src = sources[scenario]
        # (64³ chunks -> 32³: every zshard run recompresses, the variant adds nothing)
        here = [t for t in tools if not (scenario == "sharded" and t == "zshard-recompress")]
        for repeat in range(args.repeats):
            order = here[repeat % len(here):] + here[:repeat % len(here)]
            for tool in order:
                r = measure(tool, src, out_dir / f"{scenario}-{tool}.zarr")
                results.setdefault(scenario, {}).setdefault(tool, []).append(r)
                print(f"  {scenario:<9} {tool:<17} {r['seconds']:6.1f} s  cpu {r['cpu']:6.1f} s"
                      f"  peak RSS {r['peak_rss_mib']:6.0f} MiB", flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"shape": spec.shape, "results": results}, indent=1))
    return 0


def print_table(results: dict[str, dict[str, list[dict]]]) -> None:
    print("\n| source | tool | wall (s) | CPU (s) | peak RSS (MiB) | wall vs tensorstore |")
    print("|---|---|---:|---:|---:|---:|")
    for scenario, by_tool in results.items():
        base = by_tool.get("tensorstore")
        base_s = statistics.median(r["seconds"] for r in base) if base else None
        for tool, runs in by_tool.items():
            wall = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            rss = max(r["peak_rss_mib"] for r in runs)
            ratio = f"{wall / base_s:.2f}x" if base_s else "-"
            print(f"| {scenario} | {tool} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
