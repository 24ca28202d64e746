"""One contender in one fresh process: a real napari viewer, timed from ``open`` to the last jump.

Run by ``bench_viewer.py`` (never by hand): ``python viewer_worker.py CONFIG.json RESULT.json``.

A fresh process per contender and transport, because in-process state would leak from one
contender to the next: the engine's process-wide chunk and index caches, napari's opportunistic
dask cache, zarr-python's and aiohttp's connection pools, and napari's one-time costs (imports,
the pint unit registry, shader compilation), which the first contender would pay for the others.

Inside the process, before anything is timed: every reader's modules are imported, a small
in-memory multiscale layer is shown and removed (pint, vispy, napari's layer machinery), and a
reader contender opens a different, small store with its plugin and closes it (plugin code
paths, thread and connection pools). Then the engine cache is replaced by a new one and napari's
dask cache is emptied, so the benchmark volume is read cold.

When is a step done? ``viewer.dims.set_current_step`` slices synchronously (napari's default);
the step is complete at the end of the first vispy draw that *starts after it returned*, finished
with ``glFinish`` (so software rasterisation is counted), provided the layer is loaded and that
draw asked for no further draw (napari's ``_update_draw`` may re-slice after a level change).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

# A picture is "on the canvas" when at least this share of its pixels is not background.
MIN_LIT_FRACTION = 0.02


class DrawProbe:
    """Hooks the vispy canvas's draw event (last handler): end time of every finished draw."""

    def __init__(self, qt_viewer, layer_getter):
        from vispy.gloo import gl

        self.gl = gl
        self.scene_canvas = qt_viewer.canvas._scene_canvas
        self.layer_getter = layer_getter
        self.draws: list[dict] = []
        self.readback = False
        self.renderer = ""
        self.scene_canvas.events.draw.connect(self._on_draw, position="last")

    def _on_draw(self, event) -> None:
        gl = self.gl
        gl.glFinish()
        t = time.perf_counter()
        if not self.renderer:
            self.renderer = str(gl.glGetParameter(gl.GL_RENDERER))
        layer = self.layer_getter()
        record = {
            "t": t,
            "loaded": bool(layer.loaded) if layer is not None else False,
            "level": int(layer.data_level) if layer is not None else -1,
            "pending": bool(self.scene_canvas._update_pending),
            "lit": None,
        }
        if self.readback:
            from vispy.gloo import read_pixels

            pixels = read_pixels(alpha=False)
            record["lit"] = float((pixels.max(axis=-1) > 4).mean())
        self.draws.append(record)


class Meter:
    """Server requests (HTTP) or read syscalls (local), and this process's CPU time."""

    def __init__(self, server):
        import psutil

        self.server = server
        self.proc = psutil.Process()

    def start(self) -> None:
        if self.server is not None:
            self.server.reset()
            self.server_cpu0 = self._server_cpu()
        self.io0 = self.proc.io_counters()
        self.cpu0 = sum(self.proc.cpu_times()[:2])

    def _server_cpu(self) -> float:
        import psutil

        return sum(psutil.Process(self.server.pid).cpu_times()[:2])

    def stop(self) -> dict:
        out = {"cpu_s": sum(self.proc.cpu_times()[:2]) - self.cpu0}
        if self.server is not None:
            s = self.server.summary()
            # the loopback server shares this machine's cores (an object store would not)
            out.update(requests=s.requests, bytes=s.bytes,
                       server_cpu_s=self._server_cpu() - self.server_cpu0)
        else:
            io = self.proc.io_counters()
            out.update(requests=io.read_count - self.io0.read_count,
                       bytes=io.read_chars - self.io0.read_chars)
        return out


class Session:
    """The viewer, its draw probe and the waits."""

    def __init__(self, cfg: dict):
        import napari
        from napari.settings import get_settings
        from qtpy.QtWidgets import QApplication

        self.cfg = cfg
        self.async_slicing = bool(get_settings().experimental.async_)
        self.viewer = napari.Viewer(show=True, title="bench_viewer")
        self.app = QApplication.instance()
        qt_viewer = self.viewer.window._qt_viewer
        for dock in (qt_viewer.dockLayerList, qt_viewer.dockLayerControls):
            dock.setVisible(False)  # keep the window (canvas + sliders) inside the Xvfb screen
        width, height = cfg["canvas"]
        qt_viewer.canvas.native.setFixedSize(width, height)
        self.layer = None
        layers = self.viewer.layers
        self.probe = DrawProbe(qt_viewer, lambda: layers[0] if len(layers) else None)
        self.scene_canvas = qt_viewer.canvas._scene_canvas
        self.pump(0.3)
        self.canvas_size = tuple(int(n) for n in qt_viewer.canvas.size)  # (height, width)

    def pump(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.app.processEvents()
            time.sleep(0.002)

    def wait_draw(self, after: float, *, need_lit: bool = False, settled: bool = True,
                  timeout: float | None = None) -> dict:
        """The first draw that ended after ``after`` and meets the conditions."""
        timeout = timeout or self.cfg.get("wait_timeout", 300.0)
        deadline = time.perf_counter() + timeout
        seen = 0
        while True:
            draws = self.probe.draws
            for d in draws[seen:]:
                if d["t"] <= after or not d["loaded"]:
                    continue
                if need_lit and (d["lit"] is None or d["lit"] < MIN_LIT_FRACTION):
                    continue
                if settled and d["pending"]:
                    continue
                return d
            seen = len(draws)
            if time.perf_counter() > deadline:
                last = [{k: (round(v - after, 3) if k == "t" else v) for k, v in d.items()}
                        for d in draws[-4:]]
                raise TimeoutError(f"no qualifying draw within {timeout} s; last draws "
                                   f"(t relative to the wait's start): {last}")
            self.app.processEvents()
            if len(self.probe.draws) == seen:
                time.sleep(0.0005)

    def settle(self, first: dict, t_open: float) -> dict:
        """The draw after which the picture no longer changes, once ``open`` has returned.

        napari may draw (and show the picture) while ``viewer.open`` still runs. If that draw
        requested no other and none comes once the pending events are processed, the picture
        was final when it was drawn, but the window was busy until ``open`` returned.
        """
        n = len(self.probe.draws)
        quiet_since = time.perf_counter()
        while time.perf_counter() - quiet_since < 0.2:
            self.app.processEvents()
            if len(self.probe.draws) > n or self.scene_canvas._update_pending:
                return self.wait_draw(t_open, need_lit=True)
            time.sleep(0.002)
        last = self.probe.draws[-1]
        if first["t"] <= last["t"] and last["loaded"] and not last["pending"] and \
                (last["lit"] or 0) >= MIN_LIT_FRACTION:
            return {**last, "t": max(last["t"], t_open)}
        return self.wait_draw(t_open, need_lit=True)

    def step(self, z: int) -> dict:
        """Move to plane ``z`` and wait until the canvas shows it."""
        viewer = self.viewer
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, z)
        t_sliced = time.perf_counter()
        sync_ok = bool(self.layer.loaded) and round(
            float(self.layer._slice_input.world_slice.point[0])) == z
        d = self.wait_draw(t_sliced)
        return {"z": z, "seconds": d["t"] - t0, "slice_s": t_sliced - t0,
                "draw_s": d["t"] - t_sliced, "level": d["level"], "sync_ok": sync_ok}

    def screenshot(self) -> np.ndarray:
        return self.viewer.screenshot(canvas_only=True, flash=False)[..., :3]


def warm_up(session: Session, cfg: dict, server_url: str | None) -> None:
    """One-time costs of the process, paid before anything is timed (see the module docstring)."""
    import dask.array  # noqa: F401  (imports scipy.fft: ~2 s the first time)
    import napari_ome_zarr  # noqa: F401
    import zarr  # noqa: F401

    try:
        import napari_zshard.plugin.reader
    except ImportError:  # a revision before the adapters moved into plugin/ (before/after runs)
        import napari_zshard._reader  # noqa: F401

    viewer = session.viewer
    rng = np.random.default_rng(0)
    dummy = [rng.integers(0, 1000, (8, 256 // f, 256 // f), dtype=np.uint16) for f in (1, 2)]
    layer = viewer.add_image(dummy, multiscale=True, contrast_limits=(0, 1000),
                             units=("micrometer",) * 3, axis_labels=("z", "y", "x"),
                             name="warm-up")
    session.pump(0.5)
    viewer.layers.remove(layer)
    if cfg["contender"] != "memory":
        where = cfg["warmup_path"] if server_url is None else f"{server_url}/{cfg['warmup_name']}"
        open_contender(session, cfg, where)
        session.pump(0.5)
        viewer.layers.clear()
    viewer.dims.ndim = 2
    session.pump(0.3)


def reset_caches(cfg: dict) -> None:
    from napari.utils import _dask_utils

    import napari_zshard

    napari_zshard.set_cache_budget(cfg["cache_bytes"])
    _dask_utils._DASK_CACHE.cache.clear()


def open_contender(session: Session, cfg: dict, where: str, levels=None):
    viewer = session.viewer
    if cfg["contender"] == "memory":
        return viewer.add_image(levels, multiscale=True, contrast_limits=cfg["window"],
                                name="cells", units=("micrometer",) * 3,
                                axis_labels=("z", "y", "x"))
    if cfg["contender"] == "zshard-arrays":
        return open_engine_arrays(viewer, where)
    return viewer.open(where, plugin=cfg["plugin"])[0]


def open_engine_arrays(viewer, where: str):
    """Experiment: napari-zshard's reader output with each level handed to napari as a lazy
    view of the engine's ``ShardedArray`` instead of a dask array over it (napari then reads
    exactly the plane and region it shows, with no dask graph per step)."""
    from napari_zshard import open_nodes
    from napari_zshard.plugin.layer_data import layer_data

    nodes = open_nodes(where)
    _, kwargs, _ = layer_data(nodes)[0]
    levels = [LazyView(a) for a in nodes[0].arrays]
    return viewer.add_image(levels if kwargs.get("multiscale") else levels[0], **kwargs)


class LazyView:
    """Basic (int / step-1 slice) indexing composes views; ``np.asarray`` reads the region.

    napari slices the displayed axes of a level first (``level[:, y0:y1, x0:x1]``) and the
    plane afterwards: on an eager array-like the first step would read every plane.
    """

    def __init__(self, array, key: tuple | None = None):
        self.array = array
        self.key = key if key is not None else tuple(slice(0, n) for n in array.shape)
        self.shape = tuple(k.stop - k.start for k in self.key if isinstance(k, slice))
        self.dtype = array.dtype
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        it = iter(key)
        new = []
        for k in self.key:
            if not isinstance(k, slice):
                new.append(k)
                continue
            sub = next(it)
            n = k.stop - k.start
            if isinstance(sub, (int, np.integer)):
                new.append(k.start + (int(sub) + n if sub < 0 else int(sub)))
            else:
                start, stop, step = sub.indices(n)
                if step != 1:
                    return np.asarray(self)[key]
                new.append(slice(k.start + start, k.start + max(start, stop)))
        view = LazyView(self.array, tuple(new))
        return view if view.ndim else np.asarray(view)

    def __array__(self, dtype=None, copy=None):
        data = np.asarray(self.array[self.key])
        return data if dtype is None else data.astype(dtype, copy=False)


def summarize_steps(steps: list[dict]) -> dict:
    times = [s["seconds"] for s in steps]
    if not times:
        return {"n": 0}
    return {"n": len(times), "median": statistics.median(times),
            "p90": float(np.percentile(times, 90)), "max": max(times), "total": sum(times),
            "levels": sorted({s["level"] for s in steps}),
            "sync_ok": all(s["sync_ok"] for s in steps)}


def run(cfg: dict) -> dict:
    import psutil

    session = Session(cfg)
    server = None
    if cfg["transport"] == "http":
        from served import ServedDirectory

        server = ServedDirectory(Path(cfg["data_dir"]), latency=cfg["latency_ms"] / 1e3)
    try:
        return _measure(session, cfg, server, psutil)
    finally:
        if server is not None:
            server.stop()


def _measure(session: Session, cfg: dict, server, psutil) -> dict:
    server_url = server.url if server is not None else None
    where = cfg["path"] if server_url is None else f"{server_url}/{cfg['name']}"
    levels = None
    if cfg["contender"] == "memory":
        from viewer_volume import load_levels

        levels = load_levels(Path(cfg["path"]))
    warm_up(session, cfg, server_url)
    reset_caches(cfg)
    tracer = None
    if cfg.get("trace"):
        from viewer_trace import Tracer

        tracer = Tracer()
    meter = Meter(server)
    cpu_all0, own0 = psutil.cpu_times(), psutil.Process().cpu_times()
    t_run = time.perf_counter()
    result: dict = {"contender": cfg["contender"], "transport": cfg["transport"],
                    "where": where, "canvas_hw": list(session.canvas_size),
                    "async_slicing": session.async_slicing}

    # -- open -> first picture ------------------------------------------------------------------
    session.probe.readback = True
    profiler = None
    if cfg.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    if tracer is not None:
        tracer.start()
    n_draws = len(session.probe.draws)
    meter.start()
    t0 = time.perf_counter()
    session.layer = open_contender(session, cfg, where, levels)
    t_open = time.perf_counter()
    first = session.wait_draw(t0, need_lit=True, settled=False)
    settled = session.settle(first, t_open)
    counts = meter.stop()
    session.probe.readback = False
    layer = session.layer
    result["open"] = {"first_picture_s": first["t"] - t0, "first_level": first["level"],
                      "settled_s": settled["t"] - t0, "level": settled["level"],
                      "open_call_s": t_open - t0, "lit": settled["lit"], **counts}
    if tracer is not None:
        tracer.stop()
        result["trace_open"] = tracer.report({
            "step_s": settled["t"] - t0, "open_call_s": t_open - t0,
            "draws_s": [d["t"] - t0 for d in session.probe.draws[n_draws:]]})
    if profiler is not None:
        profiler.stop()
        text = Path(cfg["profile"]).with_suffix(".open.txt")
        text.write_text(profile_text(profiler))
        result["profile_open"] = str(text)
    result["levels"] = [list(map(int, a.shape)) for a in layer.data]
    result["block"] = list(map(int, layer.data[0].chunksize)) if hasattr(
        layer.data[0], "chunksize") else None
    z_mid = int(session.viewer.dims.current_step[0])
    result["z_mid"] = z_mid
    session.pump(0.2)

    # -- the cold step into a chunk row nothing has read yet ----------------------------------
    row = cfg["chunk"]
    nz = result["levels"][0][0]
    mid_row = z_mid // row
    cold_row = mid_row + 1 if (mid_row + 1) * row + row <= nz else mid_row - 1
    z_cold = cold_row * row
    meter.start()
    if tracer is not None:
        tracer.start()
    cold = session.step(z_cold)
    if tracer is not None:
        tracer.stop()
        result["trace"] = tracer.report({**cold, "step_s": cold["seconds"]})
    result["cold_step"] = {**cold, **meter.stop()}

    # -- consecutive steps inside that row ----------------------------------------------------
    meter.start()
    if cfg.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
    steps = [session.step(z) for z in range(z_cold + 1, z_cold + row)]
    if cfg.get("profile"):
        profiler.stop()
        text = Path(cfg["profile"]).with_suffix(".row.txt")
        text.write_text(profile_text(profiler))
        result["profile_row"] = str(text)
    result["row_steps"] = {**summarize_steps(steps), **meter.stop(),
                           "z": [z_cold + 1, z_cold + row - 1],
                           "times": [s["seconds"] for s in steps]}
    shot = session.screenshot()
    np.save(cfg["screenshot"], shot[::2, ::2])

    # -- random jumps ---------------------------------------------------------------------------
    meter.start()
    jumps = []
    t_jumps = time.perf_counter()
    for z in cfg["jumps"]:
        jumps.append(session.step(int(z)))
        if time.perf_counter() - t_jumps > cfg["jump_cap_s"] and len(jumps) < len(cfg["jumps"]):
            break
    result["random_jumps"] = {**summarize_steps(jumps), **meter.stop(),
                              "z": [s["z"] for s in jumps],
                              "times": [s["seconds"] for s in jumps],
                              "planned": len(cfg["jumps"])}

    if cfg.get("profile"):  # last: it empties the caches
        result["profile"] = profile_cold_step(session, cfg, row, nz, z_cold)
    cpu_all1, own1 = psutil.cpu_times(), psutil.Process().cpu_times()
    wall = time.perf_counter() - t_run
    busy = (sum(cpu_all1) - cpu_all1.idle - getattr(cpu_all1, "iowait", 0)) - (
        sum(cpu_all0) - cpu_all0.idle - getattr(cpu_all0, "iowait", 0))
    ours = sum(own1[:4]) - sum(own0[:4])
    result["machine"] = {"wall_s": wall, "other_cpu_s": max(0.0, busy - ours),
                         "renderer": session.probe.renderer,
                         "loadavg": list(os.getloadavg())}
    return result


def profile_text(profiler) -> str:
    """Every frame (napari's and dask's too) that took at least 2% of the profiled time."""
    return profiler.output_text(unicode=False, color=False, processor_options={
        "show_regex": ".*", "filter_threshold": 0.02})


def profile_cold_step(session: Session, cfg: dict, row: int, nz: int, z_cold: int) -> dict:
    """pyinstrument over a second cold step (another unread row), caches emptied first."""
    from pyinstrument import Profiler

    import napari_zshard

    napari_zshard.default_cache().chunks.clear()  # the opened arrays' cache; indexes stay
    others = [r * row for r in range(nz // row) if r * row != z_cold]
    z = others[-1] if others else z_cold  # every row is cold again: the chunk cache is empty
    profiler = Profiler(interval=0.001)
    profiler.start()
    rec = session.step(z)
    profiler.stop()
    out = Path(cfg["profile"])
    out.write_text(profile_text(profiler))
    return {**rec, "text": str(out)}


def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    result = run(cfg)
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1, default=float))
    # napari's exit path is slow and noisy under Xvfb; the result is written
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
