"""Commit benchmark of issue 14: a small edit committed into a 1 GiB uint32 label store.

    .venv/bin/python bench/bench_annotate_commit.py                 # both layouts, local + moto S3
    .venv/bin/python bench/bench_annotate_commit.py --small --repeats 2   # a quick check

Cases, each ``--repeats`` times (round robin over the cases, so load from elsewhere on the
machine hits them alike), per chunk/shard layout and transport (see bench/README.md):

* ``one``: an ellipsoid painted with a new id inside one level-0 shard;
* ``two``: the same ellipsoid across a shard boundary (2 level-0 shards);
* ``stroke``: a small ellipsoid (a brush stroke) inside one inner chunk of that shard;
* ``noop``: the checked-out values written back unchanged (no data may be written);
* ``race``: two checkouts of the same base paint overlapping ellipsoids with different ids and
  commit at the same moment (two threads): one wins, the other reports conflicts.

Measured: checkout and commit wall time, the commit split by phase (the functions of
``annotations.commit`` are wrapped with timers), bytes written (locally every ``write()`` of
this process, ``/proc/self/io`` wchar; on S3 the PUT bodies), requests (the store's own counters,
the store operations made, and on S3 every HTTP request the client sends to moto), and the
size of the shards the commit replaced (its record), for the target
bytes written <= 1.15 x touched shards + 64 KiB. After each commit the painted voxels are read
back with zarr-python (not timed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = "cells"
KiB, MiB = 1024, 1024 * 1024
#: name -> (inner chunks, shards): a common napari-zshard layout and zarr-python 3.1's
#: ``chunks="auto", shards="auto"`` for this shape and dtype
LAYOUTS = {"64in256": ((64, 64, 64), (256, 256, 256)),
           "zarr-auto": ((16, 64, 128), (32, 128, 128))}
CASES = ("one", "two", "stroke", "noop", "race")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(256, 1024, 1024))
    p.add_argument("--small", action="store_true", help="64x256x512 instead")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--transports", default="local,s3")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--moto-child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the store: cells on a jittered grid, written once by napari-zshard's writer ----------------
class Cells:
    """Ball-like cells (ids 1..), one per grid cell of ``period`` voxels, some cells empty:
    a lazy, sliceable uint32 source the writer reads shard by shard."""

    def __init__(self, shape: Sequence[int], period: int = 24, seed: int = 7):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.uint32), len(shape)
        self.period, self.seed = period, seed

    def _cells(self, lo: np.ndarray, hi: np.ndarray):
        g = [np.arange(a, b + 1, dtype=np.int64) for a, b in zip(lo, hi, strict=True)]
        gz, gy, gx = np.meshgrid(*g, indexing="ij")
        h = (gz * 73856093 ^ gy * 19349663 ^ gx * 83492791 ^ self.seed) & 0xFFFFFFFF
        h = (h * 2654435761) & 0xFFFFFFFF
        p = self.period
        centre = [(h >> s) % 5 - 2 + p / 2 for s in (0, 3, 6)]
        radius = 7 + (h >> 9) % 4
        ids = np.where((h >> 12) % 5 == 0, 0, 1 + gz * 10**6 + gy * 10**3 + gx)
        return centre, radius, ids

    def __getitem__(self, key) -> np.ndarray:
        box = [slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape, strict=True)]
        out = np.zeros([s.stop - s.start for s in box], dtype=np.uint32)
        p = self.period
        for z0 in range(box[0].start, box[0].stop, 32):  # slabs: bounded temporaries
            z1 = min(z0 + 32, box[0].stop)
            sub = [slice(z0, z1), *box[1:]]
            lo = np.array([s.start // p for s in sub])
            hi = np.array([(s.stop - 1) // p for s in sub])
            centre, radius, ids = self._cells(lo, hi)
            coords = np.ix_(*[np.arange(s.start, s.stop) for s in sub])
            idx = tuple(c // p - a for c, a in zip(coords, lo, strict=True))
            d2 = sum((c % p - ce[idx]) ** 2 for c, ce in zip(coords, centre, strict=True))
            out[z0 - box[0].start:z1 - box[0].start] = np.where(
                d2 <= radius[idx] ** 2, ids[idx], 0).astype(np.uint32)
        return out


class Ramp:
    """The image the labels belong to (uint8; cheap, it is not what is measured)."""

    def __init__(self, shape: Sequence[int]):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.uint8), len(shape)

    def __getitem__(self, key) -> np.ndarray:
        z, y, x = np.ogrid[tuple(slice(*k.indices(n)[:2]) for k, n in zip(key, self.shape,
                                                                           strict=True))]
        return ((z + y + x) // 8 % 200 + 20).astype(np.uint8)


def ensure_store(data_dir: Path, shape: tuple[int, ...], layout: str) -> Path:
    """The cached image + label store of ``layout``, made with ``multiscale.write_image``."""
    from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image

    chunks, shards = LAYOUTS[layout]
    path = data_dir / f"commit-{'x'.join(map(str, shape))}-{layout}.zarr"
    stamp = path / "bench-commit.json"
    params = {"shape": list(shape), "chunks": chunks, "shards": shards, "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(params)):
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    save_image(path, Ramp(shape), ImageSpec(name="bench"),
               labels={LABELS: (Cells(shape), ImageSpec(name=LABELS, kind="labels"))},
               options=WriteOptions(chunks=chunks, shards=shards, overwrite=True))
    stamp.write_text(json.dumps(params))
    print(f"generated {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


# -- geometry -----------------------------------------------------------------------------------
def edit_geometry(shape, shards, chunks) -> dict:
    """Ellipsoid centres (in one shard; on a shard boundary in x; a brush stroke inside one
    inner chunk of that shard) and a checkout region holding all three."""
    shard = [int(n * f) // s for n, f, s in zip(shape, (0.4, 0.3, 0.4), shards, strict=True)]
    centre = [i * s + s // 2 for i, s in zip(shard, shards, strict=True)]
    radii = [min(r, s // 2 - 2) for r, s in zip((12, 50, 50), shards, strict=True)]
    across = [*centre[:2], (shard[2] + 1) * shards[2]]
    stroke = [i * s + (c if s >= 2 * c else 0) + c // 2
              for i, s, c in zip(shard, shards, chunks, strict=True)]
    stroke_radii = [min(r, c // 2 - 1) for r, c in zip((4, 12, 12), chunks, strict=True)]
    pts = [(centre, radii), (across, radii), (stroke, stroke_radii)]
    lo = [max(0, min(p[a] - r[a] - 8 for p, r in pts)) for a in range(3)]
    hi = [min(n, max(p[a] + r[a] + 8 for p, r in pts)) for a, n in enumerate(shape)]
    return {"one": centre, "two": across, "stroke": stroke, "radii": radii,
            "stroke_radii": stroke_radii,
            "region": tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))}


def ellipsoid(region, centre, radii, shift=(0, 0, 0)) -> np.ndarray:
    axes = np.ogrid[tuple(slice(s.start, s.stop) for s in region)]
    d2 = sum(((a - c - d) / r) ** 2 for a, c, d, r in zip(axes, centre, shift, radii,
                                                         strict=True))
    return d2 <= 1


# -- counting -----------------------------------------------------------------------------------
class Probe:
    """Per-thread phase timers, and request/byte counters attributed to the current phase."""

    def __init__(self):
        self.local = threading.local()
        self.current = "other"
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.times: dict[str, float] = defaultdict(float)
            self.ops: Counter = Counter()
            self.http: Counter = Counter()
            self.put_bytes: Counter = Counter()
            self.written: Counter = Counter()  # level -> bytes the updates replaced objects with
            self.wchar: Counter = Counter()  # phase -> bytes this process wrote (local disk)
            self.counting = True

    @property
    def phase(self) -> str:
        return getattr(self.local, "phase", "other")

    @contextlib.contextmanager
    def timed(self, name: str):
        outer = self.phase
        self.local.phase = name if outer == "other" else outer
        self.current = self.local.phase  # for the HTTP hook, which runs on the I/O thread
        w0, t0 = (io_counters()["wchar"] if outer == "other" else 0), time.perf_counter()
        try:
            yield
        finally:
            if outer == "other":
                dt, dw = time.perf_counter() - t0, io_counters()["wchar"] - w0
                with self.lock:
                    self.times[name] += dt
                    self.wchar[name] += dw
            self.local.phase = self.current = outer

    def wrap(self, module, name: str, phase: str, gen: bool = False) -> None:
        fn = getattr(module, name, None)
        if fn is None:
            print(f"note: {module.__name__}.{name} is gone; phase {phase!r} not split out")
            return
        probe = self

        if gen:
            def wrapper(*a, **k):
                it = fn(*a, **k)
                while True:
                    with probe.timed(phase):
                        try:
                            item = next(it)
                        except StopIteration as stop:
                            return stop.value
                    yield item
        else:
            def wrapper(*a, **k):
                with probe.timed(phase):
                    return fn(*a, **k)
        setattr(module, name, wrapper)

    def watch_store(self, store, prefix: str) -> None:
        """Count the store operations of ``store`` (outermost calls only) and time the
        level-k shard updates as 'level k'."""
        probe = self
        for op in ("read", "read_many", "update", "create_exclusive", "write", "overwrite",
                   "list_prefix", "delete"):
            fn = getattr(store, op)

            def counted(*a, _fn=fn, _op=op, **k):
                if getattr(probe.local, "in_op", False):
                    return _fn(*a, **k)
                probe.local.in_op = True
                try:
                    n = len(a[0]) if _op == "read_many" else 1
                    with probe.lock:
                        probe.ops[(probe.phase, _op)] += n
                    if _op != "update":
                        out = _fn(*a, **k)
                        return list(out) if _op == "list_prefix" else out
                    key, modify = a[0], a[1]
                    level = key[len(prefix):].split("/", 1)[0] if key.startswith(prefix) else ""

                    def mod(current, _m=modify):
                        new = _m(current)
                        if new is not None and new != current and level.isdigit():
                            with probe.lock:
                                probe.written[int(level)] += len(new)
                        return new
                    if level.isdigit() and probe.phase == "pyramid":
                        t0 = time.perf_counter()
                        out = _fn(key, mod, *a[2:], **k)
                        with probe.lock:
                            probe.times[f"  level {level}"] += time.perf_counter() - t0
                        return out
                    return _fn(key, mod, *a[2:], **k)
                finally:
                    probe.local.in_op = False
            setattr(store, op, counted)

    def on_http(self, request, **_kw) -> None:
        if not self.counting:
            return
        method = request.method
        if method == "GET" and ("list-type" in request.url or "?prefix" in request.url):
            method = "LIST"
        size = int(request.headers.get("Content-Length") or 0)
        with self.lock:
            self.http[method] += 1
            if method == "PUT":
                self.put_bytes[self.current] += size


PROBE = Probe()


def install_phases() -> None:
    from napari_zshard.annotations import apply, commit, provenance, region
    from napari_zshard.engine.cache import EngineCache

    PROBE.wrap(region.EditableRegion, "snapshot", "diff")
    PROBE.wrap(apply.Diff, "to_npz", "intent")
    PROBE.wrap(provenance, "new_commit_id", "intent")
    PROBE.wrap(EngineCache, "forget", "cache forget")

    for name, phase in (("finish_stale", "stale check"), ("_diff_of", "diff"),
                        ("claim_unreserved", "ids"), ("update_pyramid", "pyramid"),
                        ("_conflicts", "conflicts"), ("_written", "conflicts"),
                        ("_settle", "settle/pull"), ("current_shards", "settle/pull")):
        PROBE.wrap(commit, name, phase)
    PROBE.wrap(commit, "apply_level0", "level 0", gen=True)
    for name, phase in (("write_intent", "intent"), ("write_record", "record"),
                        ("write_object_delta", "object table")):
        PROBE.wrap(provenance, name, phase)


def io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


# -- transports ---------------------------------------------------------------------------------
class Transport:
    """Where a copy of the cached store lives for a run: a temporary folder or a moto bucket."""

    def __init__(self, kind: str, data_dir: Path):
        self.kind, self.data_dir, self.moto = kind, data_dir, None
        self.tmp = Path(tempfile.mkdtemp(dir=data_dir, prefix="commit-run-"))
        self.options: dict | None = None
        if kind == "s3":
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
            # moto in its own process: its CPU does not share this process's GIL
            self.moto = subprocess.Popen([sys.executable, __file__, "--moto-child"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            endpoint = self.moto.stdout.readline().strip()
            self.options = {"endpoint_url": endpoint}
            from napari_zshard.testing.s3_server import s3_filesystem

            s3_filesystem(endpoint).mkdir("bench")

    def place(self, path: Path) -> str:
        if self.kind == "local":
            target = self.tmp / path.name
            shutil.copytree(path, target)
            return str(target)
        from napari_zshard.store import open_store
        from napari_zshard.testing.s3_server import upload_dir

        url = f"s3://bench/{path.name}"
        upload_dir(path, url, self.options["endpoint_url"])
        store = open_store(url, self.options)
        store.read("zarr.json")
        client = store.run(store.fs.set_session())
        if not getattr(client, "_bench_probe", False):
            client.meta.events.register("before-send.s3", PROBE.on_http)
            client._bench_probe = True
        return url

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.moto is not None:
            self.moto.stdin.close()
            self.moto.wait(timeout=30)


def moto_child() -> None:
    from napari_zshard.testing.s3_server import MotoS3Server

    with MotoS3Server() as s3:
        print(s3.endpoint_url, flush=True)
        sys.stdin.read()  # until the parent closes it


# -- the cases ----------------------------------------------------------------------------------
def touched_shards(url: str, options: dict | None, commit_id: str | None) -> dict[int, int]:
    """Level -> bytes (as stored now) of the shards the commit's record says it replaced."""
    from napari_zshard.annotations.labelimage import ZSHARD_DIR
    from napari_zshard.store import open_store

    if commit_id is None:
        return {}
    PROBE.counting = False
    try:
        store = open_store(url, options)
        prefix = f"labels/{LABELS}/"
        raw = store.read(f"{prefix}{ZSHARD_DIR}/commits/{commit_id}/record.json")
        sizes: dict[int, int] = defaultdict(int)
        for key in json.loads(raw)["zshard"]["shards"]:
            sizes[int(key[len(prefix):].split("/", 1)[0])] += len(store.read(key) or b"")
        return dict(sizes)
    finally:
        PROBE.counting = True


def check_painted(url: str, options: dict | None, region, mask: np.ndarray, value: int) -> None:
    """Read the committed voxels back with zarr-python (not timed, not counted)."""
    import zarr

    PROBE.counting = False
    try:
        kw = {"storage_options": options} if options else {}
        got = zarr.open_array(f"{url}/labels/{LABELS}/0", mode="r", **kw)[region]
        if not (got[mask] == value).all():
            raise RuntimeError(f"{url}: zarr-python does not read back the committed voxels")
    finally:
        PROBE.counting = True


def _checkout(url, options, geo, who):
    from napari_zshard import annotations as ann

    return ann.checkout(url, labels=LABELS, region=geo["region"], annotator=who,
                        storage_options=options)


def run_case(case: str, transport: Transport, url: str, geo: dict) -> dict:
    options = transport.options
    PROBE.reset()
    io0, t0 = io_counters(), time.perf_counter()
    edit = _checkout(url, options, geo, f"bench-{case}")
    out: dict = {"checkout_s": time.perf_counter() - t0,
                 "checkout_requests": edit.li.store.stats.snapshot()["requests"],
                 "checkout_http": sum(PROBE.http.values()),
                 "checkout_mib_read": edit.li.store.stats.snapshot()["bytes"] / MiB}
    if case == "noop":
        box = tuple(slice(0, n // 2) for n in edit.data.shape)
        edit.data[box] = np.array(edit.data[box])  # every chunk of the box dirty, no change
    else:
        mask = ellipsoid(edit.region, geo[case], geo.get(f"{case}_radii", geo["radii"]))
        value = edit.new_label_id()
        edit.data[mask] = value
        out["voxels_painted"] = int(mask.sum())
    PROBE.watch_store(edit.li.store, f"labels/{LABELS}/")
    stats0 = edit.li.store.stats.snapshot()
    PROBE.reset()
    io0, t0 = io_counters(), time.perf_counter()
    report = edit.commit(message=f"bench {case}")
    out["commit_s"] = time.perf_counter() - t0
    io1, stats1 = io_counters(), edit.li.store.stats.snapshot()
    out.update(_counted(transport, io0, io1, stats0, stats1))
    out["phases"] = dict(PROBE.times)
    out.update(voxels_written=report.voxels_written, shards_written=report.shards_written,
               report_bytes=report.bytes_written, conflicts=len(report.conflicts))
    out["touched"] = touched_shards(url, options, report.commit_id)
    if case != "noop":
        check_painted(url, options, edit.region, mask, value)
    return out


def _counted(transport: Transport, io0, io1, stats0, stats1) -> dict:
    ops = Counter()
    for (_phase, op), n in PROBE.ops.items():
        ops[op] += n
    return {"bytes_written": (sum(PROBE.put_bytes.values()) if transport.kind == "s3"
                              else io1["wchar"] - io0["wchar"]),
            "write_syscalls": io1["syscw"] - io0["syscw"],
            "store_requests": stats1["requests"] - stats0["requests"],
            "retries": stats1["retries"] - stats0["retries"],
            "ops": dict(ops), "http": dict(PROBE.http),
            "put_bytes_by_phase": dict(PROBE.put_bytes),
            "wchar_by_phase": dict(PROBE.wchar),
            "written_by_level": dict(PROBE.written)}


def run_race(transport: Transport, url: str, geo: dict) -> dict:
    """Two commits of the same base, overlapping edits, started together (two threads)."""
    options = transport.options
    edits = [_checkout(url, options, geo, f"bench-race-{i}") for i in range(2)]
    for i, edit in enumerate(edits):
        edit.data[ellipsoid(edit.region, geo["one"], geo["radii"], (0, 0, 12 * i))] = \
            edit.new_label_id()
        PROBE.watch_store(edit.li.store, f"labels/{LABELS}/")
    stats0 = [e.li.store.stats.snapshot() for e in edits]
    barrier = threading.Barrier(2)
    done: list = [None, None]

    def go(i: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        report = edits[i].commit(message=f"bench race {i}")
        done[i] = (time.perf_counter() - t0, report)

    PROBE.reset()
    io0 = io_counters()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    io1 = io_counters()
    if None in done:
        raise RuntimeError("a racing commit failed (see the traceback above)")
    lost = [i for i in range(2) if done[i][1].conflicts]
    loser = lost[0] if lost else max(range(2), key=lambda i: done[i][0])
    winner = 1 - loser
    stats1 = [e.li.store.stats.snapshot() for e in edits]
    out = _counted(transport, io0, io1, stats0[0], stats1[0])
    other = _counted(transport, io0, io1, stats0[1], stats1[1])
    for k in ("store_requests", "retries"):
        out[k] += other[k]
    out.update(winner_s=done[winner][0], loser_s=done[loser][0],
               commit_s=max(done[0][0], done[1][0]),
               conflicts=len(done[loser][1].conflicts),
               conflict_voxels=sum(c.voxels for c in done[loser][1].conflicts),
               loser_voxels_written=done[loser][1].voxels_written,
               phases_both_threads=dict(PROBE.times))
    return out


# -- the report ---------------------------------------------------------------------------------
def _med(runs: list[dict], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in runs if key in r]
    return statistics.median(vals), min(vals), max(vals)


def summarize(name: str, runs: list[dict], goal_s: float) -> list[str]:
    m, lo, hi = _med(runs, "commit_s")
    lines = [f"{name}: {len(runs)} runs"]
    if "checkout_s" in runs[0]:
        c = _med(runs, "checkout_s")
        lines.append(f"  checkout {c[0]:.3f} s [{c[1]:.3f}-{c[2]:.3f}], "
                     f"{runs[0]['checkout_requests']} store requests, "
                     f"{runs[0]['checkout_mib_read']:.1f} MiB read")
    verdict = "MET" if m <= goal_s else "MISSED"
    lines.append(f"  commit {m:.3f} s [{lo:.3f}-{hi:.3f}] (goal <= {goal_s:g} s: {verdict})")
    if "winner_s" in runs[0]:
        w, lz = _med(runs, "winner_s"), _med(runs, "loser_s")
        lines.append(f"  winner {w[0]:.3f} s [{w[1]:.3f}-{w[2]:.3f}], loser {lz[0]:.3f} s "
                     f"[{lz[1]:.3f}-{lz[2]:.3f}]; loser reports "
                     f"{_med(runs, 'conflicts')[0]:.0f} conflicts "
                     f"({_med(runs, 'conflict_voxels')[0]:.0f} voxels), writes "
                     f"{_med(runs, 'loser_voxels_written')[0]:.0f} voxels; CAS retries "
                     f"{_med(runs, 'retries')[0]:.0f} [{_med(runs, 'retries')[1]:.0f}-"
                     f"{_med(runs, 'retries')[2]:.0f}]")
    written = _med(runs, "bytes_written")
    touched = [sum(r.get("touched", {}).values()) for r in runs]
    bound = [1.15 * t + 64 * KiB for t in touched]
    line = (f"  bytes written {written[0] / KiB:.1f} KiB "
            f"[{written[1] / KiB:.1f}-{written[2] / KiB:.1f}]")
    if any(touched):
        ok = all(r["bytes_written"] <= b for r, b in zip(runs, bound, strict=True))
        levels = runs[0]["touched"]
        per_level = ", ".join(f"L{k} {v / KiB:.1f}" for k, v in sorted(levels.items()))
        line += (f"; touched shards {statistics.median(touched) / KiB:.1f} KiB ({per_level}) -> "
                 f"bound {statistics.median(bound) / KiB:.1f} KiB: {'MET' if ok else 'MISSED'}"
                 f" in every run; max ratio written/touched "
                 f"{max(r['bytes_written'] / t for r, t in zip(runs, touched, strict=True)):.3f}")
    lines.append(line)
    key = "put_bytes_by_phase" if runs[0]["http"] else "wchar_by_phase"
    phases = list(dict.fromkeys(k for r in runs for k in r[key]))
    if phases and "winner_s" not in runs[0]:  # two threads: per-phase bytes would mix
        lines.append("  bytes written by phase, median KiB: " + ", ".join(
            f"{k} {statistics.median(r[key].get(k, 0) for r in runs) / KiB:.1f}"
            for k in phases) + "; shard bytes by level: " + ", ".join(
            f"L{k} {statistics.median(r['written_by_level'].get(k, 0) for r in runs) / KiB:.1f}"
            for k in sorted({k for r in runs for k in r["written_by_level"]})))
    if "voxels_written" in runs[0]:
        lines.append(f"  report: {runs[0]['voxels_written']} voxels, "
                     f"{runs[0]['shards_written']} shards, {runs[0]['report_bytes'] / KiB:.1f}"
                     f" KiB written, {runs[0]['conflicts']} conflicts")
    ops = Counter()
    for r in runs:
        ops.update(r["ops"])
    http = Counter()
    for r in runs:
        http.update(r["http"])
    n = len(runs)
    lines.append("  requests (mean per run): store ops " + ", ".join(
        f"{k} {v / n:.1f}" for k, v in sorted(ops.items())) +
        f"; store counter {_med(runs, 'store_requests')[0]:.0f}" +
        (("; HTTP " + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(http.items())))
         if http else f"; write syscalls {_med(runs, 'write_syscalls')[0]:.0f}"))
    if "phases" in runs[0]:
        names = list(dict.fromkeys(k for r in runs for k in r["phases"]))
        parts = []
        for k in names:
            vals = [r["phases"].get(k, 0.0) for r in runs]
            parts.append(f"{k.strip()}{' (pyramid)' if k.startswith('  ') else ''} "
                         f"{statistics.median(vals) * 1e3:.0f}")
        other = [r["commit_s"] - sum(v for k, v in r["phases"].items()
                                     if not k.startswith("  ")) for r in runs]
        parts.append(f"other {statistics.median(other) * 1e3:.0f}")
        lines.append("  phases, median ms: " + ", ".join(parts))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.moto_child:
        moto_child()
        return 0
    shape = (64, 256, 512) if args.small else tuple(args.shape)
    cases = [c for c in args.cases.split(",") if c]
    install_phases()
    results: dict = {"shape": list(shape), "cpus": os.cpu_count(),
                     "loadavg_start": os.getloadavg(), "runs": {}}
    print(f"label store {shape} uint32 = {np.prod(shape) * 4 / MiB:.0f} MiB raw; "
          f"{args.repeats} runs per case, round robin; load average {os.getloadavg()}",
          flush=True)
    lines: list[str] = []
    for layout in args.layouts.split(","):
        path = ensure_store(args.data_dir, shape, layout)
        chunks, shards = LAYOUTS[layout]
        geo = edit_geometry(shape, [min(s, n) for s, n in zip(shards, shape, strict=True)],
                            chunks)
        for kind in args.transports.split(","):
            transport = Transport(kind, args.data_dir)
            try:
                url = transport.place(path)
                first = run_case("one", transport, url, geo)  # imports, the history listing
                runs: dict[str, list[dict]] = {c: [] for c in cases}
                for _ in range(args.repeats):
                    for case in cases:
                        runs[case].append(run_race(transport, url, geo) if case == "race"
                                          else run_case(case, transport, url, geo))
            finally:
                transport.close()
            goal = 1.0 if kind == "local" else 3.0
            head = f"{kind} | chunks {chunks} in shards {shards} | region " \
                   f"{[s.stop - s.start for s in geo['region']]}"
            lines += ["", head, f"  first commit in the process: {first['commit_s']:.3f} s "
                      f"(checkout {first['checkout_s']:.3f} s)"]
            for case in cases:
                lines += summarize(f" {case}", runs[case], goal)
            print("\n".join(lines[-(len(lines) - lines.index(head)):]), flush=True)
            results["runs"][f"{kind}/{layout}"] = {"first": first, **runs}
    results["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end {os.getloadavg()} (2 cores shared with other agents)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
