"""Read benchmark: napari-zshard against zarr-python, dask.array.from_zarr and tensorstore.

Run ``python bench/bench_read.py --small`` for a quick look, ``python bench/bench_read.py`` for
the full 512x1024x1024 volume (see bench/README.md). One run measures every reader on every
pattern and transport and prints a table and the target ratios of issue 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from readers import DecodeFloor, Location, Reader, make_readers
from served import ServedDirectory
from volume import VolumeSpec, data_dir_size, ensure_volume

FULL_SHAPE = (512, 1024, 1024)
SMALL_SHAPE = (128, 512, 512)
COLD_PATTERNS = ("cold plane", "cold tile")
SEQ_PATTERNS = ("64 planes", "20 random planes")


# -- what is measured --------------------------------------------------------------------------

@dataclass(frozen=True)
class Pattern:
    name: str
    keys: tuple  # numpy-style keys read one after the other
    cold_each: bool  # True: one cold read per run; False: the keys in order from a cold open
    prime: tuple = ()  # keys read after the open, before the timing starts (a warm read)

    def describe(self) -> str:
        k = self.keys[0]
        if self.cold_each:
            sl = ", ".join(f"{s.start}:{s.stop}" for s in k[1:]) if len(k) > 1 else ":, :"
            return f"{self.name}: z={k[0]}, [{sl}], every reader cold"
        zs = [key[0] for key in self.keys]
        if zs == list(range(zs[0], zs[0] + len(zs))):
            return f"{self.name}: z={zs[0]}..{zs[-1]} in order, cold at the first"
        return f"{self.name}: z={zs} (seeded), cold at the first"


def make_patterns(shape: tuple[int, int, int], chunk: int) -> list[Pattern]:
    z_len, y_len, x_len = shape
    z_mid = z_len // 2 + 3  # inside a chunk, not on a boundary
    tile = min(512, y_len // 2, x_len // 2)
    y0 = (y_len - tile) // 2 // chunk * chunk
    x0 = (x_len - tile) // 2 // chunk * chunk
    scroll0 = chunk if z_len >= 2 * chunk else 0  # 64 planes inside one chunk row
    n_scroll = min(64, z_len - scroll0)
    rng = np.random.default_rng(7)
    randoms = rng.choice(z_len, size=min(20, z_len), replace=False)
    return [
        Pattern("cold plane", ((z_mid,),), True),
        Pattern("cold tile", ((z_mid, slice(y0, y0 + tile), slice(x0, x0 + tile)),), True),
        Pattern("64 planes", tuple((z,) for z in range(scroll0, scroll0 + n_scroll)), False),
        Pattern("20 random planes", tuple((int(z),) for z in randoms), False),
    ]


@dataclass
class Result:
    transport: str
    pattern: str
    reader: str
    seconds: float  # median of runs (cold patterns) or total of the sequence (median of runs)
    runs: list[float]
    requests: float  # server log (HTTP) or read syscalls (local)
    bytes: float  # body bytes sent (HTTP) or bytes read (local)
    cpu_seconds: float  # of this process, including background work the read left running
    estimated: bool = False  # sequence cut at the time cap and extrapolated
    measured_keys: int = 0
    total_keys: int = 0
    engine: dict = field(default_factory=dict)
    mismatch: bool = False


class Meter:
    """Wall time, this process's CPU and local I/O, and the server's request log."""

    def __init__(self, transport: str, server: ServedDirectory | None):
        self.transport = transport
        self.proc = psutil.Process()
        self.server = server

    def start(self) -> None:
        # No collector pause inside a measurement: young generations now, none until stop().
        # (A full collection costs ~0.1 s with dask, zarr and tensorstore loaded; it runs once
        # per pattern instead.)
        gc.collect(1)
        gc.disable()
        if self.server is not None:
            self.server.reset()
        self.io0 = self.proc.io_counters()
        self.cpu0 = time.process_time()  # ns resolution (psutil's cpu_times counts 10 ms ticks)
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        return time.perf_counter() - self.t0

    def returned(self) -> float:
        """Body bytes the server sent by now (HTTP; nan locally): call as the read returns,
        before background read-ahead is waited for."""
        if self.server is None:
            return float("nan")
        return self.server.summary(settle=False).bytes

    def stop(self) -> tuple[float, float, float]:
        """(requests, bytes, cpu seconds) since ``start``."""
        drain_engine_pool()
        gc.enable()
        cpu = time.process_time() - self.cpu0
        if self.server is not None:
            summary = self.server.summary()
            return summary.requests, summary.bytes, cpu
        io = self.proc.io_counters()
        return io.read_count - self.io0.read_count, io.read_chars - self.io0.read_chars, cpu


def drain_engine_pool() -> None:
    """Wait until the engine's decode pool is idle (read-ahead and the rest of chunks decoded
    front to back outlive the read call)."""
    pools = (sys.modules.get("napari_zshard.engine.pools")
             or sys.modules.get("napari_zshard.store.pool"))  # a revision before the move
    if pools is None:
        return
    decode_pool, readahead_pool = pools.decode_pool, pools.readahead_pool

    readahead_pool().wait_idle(60)  # read-ahead fetched after the read, in other shards
    decode_pool().wait_idle(60)


def _engine(reader: Reader) -> dict:
    return reader.engine_counters() or {}


@dataclass
class Run:
    """One measurement of one reader on one pattern."""

    seconds: float
    requests: float
    bytes: float
    cpu_seconds: float
    measured_keys: int
    total_keys: int
    engine: dict
    mismatch: bool
    bytes_at_return: float = float("nan")  # body bytes sent by the time the last read returned

    @property
    def estimated(self) -> bool:
        return self.measured_keys < self.total_keys


def run_once(reader: Reader, pattern: Pattern, meter: Meter, cap: float, reference: dict) -> Run:
    """Open ``reader`` cold, read the pattern's keys in order, time the reads.

    A sequence that passes ``cap`` seconds is cut after at least two keys, and the remaining
    keys are estimated at the mean time of the measured ones after the first (the first is the
    cold one); requests, bytes and CPU are scaled the same way. Only a reader whose first key
    alone takes over twice the cap (a reader without any cache) is cut after one key and
    estimated from it.
    """
    reader.open_cold()
    for key in pattern.prime:
        reader.read(key)
    drain_engine_pool()
    meter.start()
    times: list[float] = []
    outputs = []
    t_prev = 0.0
    for key in pattern.keys:
        outputs.append(reader.read(key))
        t = meter.lap()
        times.append(t - t_prev)
        t_prev = t
        if t > cap and (len(times) >= 2 or t > 2 * cap):
            break
    at_return = meter.returned()
    requests, nbytes, cpu = meter.stop()
    n, total_keys = len(times), len(pattern.keys)
    total = sum(times)
    if n < total_keys:
        per_key = statistics.mean(times[1:]) if n > 1 else times[0]
        scale = (total + per_key * (total_keys - n)) / total
        total, requests, nbytes, cpu = (v * scale for v in (total, requests, nbytes, cpu))
    mismatch = False
    for i, out in enumerate(outputs):
        if out is not None:  # the decode floor assembles nothing
            mismatch |= not np.array_equal(out, reference.setdefault((pattern.name, i), out))
    return Run(total, requests, nbytes, cpu, n, total_keys, _engine(reader), mismatch, at_return)


def summarise(transport: str, pattern: Pattern, reader: Reader, runs: list[Run]) -> Result:
    """The median run (its counts) of a reader's runs, with every run's time."""
    ordered = sorted(runs, key=lambda r: r.seconds)
    mid = ordered[len(ordered) // 2]
    return Result(transport, pattern.name, reader.name, statistics.median(r.seconds for r in runs),
                  [r.seconds for r in runs], mid.requests, mid.bytes, mid.cpu_seconds,
                  estimated=mid.estimated, measured_keys=mid.measured_keys,
                  total_keys=mid.total_keys, engine=mid.engine,
                  mismatch=any(r.mismatch for r in runs))


# -- reporting ---------------------------------------------------------------------------------

LABELS = {
    "zshard": "napari-zshard raw arr[z]",
    "zshard-dask": "napari-zshard dask, fusion off",
    "dask-alone": "dask alone (1 task, sync, no read)",
    "zarr": "zarr-python 3",
    "from_zarr": "dask.array.from_zarr, fusion off",
    "ts": "tensorstore, no cache pool",
    "ts-pool": "tensorstore, cache pool",
    "floor": "decode floor (numcodecs, all cores)",
}


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f} ms" if seconds < 10 else f"{seconds:9.2f} s "


def fmt_engine(engine: dict) -> str:
    if "chunks" in engine:
        return f"{engine['chunks']} chunks"
    if not engine:
        return ""
    return (f"idx {engine['index_requests']} + data {engine['data_requests']} req, "
            f"{engine['chunks_decoded']} decoded")


def print_table(results: list[Result], transports: list[str]) -> None:
    for transport in transports:
        rows = [r for r in results if r.transport == transport]
        if not rows:
            continue
        what = ("reads = read syscalls, MiB = bytes read (psutil)" if transport == "local"
                else "reads = requests, MiB = body bytes (server log)")
        print(f"\n== {transport} ==   ({what})")
        print(f"{'pattern':<17} {'reader':<36} {'time':>12} {'runs':>6} {'reads':>8} "
              f"{'MiB':>8} {'CPU s':>7}  engine")
        for pattern in COLD_PATTERNS + SEQ_PATTERNS:
            for r in (r for r in rows if r.pattern == pattern):
                mark = "~" if r.estimated else " "
                runs = (f"{r.measured_keys}/{r.total_keys}" if r.estimated else f"{len(r.runs)}x")
                flag = "  ** DATA MISMATCH **" if r.mismatch else ""
                print(f"{pattern:<17} {LABELS[r.reader]:<36} {mark}{fmt_time(r.seconds)} "
                      f"{runs:>6} {r.requests:>8.0f} {r.bytes / 2**20:>8.1f} "
                      f"{r.cpu_seconds:>7.2f}  {fmt_engine(r.engine)}{flag}")
            print()
    if any(r.estimated for r in results):
        print("~ : the sequence passed the time cap; the rest is extrapolated from the measured "
              "planes (runs column: planes measured/total).")


@dataclass
class Ratio:
    what: str
    transport: str
    value: float | None
    target: str  # e.g. "<= 1.2" or ">= 10"; "" = reported only
    status: str  # MET / MISSED / reported / n/a


def _get(results: list[Result], transport: str, pattern: str, reader: str) -> Result | None:
    for r in results:
        if (r.transport, r.pattern, r.reader) == (transport, pattern, reader):
            return r
    return None


def compute_ratios(results: list[Result], transports: list[str]) -> list[Ratio]:
    out: list[Ratio] = []

    def add(what, transport, num, den, target, reported_only=False):
        if num is None or den is None:  # a reader or transport left out of this run
            return
        value = num.seconds / den.seconds
        op, limit = target.split()
        ok = value <= float(limit) if op == "<=" else value >= float(limit)
        status = "reported" if reported_only else ("MET" if ok else "MISSED")
        if (num.estimated or den.estimated) and status != "reported":
            status += " (est.)"
        out.append(Ratio(what, transport, value, target, status))

    def best_ts(transport, pattern):
        cands = [r for r in (_get(results, transport, pattern, "ts"),
                             _get(results, transport, pattern, "ts-pool")) if r is not None]
        return min(cands, key=lambda r: r.seconds) if cands else None

    for t in transports:
        limit = {"local": "<= 1.2", "http": "<= 1.0"}.get(t, "<= 1.0")
        add("cold plane: zshard / best tensorstore", t, _get(results, t, "cold plane", "zshard"),
            best_ts(t, "cold plane"), limit, reported_only=t not in ("local", "http"))
    add("cold plane: zshard / decode floor", "local",
        _get(results, "local", "cold plane", "zshard"),
        _get(results, "local", "cold plane", "floor"), "<= 1.5")
    for t in transports:
        z = _get(results, t, "64 planes", "zshard")
        add("64 planes: tensorstore no pool / zshard (speed-up)", t,
            _get(results, t, "64 planes", "ts"), z, ">= 10")
        add("64 planes: zshard / tensorstore with pool", t, z,
            _get(results, t, "64 planes", "ts-pool"), "<= 1.0")
        add("64 planes: from_zarr / zshard (speed-up)", t,
            _get(results, t, "64 planes", "from_zarr"), z, ">= 50")
    for t in transports:
        for pattern in ("cold plane", "64 planes"):
            add(f"{pattern}: zshard dask / zshard raw", t,
                _get(results, t, pattern, "zshard-dask"), _get(results, t, pattern, "zshard"),
                "<= 1.2")
    return out


def informational_ratios(results: list[Result], transports: list[str]
                         ) -> list[tuple[str, str, float]]:
    out = []
    for t in transports:
        for pattern in ("cold tile", "20 random planes"):
            z = _get(results, t, pattern, "zshard")
            for other in ("ts", "ts-pool", "zarr"):
                o = _get(results, t, pattern, other)
                if z is not None and o is not None:
                    out.append((f"{pattern}: zshard / {LABELS[other]}", t, z.seconds / o.seconds))
    return out


def print_ratios(ratios: list[Ratio], info: list[tuple[str, str, float]]) -> None:
    print("\n== Targets of issue 2 (ratios of wall times from this run) ==")
    for r in ratios:
        value = "   n/a" if r.value is None else f"{r.value:7.2f}x"
        target = f"target {r.target}x" if r.status != "reported" else "(reported)"
        print(f"  {r.what:<52} {r.transport:<10} {value}  {target:<16} {r.status}")
    if info:
        print("\n== Other ratios (no target; < 1 means napari-zshard is faster) ==")
        for what, t, value in info:
            print(f"  {what:<58} {t:<10} {value:7.2f}x")


# -- the run -----------------------------------------------------------------------------------

def run_transport(where: Location, readers: list[Reader], patterns: list[Pattern],
                  server: ServedDirectory | None, repeats: int, cap: float,
                  warmup_key, log: Callable[[str], None]) -> list[Result]:
    """Every pattern, every reader; repetitions interleave the readers (round robin), so a
    burst of load from elsewhere on the machine hits them alike.

    A reader stops repeating once its runs took ``cap`` seconds in all (slow readers run once),
    and a sequence is repeated only while one run takes under 2 s.
    """
    meter = Meter(where.transport, server)
    results = []
    reference: dict = {}
    for reader in readers:  # untimed: imports, thread pools, connection pools
        reader.prepare(warmup_key)
        reader.open_cold()
        reader.read(warmup_key)
    drain_engine_pool()
    for pattern in patterns:
        taking_part = [r for r in readers if r.supports(pattern.cold_each)]
        for reader in taking_part:
            for key in pattern.keys:
                reader.prepare(key)
        gc.collect()
        runs: dict[str, list[Run]] = {r.name: [] for r in taking_part}
        spent: dict[str, float] = dict.fromkeys(runs, 0.0)
        t0 = time.perf_counter()
        for _ in range(repeats):
            for reader in taking_part:
                mine = runs[reader.name]
                if mine and (spent[reader.name] >= cap or mine[-1].estimated
                             or (not pattern.cold_each and mine[-1].seconds > 2.0)):
                    continue
                mine.append(run_once(reader, pattern, meter, cap, reference))
                spent[reader.name] += mine[-1].seconds
        for reader in taking_part:
            res = summarise(where.transport, pattern, reader, runs[reader.name])
            results.append(res)
            log(f"  {where.transport:<12} {pattern.name:<17} {LABELS[reader.name]:<36} "
                f"{'~' if res.estimated else ' '}{fmt_time(res.seconds)}  "
                f"({len(res.runs)} runs)")
        log(f"  ({pattern.name}: {time.perf_counter() - t0:.1f} s)")
    for reader in readers:
        reader.arr = reader.darr = None  # type: ignore[attr-defined]
    gc.collect()
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help=f"{SMALL_SHAPE} instead of {FULL_SHAPE}")
    p.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                   help="any other volume shape")
    p.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parent / "data",
                   help="where the volume is generated once and cached (default: bench/data)")
    p.add_argument("--whole-chunks", action="store_true",
                   help="open napari-zshard with progressive=False (decode chunks whole at "
                   "once; no prefix decoded first)")
    p.add_argument("--cache-mb", type=int, default=512,
                   help="engine cache budget = tensorstore cache pool, MiB (default 512, the "
                   "engine's default budget)")
    p.add_argument("--latency-ms", type=float, default=30.0,
                   help="latency of the slow HTTP transport (default 30)")
    p.add_argument("--transports", default="local,http,http-latency",
                   help="comma-separated subset of local,http,http-latency")
    p.add_argument("--readers", default="zshard,zshard-dask,dask-alone,zarr,from_zarr,ts,ts-pool",
                   help="comma-separated subset of the readers")
    p.add_argument("--patterns", default="cold plane,cold tile,64 planes,20 random planes",
                   help="comma-separated subset of the patterns")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per reader and pattern locally (default 5, --small 3); the median "
                   "is reported")
    p.add_argument("--http-repeats", type=int, default=None,
                   help="the same over HTTP (default 5, --small 2)")
    p.add_argument("--seq-cap", type=float, default=None,
                   help="seconds after which a slow sequence is cut and extrapolated "
                   "(default 8, --small 1); a reader stops repeating after it too")
    p.add_argument("--json", type=Path, help="also write every result to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shape = tuple(args.shape) if args.shape else (SMALL_SHAPE if args.small else FULL_SHAPE)
    spec = VolumeSpec(shape)  # type: ignore[arg-type]
    small = args.small or (args.shape is not None and np.prod(args.shape) <= np.prod(SMALL_SHAPE))
    seq_cap = args.seq_cap if args.seq_cap is not None else (1.0 if small else 8.0)
    repeats = args.repeats or (3 if small else 5)
    http_repeats = args.http_repeats or (2 if small else 5)
    cache_bytes = args.cache_mb << 20
    wanted_readers = args.readers.split(",")
    wanted_transports = args.transports.split(",")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    root = ensure_volume(args.data_dir, spec, log=log)
    stored = data_dir_size(root)
    for f in root.rglob("*"):  # every reader then finds the files in the page cache
        if f.is_file():
            f.read_bytes()
    wanted_patterns = [p.strip() for p in args.patterns.split(",")]
    patterns = [p for p in make_patterns(spec.shape, spec.chunk) if p.name in wanted_patterns]
    cpu_all0, own0 = psutil.cpu_times(), psutil.Process().cpu_times()

    log(f"\nvolume {root}: {'x'.join(map(str, shape))} uint16, {spec.chunk}^3 inner chunks in "
        f"{spec.shard}^3 shards, bytes+zstd({spec.zstd_level})+crc32c, "
        f"{stored / 2**20:.0f} MiB stored (compression {np.prod(shape) * 2 / stored:.2f}x)")
    log(f"engine cache budget = tensorstore cache pool = {args.cache_mb} MiB; "
        f"{os.cpu_count()} cores; HTTP server in its own process; napari-zshard "
        + ("progressive=False (chunks decoded whole)" if args.whole_chunks else
           "progressive=True (default: a cold read decodes the top of its chunks first)"))
    for p in patterns:
        log(f"  {p.describe()}")
    log("")

    results: list[Result] = []
    warmup_key = (shape[0] - 1, slice(0, min(256, shape[1])), slice(0, min(256, shape[2])))

    def readers_at(where: Location) -> list[Reader]:
        return [r for r in make_readers(where, cache_bytes, not args.whole_chunks)
                if r.name in wanted_readers]

    if "local" in wanted_transports:
        local = Location("local", str(root))
        floor = DecodeFloor(root, spec)  # interleaved with the readers, like them
        try:
            results += run_transport(local, [floor, *readers_at(local)], patterns, None,
                                     repeats, seq_cap, warmup_key, log)
        finally:
            floor.close()
    http = [t for t in wanted_transports if t.startswith("http")]
    server_cpu = 0.0
    if http:
        with ServedDirectory(args.data_dir) as server:
            for transport in http:
                server.latency = args.latency_ms / 1e3 if transport == "http-latency" else 0.0
                where = Location(transport, f"{server.url}/{root.name}")
                results += run_transport(where, readers_at(where), patterns, server,
                                         http_repeats, seq_cap, warmup_key, log)
            server_cpu = sum(psutil.Process(server.pid).cpu_times()[:2])
    transports = [t for t in ("local", "http", "http-latency") if t in wanted_transports]
    renamed = {"http-latency": f"http+{args.latency_ms:g}ms"}
    for r in results:
        r.transport = renamed.get(r.transport, r.transport)
    transports = [renamed.get(t, t) for t in transports]

    print_table(results, transports)
    ratios = compute_ratios(results, transports)
    info = informational_ratios(results, transports)
    print_ratios(ratios, info)

    # Was the machine quiet? CPU used by other processes during the run.
    cpu_all1, own1 = psutil.cpu_times(), psutil.Process().cpu_times()
    busy = sum(cpu_all1) - cpu_all1.idle - getattr(cpu_all1, "iowait", 0) - (
        sum(cpu_all0) - cpu_all0.idle - getattr(cpu_all0, "iowait", 0))
    ours = sum(own1[:4]) - sum(own0[:4]) + server_cpu
    wall = time.perf_counter() - t_start
    others = max(0.0, busy - ours)
    print(f"\nrun took {wall:.0f} s; CPU used by other processes meanwhile: {others:.0f} CPU-s "
          f"({others / (wall * (os.cpu_count() or 1)):.0%} of the machine)"
          + ("  -- numbers are noisy, rerun on a quiet machine" if others > 0.1 * wall else ""))
    if any(r.mismatch for r in results):
        print("WARNING: some reader returned different data (marked DATA MISMATCH above)")

    if args.json:
        from importlib.metadata import version

        doc = {
            "volume": {**spec.marker(), "stored_bytes": stored, "path": str(root)},
            "cache_bytes": cache_bytes, "latency_ms": args.latency_ms,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "other_cpu_seconds": others},
            "versions": {name: version(name) for name in
                         ("napari-zshard", "zarr", "dask", "tensorstore", "numcodecs", "numpy")},
            "patterns": [p.describe() for p in patterns],
            "results": [asdict(r) for r in results],
            "targets": [asdict(r) for r in ratios],
            "other_ratios": [{"what": w, "transport": t, "value": v} for w, t, v in info],
            "wall_seconds": wall,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=float))
        print(f"results written to {args.json}")
    return 1 if any(r.mismatch for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
