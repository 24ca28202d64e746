"""Store matrix (issue 16): napari-zshard against tensorstore, one store factor at a time.

``python bench/bench_matrix.py --quick`` (a few minutes) or ``python bench/bench_matrix.py``
(~30 min on 2 cores). Stores are generated once under bench/data; the table is printed and the
runs written as JSON under bench/results. See bench/README.md, "Store matrix".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_read import Meter, Pattern, Run, drain_engine_pool, fmt_time, run_once
from matrix_stats import Ratio, geomean, median_of_ratios, print_grid, ratio, worst
from readers import DaskFromZarr, DecodeFloor, Location, Reader, TensorStore, ZarrPython, ZShardRaw
from served import ServedDirectory
from volume import VolumeSpec, data_dir_size, ensure_volume

SHAPE = (256, 1024, 1024)


def make_stores(shape: tuple[int, int, int]) -> dict[str, VolumeSpec]:
    """The baseline (tensorstore-written, zstd(3) + crc32c, 64³ in 256³, uint16) and one store
    per factor changed from it."""
    base = VolumeSpec(shape)
    return {
        "baseline": base,
        "writer zarr-python": replace(base, writer="zarr"),
        "zstd level 0": replace(base, zstd_level=0),
        "blosc-zstd shuffle": replace(base, codec="blosc-zstd"),
        "blosc-lz4 shuffle": replace(base, codec="blosc-lz4"),
        "gzip": replace(base, codec="gzip"),
        "no compressor": replace(base, codec="none"),
        "no inner crc32c": replace(base, crc32c=False),
        "32³ in 512³": replace(base, chunk=32, shard=512),
        "128³ in 512³": replace(base, chunk=128, shard=512),
        "uint8": replace(base, dtype="uint8"),
        "float32": replace(base, dtype="float32"),
    }


STORES = make_stores(SHAPE)
QUICK_STORES = ("baseline", "writer zarr-python", "blosc-zstd shuffle", "32³ in 512³")
DEPTHS = ("top", "1/4", "mid", "3/4", "bottom")
PLANES = tuple(f"plane {d}" for d in DEPTHS)
COLD = (*PLANES, "tile 512²", "slab 64")
WARM = ("warm plane", "64 planes", "20 random")
QUICK_PATTERNS = (*PLANES, "tile 512²", "warm plane", "64 planes")
PEER_PATTERNS = ("plane mid", "tile 512²")  # zarr-python and from_zarr: these cells only
PEER_STORES = ("baseline", "writer zarr-python")  # --quick: baseline only
PEERS = ("zarr", "from_zarr")
TRANSPORTS = ("local", "http", "http-latency")


def make_patterns(spec: VolumeSpec) -> list[Pattern]:
    """Reads inside the second chunk row (the first would also read the volume's top)."""
    c, (z_len, y_len, x_len) = spec.chunk, spec.shape
    row = c if z_len >= 2 * c else 0
    depth = dict(zip(DEPTHS, (row, row + c // 4, row + c // 2, row + 3 * c // 4, row + c - 1),
                     strict=True))
    mid, tile = depth["mid"], min(512, y_len // 2, x_len // 2)
    y0, x0 = (y_len - tile) // 2 // c * c, (x_len - tile) // 2 // c * c
    rng = np.random.default_rng(7)
    return [
        *(Pattern(f"plane {d}", ((z,),), True) for d, z in depth.items()),
        Pattern("tile 512²", ((mid, slice(y0, y0 + tile), slice(x0, x0 + tile)),), True),
        Pattern("slab 64", ((slice(row, min(row + 64, z_len)),),), True),
        # ten reads of a plane already read: one sub-millisecond read is below the timer's noise
        Pattern("warm plane", ((mid,),) * 10, True, prime=((mid,),)),
        Pattern("64 planes", tuple((z,) for z in range(row, min(row + 64, z_len))), False),
        Pattern("20 random", tuple((int(z),) for z in rng.choice(z_len, 20, replace=False)),
                False),
    ]


def engine_threads() -> dict[str, int]:
    """The engine's pool sizes (napari_zshard/engine/pools.py): one decode thread per core, I/O
    max(8, 4 per core); tensorstore is given the same."""
    cores = os.cpu_count() or 1
    return {"decode": cores, "io": max(8, 4 * cores)}


def readers_for(where: Location, cache_bytes: int, peers: bool, floor: DecodeFloor | None
                ) -> dict[str, Reader]:
    threads = engine_threads()
    out: dict[str, Reader] = {"zshard": ZShardRaw(where, cache_bytes),
                              "ts": TensorStore(where, 0, threads),
                              "ts-pool": TensorStore(where, cache_bytes, threads)}
    if peers:
        out["zarr"], out["from_zarr"] = ZarrPython(where), DaskFromZarr(where)
    if floor is not None:
        out["floor"] = floor
    return out


def taking_part(pattern: Pattern, readers: dict[str, Reader]) -> list[str]:
    names = ["zshard", "ts", "ts-pool"] if pattern.name in COLD else ["zshard", "ts-pool"]
    if pattern.name in PEER_PATTERNS:
        names += [n for n in ("zarr", "from_zarr") if n in readers]
    if pattern.name.startswith("plane ") and "floor" in readers:
        names.append("floor")
    return [n for n in names if n in readers]


def run_cell(where: Location, readers: dict[str, Reader], patterns: list[Pattern],
             server: ServedDirectory | None, repeats: int, cap: float, log) -> dict:
    """Every pattern of one (store, transport) cell; repetitions interleaved ABAB with the
    starting reader rotated each round. Returns {pattern: {reader: [Run]}}."""
    meter = Meter(where.transport, server)
    warm_key = (patterns[0].keys[0][0] - 1, slice(0, 256), slice(0, 256))  # another row
    for reader in readers.values():  # untimed: imports, thread pools, connection pools
        reader.prepare(warm_key)
        reader.open_cold()
        reader.read(warm_key)
    drain_engine_pool()
    out: dict = {}
    reference: dict = {}
    for pattern in patterns:
        names = taking_part(pattern, readers)
        for name in names:
            for key in pattern.keys:
                readers[name].prepare(key)
        runs: dict[str, list[Run]] = {n: [] for n in names}
        for i in range(repeats):
            for name in names[i % len(names):] + names[:i % len(names)]:
                mine = runs[name]
                if name in PEERS and mine and (mine[-1].estimated
                                               or sum(r.seconds for r in mine) > cap):
                    continue  # a slow peer (zarr-python, from_zarr) is not repeated
                # Only the peers' sequences may be cut and extrapolated: the planes after a cut
                # are not like the first ones (a random plane's row may be cached already).
                mine.append(run_once(readers[name], pattern, meter,
                                     cap if name in PEERS else math.inf, reference))
        out[pattern.name] = runs
        if any(r.mismatch for rs in runs.values() for r in rs):
            log(f"  ** DATA MISMATCH in {pattern.name} **")
        log(f"    {pattern.name:<11} " + "  ".join(
            f"{n} {fmt_time(statistics.median(r.seconds for r in rs)).strip()}"
            for n, rs in runs.items()))
    for reader in readers.values():
        reader.arr = reader.darr = None  # type: ignore[attr-defined]
    return out


# -- the tables --------------------------------------------------------------------------------

COLUMNS = ["plane med", "plane worst", "tile", "slab 64", "warm plane", "64 planes",
           "20 random", "tile bytes"]


def _times(runs: dict, pattern: str, reader: str) -> list[float]:
    return [r.seconds for r in runs.get(pattern, {}).get(reader, [])]


def cell_ratios(runs: dict, spec: VolumeSpec, transport: str) -> dict[str, Ratio]:
    """The cell's ratios against the issue's targets: cold vs tensorstore without a pool (32³
    chunks: 1.2x), no depth above 1.15x, warm/scroll vs tensorstore with a pool, bytes fetched
    by the time a cold tile returns vs tensorstore's (HTTP)."""
    cold_t = 1.2 if spec.chunk == 32 else 1.0
    depths = [(_times(runs, f"plane {d}", "zshard"), _times(runs, f"plane {d}", "ts"))
              for d in DEPTHS]
    out: dict[str, Ratio] = {}
    if any(a for a, _ in depths):
        out["plane med"] = median_of_ratios(depths, cold_t)
        per = [ratio(a, b, max(cold_t, 1.15)) for a, b in depths]
        out["plane worst"] = max((r for r in per if not math.isnan(r.value)),
                                 key=lambda r: r.value)
    for col, pattern, other, target in (("tile", "tile 512²", "ts", cold_t),
                                        ("slab 64", "slab 64", "ts", cold_t),
                                        ("warm plane", "warm plane", "ts-pool", 1.0),
                                        ("64 planes", "64 planes", "ts-pool", 1.0),
                                        ("20 random", "20 random", "ts-pool", 1.0)):
        if pattern in runs:
            out[col] = ratio(_times(runs, pattern, "zshard"), _times(runs, pattern, other), target)
    if transport != "local" and "tile 512²" in runs:
        got = runs["tile 512²"]
        out["tile bytes"] = ratio([r.bytes_at_return for r in got["zshard"]],
                                  [r.bytes_at_return for r in got["ts"]], 1.2)
    return out


def per_chunk_overhead(runs: dict, spec: VolumeSpec) -> dict | None:
    """CPU and wall time per decoded chunk above numcodecs decoding the same chunks, over the
    cold planes (medians of the runs, summed over the depths). napari-zshard's CPU includes the
    read-ahead it decoded before the measurement ended, so it is divided by the whole chunks'
    worth of bytes it decoded (its own counter; a prefix decoded first is part of a chunk);
    tensorstore decodes the plane's chunks only."""
    chunk_bytes = spec.chunk ** 3 * spec.itemsize
    total = {"floor": [0.0, 0.0, 0], "zshard": [0.0, 0.0, 0], "ts": [0.0, 0.0, 0]}
    for d in DEPTHS:
        got = runs.get(f"plane {d}", {})
        if not all(n in got for n in total):
            return None
        chunks = got["floor"][0].engine["chunks"]
        for n, acc in total.items():
            acc[0] += statistics.median(r.cpu_seconds for r in got[n])
            acc[1] += statistics.median(r.seconds for r in got[n])
            acc[2] += (statistics.median(r.engine["decoded_bytes"] / chunk_bytes for r in got[n])
                       if n == "zshard" else chunks)
    floor_cpu, floor_wall, chunks = total["floor"]
    out = {"chunks_per_plane": chunks / len(DEPTHS),
           "floor_cpu_us_per_chunk": floor_cpu / chunks * 1e6,
           "floor_wall_s_per_plane": floor_wall / len(DEPTHS)}
    for n in ("zshard", "ts"):
        cpu, wall, decoded = total[n]
        out[n] = {"chunks_decoded_per_plane": decoded / len(DEPTHS),
                  "cpu_us_per_chunk": cpu / decoded * 1e6,
                  "cpu_us_per_chunk_above_decode": (cpu / decoded - floor_cpu / chunks) * 1e6,
                  "wall_s_per_plane": wall / len(DEPTHS),
                  "wall_us_per_chunk_above_floor": (wall - floor_wall) / chunks * 1e6}
    return out


def _tile_mib(got: dict, reader: str) -> str:
    runs = sorted(got[reader], key=lambda r: r.bytes_at_return)
    r = runs[len(runs) // 2]
    return (f"{reader} {r.bytes_at_return / 2**20:5.1f} + "
            f"{(r.bytes - r.bytes_at_return) / 2**20:5.1f} MiB ({r.requests:.0f} req)")


def peer_ratios(runs: dict) -> dict[str, Ratio]:
    out = {}
    for pattern in PEER_PATTERNS:
        for peer in ("zarr", "from_zarr"):
            a = _times(runs, pattern, peer)
            if a:
                out[f"{peer}: {pattern}"] = ratio(a, _times(runs, pattern, "zshard"))
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help=f"stores {', '.join(QUICK_STORES)}; local and http+30ms; "
                   "no slab and random planes; 3 repeats")
    p.add_argument("--stores", help="comma-separated store labels (default: all, or the quick "
                   "set); " + "; ".join(STORES))
    p.add_argument("--transports", help="subset of " + ",".join(TRANSPORTS))
    p.add_argument("--patterns", help="comma-separated pattern names")
    p.add_argument("--repeats", type=int, help="interleaved runs per reader (default 3)")
    p.add_argument("--no-peers", action="store_true", help="leave zarr-python and from_zarr out")
    p.add_argument("--cap", type=float, default=3.0,
                   help="seconds after which zarr-python's and from_zarr's runs stop repeating "
                   "(default 3)")
    p.add_argument("--cache-mb", type=int, default=512,
                   help="engine cache budget = tensorstore cache pool (MiB, default 512)")
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent / "data")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help=f"another volume shape (default {SHAPE}; for a smoke test)")
    p.add_argument("--json", type=Path, help="default bench/results/matrix-<time>.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shape:
        STORES.update(make_stores(tuple(args.shape)))
    stores = (args.stores.split(",") if args.stores
              else list(QUICK_STORES if args.quick else STORES))
    transports = (args.transports.split(",") if args.transports
                  else ["local", "http-latency"] if args.quick else list(TRANSPORTS))
    wanted = (args.patterns.split(",") if args.patterns
              else QUICK_PATTERNS if args.quick else COLD + WARM)
    repeats = args.repeats or 3
    cache_bytes = args.cache_mb << 20
    t_start = time.perf_counter()
    cpu_all0, own0 = psutil.cpu_times(), psutil.Process().cpu_times()

    def log(msg: str) -> None:
        print(msg, flush=True)

    roots = {label: ensure_volume(args.data_dir, STORES[label], log=log) for label in stores}
    shape = "x".join(map(str, STORES["baseline"].shape))
    log(f"\n{shape} stores in {args.data_dir}; engine cache = tensorstore "
        f"cache pool = {args.cache_mb} MiB; tensorstore threads {engine_threads()} (the "
        f"engine's pools); {os.cpu_count()} cores; {repeats} interleaved repeats; HTTP server in "
        "its own process; local = every file read once before (warm page cache)")
    results: dict = {}
    server_cpu = 0.0
    server = ServedDirectory(args.data_dir) if any(t != "local" for t in transports) else None
    try:
        for label in stores:
            spec, root = STORES[label], roots[label]
            for f in root.rglob("*"):  # warm page cache for every reader
                if f.is_file():
                    f.read_bytes()
            patterns = [p for p in make_patterns(spec) if p.name in wanted]
            for transport in transports:
                if transport == "local":
                    where = Location("local", str(root))
                else:
                    assert server is not None
                    server.latency = args.latency_ms / 1e3 if transport == "http-latency" else 0
                    where = Location(transport, f"{server.url}/{root.name}")
                floor = (DecodeFloor(root, spec) if transport == "local" and spec.codec == "zstd"
                         and label in ("baseline", "32³ in 512³") else None)
                peers = not args.no_peers and label in (
                    PEER_STORES[:1] if args.quick else PEER_STORES)
                log(f"  {label} / {transport}:")
                try:
                    results[(label, transport)] = run_cell(
                        where, readers_for(where, cache_bytes, peers, floor), patterns,
                        server if transport != "local" else None, repeats, args.cap, log)
                finally:
                    if floor is not None:
                        floor.close()
        if server is not None:
            server_cpu = sum(psutil.Process(server.pid).cpu_times()[:2])
    finally:
        if server is not None:
            server.stop()
    return report(args, results, stores, transports, repeats, cpu_all0, own0, server_cpu,
                  t_start)


def report(args, results, stores, transports, repeats, cpu_all0, own0, server_cpu,
           t_start) -> int:
    names = {"http-latency": f"http+{args.latency_ms:g}ms"}
    rows = {f"{label} / {names.get(t, t)}": cell_ratios(results[(label, t)], STORES[label], t)
            for label in stores for t in transports if (label, t) in results}
    print_grid("napari-zshard / tensorstore (ratio of medians [upper 95% bound]; ! = misses "
               "its target)", rows, COLUMNS,
               "cold columns vs tensorstore without a pool (target 1.0x; 32³ chunks 1.2x; worst "
               "depth 1.15x), warm/scroll vs tensorstore with a pool (1.0x), tile bytes = body "
               "bytes fetched by the time a cold tile returned (1.2x); the geometric mean is of "
               "the ratios")
    depth_rows = {label: {d: ratio(_times(results[key], f"plane {d}", "zshard"),
                                   _times(results[key], f"plane {d}", "ts"))
                          for d in DEPTHS if f"plane {d}" in results[key]}
                  for key in results for label in [f"{key[0]} / {names.get(key[1], key[1])}"]}
    print_grid("cold plane by depth in its chunk row: napari-zshard / tensorstore", depth_rows,
               list(DEPTHS), "top = first plane of the row, bottom = last")
    print("\n== napari-zshard median times (ms) ==")
    cols = [p for p in COLD + WARM if any(p in r for r in results.values())]
    print(f"{'cell':<34} " + " ".join(f"{c:>11}" for c in cols))
    for (label, t), runs in results.items():
        print(f"{label + ' / ' + names.get(t, t):<34} " + " ".join(
            f"{statistics.median(_times(runs, c, 'zshard')) * 1e3:>11.1f}"
            if _times(runs, c, "zshard") else f"{'':>11}" for c in cols))
    missed = [w for w in worst(rows, 12)]
    print("\n== worst cells (upper bound / target) ==")
    for label, col, r in missed:
        print(f"  {label:<34} {col:<12} {r.value:.2f}x [{r.low:.2f}, {r.high:.2f}]  target "
              f"{r.target:.2f}  {'MISSED' if not r.passed else 'met'}")
    peers = {f"{k[0]} / {names.get(k[1], k[1])}": peer_ratios(v) for k, v in results.items()}
    peers = {k: v for k, v in peers.items() if v}
    if peers:
        print("\n== zarr-python and dask.array.from_zarr / napari-zshard (only these cells: "
              f"{', '.join(PEER_PATTERNS)} on {', '.join(PEER_STORES)}) ==")
        for label, vals in peers.items():
            print(f"  {label:<34} " + "  ".join(f"{k} {r.value:.2f}x [{r.low:.2f}, {r.high:.2f}]"
                                                 for k, r in vals.items()))
    tiles = [(k, v["tile 512²"]) for k, v in results.items()
             if k[1] != "local" and "tile 512²" in v]
    if tiles:
        print("\n== cold tile over HTTP: MiB fetched by the time it returned + in the background "
              "after (median run; requests) ==")
    for (label, t), got in tiles:
        print(f"  {label + ' / ' + names.get(t, t):<34} {_tile_mib(got, 'zshard')}   "
              f"{_tile_mib(got, 'ts')}")
    overheads = {f"{k[0]} / {names.get(k[1], k[1])}": o for k, v in results.items()
                 if (o := per_chunk_overhead(v, STORES[k[0]])) is not None}
    for label, o in overheads.items():
        print(f"\nper-chunk overhead, cold planes, {label}: {o['chunks_per_plane']:.0f} chunks "
              f"per plane; numcodecs decode {o['floor_cpu_us_per_chunk']:.0f} µs CPU per chunk, "
              f"decode floor {o['floor_wall_s_per_plane'] * 1e3:.0f} ms wall per plane")
        for n in ("zshard", "ts"):
            m = o[n]
            print(f"  {n:<7} {m['chunks_decoded_per_plane']:5.0f} chunks decoded per plane, "
                  f"{m['cpu_us_per_chunk']:5.0f} µs CPU per chunk = "
                  f"{m['cpu_us_per_chunk_above_decode']:+5.0f} µs above the decode; wall "
                  f"{m['wall_s_per_plane'] * 1e3:.0f} ms per plane = "
                  f"{m['wall_us_per_chunk_above_floor']:+.0f} µs per chunk above the floor")
    cpu_all1, own1 = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = (sum(cpu_all1) - cpu_all1.idle - getattr(cpu_all1, "iowait", 0)
            - (sum(cpu_all0) - cpu_all0.idle - getattr(cpu_all0, "iowait", 0)))
    wall = time.perf_counter() - t_start
    others = max(0.0, busy - (sum(own1[:4]) - sum(own0[:4]) + server_cpu))
    share = others / (wall * (os.cpu_count() or 1))
    print(f"\nrun took {wall:.0f} s; CPU used by other processes meanwhile: {others:.0f} CPU-s "
          f"({share:.0%} of the machine); load average {os.getloadavg()[0]:.1f}"
          + ("  -- noisy: the intervals above carry it" if share > 0.1 else ""))
    mismatch = any(r.mismatch for v in results.values() for rs in v.values() for runs in
                   rs.values() for r in runs)
    if mismatch:
        print("WARNING: some reader returned different data")
    path = args.json or (Path(__file__).resolve().parent / "results" /
                         time.strftime("matrix-%Y%m%d-%H%M%S.json"))
    from importlib.metadata import version

    doc = {
        "shape": STORES["baseline"].shape, "cache_bytes": args.cache_mb << 20,
        "latency_ms": args.latency_ms,
        "repeats": repeats, "threads": engine_threads(),
        "stores": {label: {**STORES[label].marker(), "name": STORES[label].name,
                           "stored_bytes": data_dir_size(args.data_dir / STORES[label].name)}
                   for label in stores},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "other_cpu_seconds": others, "other_share": share},
        "versions": {n: version(n) for n in ("napari-zshard", "zarr", "dask", "tensorstore",
                                              "numcodecs", "numpy")},
        "ratios": {label: {c: asdict(r) for c, r in cells.items()}
                   for label, cells in rows.items()},
        "geomean": {c: geomean([cells[c].value for cells in rows.values() if c in cells])
                    for c in COLUMNS},
        "per_chunk_overhead": overheads,
        "runs": [{"store": k[0], "transport": k[1], "pattern": p, "reader": n,
                  "runs": [asdict(r) for r in rs]}
                 for k, v in results.items() for p, byr in v.items() for n, rs in byr.items()],
        "wall_seconds": wall,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float))
    print(f"results written to {path}")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
