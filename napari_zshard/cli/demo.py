"""``zshard demo``: make the sample, read its middle plane cold and warm, report what the engine
read (the first half of ``make demo``)."""

from __future__ import annotations

import time

from ..engine import EngineCache, open_array
from ..sample import make_sample


def run(path: str | None = None) -> str:
    """Generate the sample (once), read its middle plane cold and warm, return a report."""
    t0 = time.perf_counter()
    store_path = make_sample(path)
    made = time.perf_counter() - t0
    arr = open_array(store_path / "0", cache=EngineCache(256 * 1024 * 1024))
    z = arr.shape[0] // 2
    lines = [f"sample store: {store_path} (ready in {made:.2f} s)", repr(arr)]
    for label, plane in (("cold", z), ("warm", z), ("next plane", z + 1)):
        arr.reset_counters()
        t = time.perf_counter()
        data = arr[plane]
        ms = (time.perf_counter() - t) * 1000
        c, s = arr.counters, arr.store.stats.snapshot()
        lines.append(
            f"{label:>10}: plane z={plane} {data.shape} mean={data.mean():.1f} in {ms:.1f} ms — "
            f"{c['index_requests']} index + {c['data_requests']} data requests, "
            f"{s['bytes'] / 1e6:.2f} MB read, {c['chunks_decoded']} chunks decoded")
    return "\n".join(lines)

