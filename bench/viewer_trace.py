"""Where a cold step's time goes inside napari-zshard: intervals recorded around engine calls.

Used by ``bench_viewer.py --profile`` only (the wrappers cost a little). It wraps, at class
level and for the life of the process, the calls that make up a read:

* ``RegionReader.read``        one call per dask block napari computes (on dask's threads);
* ``Store.read_many``          one batch of byte requests (index or data), waited for;
* ``ChunkDecoder.decode`` one inner chunk decompressed (on the engine's decode pool);

The report gives, for the traced step: wall time, time in napari's slicing call, how long any
block read / any I/O batch / any decode was running (union of intervals: wall-clock coverage),
the summed decode CPU time, and what remains for napari, dask and rendering.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class Tracer:
    def __init__(self):
        from napari_zshard.engine import chunk_decode, fetch_plan
        from napari_zshard.engine import reader as reader_mod
        from napari_zshard.store import base, local, remote

        self.active = False
        self.events: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
        self._lock = threading.Lock()
        targets = [(reader_mod.RegionReader, "read", "block_read"),
                   (chunk_decode.ChunkDecoder, "decode", "decode"),
                   (fetch_plan.FetchPlanner, "_read_indexes", "index_lookup")]
        for module in (base, local, remote):
            for cls in vars(module).values():
                if isinstance(cls, type) and "read_many" in vars(cls):
                    targets.append((cls, "read_many", "io_batch"))
        for cls, name, kind in targets:
            setattr(cls, name, self._wrap(getattr(cls, name), kind))

    def _wrap(self, fn, kind: str):
        tracer = self

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not tracer.active:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.perf_counter()
                with tracer._lock:
                    tracer.events[kind].append((t0, t1, threading.current_thread().name))

        return wrapper

    def start(self) -> None:
        self.events.clear()
        self.t0 = time.perf_counter()
        self.active = True

    def stop(self) -> None:
        self.active = False

    def report(self, phase: dict) -> dict:
        """Interval statistics since :meth:`start`, with ``phase``'s own figures (seconds)."""
        out: dict = {k: v for k, v in phase.items() if k.endswith("_s")}
        for kind, evs in self.events.items():
            spans = [(a, b) for a, b, _ in evs]
            out[kind] = {
                "n": len(evs),
                "sum_s": sum(b - a for a, b in spans),
                "union_s": _union(spans),
                "first_start_s": min(a for a, _ in spans) - self.t0,
                "last_end_s": max(b for _, b in spans) - self.t0,
                "threads": sorted({t for _, _, t in evs}),
            }
            if kind in ("io_batch", "block_read"):
                out[kind]["spans_ms"] = [[round((a - self.t0) * 1e3), round((b - self.t0) * 1e3)]
                                         for a, b in sorted(spans)[:40]]
        if "slice_s" in phase:
            blocks = out.get("block_read", {}).get("union_s", 0.0)
            out["napari_dask_outside_engine_s"] = phase["slice_s"] - blocks
        return out
