"""Annotation benchmark: painting an edit region in real napari, and the memory of an export.

Run under Xvfb (see bench/README.md)::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python bench/bench_annotate.py
    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python bench/bench_annotate.py --small

Two figures of issue 14, on an OME-Zarr image with an empty uint32 label image (created by the
annotation core itself, so with the image's levels, chunks and shards):

* **brush events**: the Annotate widget checks out the whole 64 x 2048 x 2048 region (1 GiB of
  uint32) and napari paints into it with ``layer.paint`` (one brush stamp, as one mouse-move
  event paints, display refreshed); the same strokes are painted into a Labels layer over a
  plain numpy array of the same shape. Events alternate between the two layers in rounds so
  drift hits both. Median per event, without and with the redraw; target <= 1.2x numpy.
* **memory**: a fresh process (no napari) checks the region out, repaints every voxel plane by
  plane through ``edit.data[z] = ...`` (the path napari's writes take), commits, and reports
  its peak RSS; target <= the region's raw size + 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FULL_SHAPE = (64, 2048, 2048)
SMALL_SHAPE = (16, 512, 512)
LABELS = "bench"
MiB = 1024 * 1024


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help=f"{SMALL_SHAPE} instead of {FULL_SHAPE}")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--events", type=int, default=300, help="brush events per layer")
    p.add_argument("--brush", type=int, default=10, help="brush size (napari's default: 10)")
    p.add_argument("--parts", default="paint,memory")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--memory-cap", type=float, default=None,
                   help="MiB; the memory child is killed above (default 4x the region + 1 GiB)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def ensure_store(data_dir: Path, shape: tuple[int, ...]) -> Path:
    """An image (uint8, 3 levels) with an empty uint32 label image, made once and reused."""
    from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image

    path = data_dir / f"annotate-{'x'.join(map(str, shape))}.zarr"
    if (path / "labels" / LABELS / "zarr.json").exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    image = ((x // 7 + y // 5 + z * 3) % 251).astype(np.uint8)
    chunks = (min(16, shape[0]), 256, 256)
    shards = (shape[0], 1024, 1024)
    save_image(path, image, ImageSpec(name="bench"),
               options=WriteOptions(chunks=chunks, shards=shards, levels=3, overwrite=True))
    from napari_zshard import annotations as ann

    edit = ann.checkout(str(path), labels=LABELS, region=tuple(slice(0, 1) for _ in shape),
                        annotator="bench", create=True)
    del edit
    return path


def plane_labels(z: int, shape: tuple[int, int]) -> np.ndarray:
    """A repainted plane: 64-pixel tiles of distinct ids (every voxel changes)."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return ((yy // 64) * 97 + (xx // 64) + z * 7 + 1).astype(np.uint32)


# -- memory: a fresh process, no napari --------------------------------------------------------
def memory_child(path: str) -> dict:
    from napari_zshard import annotations as ann

    base = rss_mib()
    t0 = time.perf_counter()
    edit = ann.checkout(path, labels=LABELS, region=None, annotator="bench-memory")
    t_checkout = time.perf_counter() - t0
    after_checkout = rss_mib()
    shape = edit.data.shape
    for z in range(shape[0]):
        edit.data[z] = plane_labels(z, shape[1:])
    after_paint = rss_mib()
    t0 = time.perf_counter()
    report = edit.commit(message="bench: full repaint")
    t_commit = time.perf_counter() - t0
    raw = edit.data.nbytes / MiB
    return {"region": list(shape), "raw_mib": raw, "rss_after_imports_mib": base,
            "rss_after_checkout_mib": after_checkout, "rss_after_paint_mib": after_paint,
            "peak_rss_mib": peak_rss_mib(), "target_mib": raw + 256,
            "checkout_s": t_checkout, "commit_s": t_commit,
            "voxels_written": report.voxels_written, "shards_written": report.shards_written,
            "bytes_written": report.bytes_written}


def run_memory(path: Path, *, cap_mib: float) -> dict:
    """The child's figures; it is killed (and says so) when its RSS passes ``cap_mib``, so a
    commit that needs far too much memory cannot take a shared machine down with it."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp(dir=path.parent)) / path.name
    shutil.copytree(path, work)  # the template's label image stays empty for the next run
    try:
        return _watch_memory_child(work, cap_mib=cap_mib)
    finally:
        shutil.rmtree(work.parent)


def _watch_memory_child(path: Path, *, cap_mib: float) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--memory-child", str(path)],
                             stdout=subprocess.PIPE, text=True)
    status = Path(f"/proc/{child.pid}/status")
    seen = 0.0
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            seen = max(seen, int(line.split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        if seen > cap_mib:
            child.kill()
            child.wait()
            return {"aborted": f"RSS passed {cap_mib:.0f} MiB", "peak_rss_mib": seen}
        time.sleep(0.2)
    out = child.stdout.read() if child.stdout else ""
    if child.returncode:
        raise RuntimeError(f"the memory child failed ({child.returncode})")
    return json.loads(out.strip().splitlines()[-1])


# -- painting in napari ------------------------------------------------------------------------
def _wait(app, done, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the checkout did not finish")
        app.processEvents()
        time.sleep(0.01)


def run_paint(path: Path, *, events: int, brush: int) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_zshard.plugin.annotate.widget import NUMBERS, AnnotateWidget

    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1280, 1000)
    viewer.open(str(path), plugin="napari-zshard")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Annotate")
    widget.label_image.value = LABELS
    widget.source.value = NUMBERS
    widget.region.value = ", ".join(f"0:{n}" for n in viewer.layers[0].level_shapes[0])
    t0 = time.perf_counter()
    widget.edit_button.native.click()
    _wait(app, lambda: widget.layer is not None)
    t_checkout = time.perf_counter() - t0
    edit_layer = widget.layer
    shape = edit_layer.data.shape
    numpy_layer = viewer.add_labels(np.zeros(shape, np.uint32), name="numpy",
                                    scale=edit_layer.scale, translate=edit_layer.translate)
    z = shape[0] // 2
    viewer.dims.set_point(0, z)
    viewer.scene.camera.center = (shape[1] / 2, shape[2] / 2)
    viewer.scene.camera.zoom = 1.0
    app.processEvents()
    rng = np.random.default_rng(0)
    # a stroke: consecutive brush positions a few pixels apart, as a mouse drag paints
    walk = np.cumsum(rng.integers(-3, 4, size=(events + 20, 2)), axis=0)
    points = np.clip(walk + np.array(shape[1:]) // 2, 0, np.array(shape[1:]) - 1)
    results: dict[str, dict[str, list[float]]] = {
        "edit": {"paint": [], "paint+draw": []}, "numpy": {"paint": [], "paint+draw": []}}
    layers = {"edit": edit_layer, "numpy": numpy_layer}
    label = int(widget.new_label())
    for layer in layers.values():
        layer.brush_size = brush
        layer.selected_label = label
    rounds = 10
    per_round = max(1, (events + 20) // rounds)
    for r in range(rounds):
        for name in (("edit", "numpy") if r % 2 == 0 else ("numpy", "edit")):
            layer = layers[name]
            for other in layers.values():
                other.visible = other is layer
            viewer.layers.selection.active = layer
            app.processEvents()
            for i in range(r * per_round, (r + 1) * per_round):
                y, x = points[i]
                t0 = time.perf_counter()
                layer.paint((z, int(y), int(x)), label, refresh=True)
                t1 = time.perf_counter()
                app.processEvents()  # the redraw of what changed
                t2 = time.perf_counter()
                if i >= 20:  # the first events warm caches and textures
                    results[name]["paint"].append(t1 - t0)
                    results[name]["paint+draw"].append(t2 - t0)
    np.testing.assert_array_equal(np.asarray(edit_layer.data[z]), numpy_layer.data[z])
    out = {"region": list(shape), "checkout_s": t_checkout, "brush_size": brush,
           "events_per_layer": len(results["edit"]["paint"])}
    for kind in ("paint", "paint+draw"):
        e, n = (statistics.median(results[k][kind]) for k in ("edit", "numpy"))
        out[kind] = {"edit_ms": e * 1e3, "numpy_ms": n * 1e3, "ratio": e / n}
    viewer.close()
    return out


def memory_text(m: dict, raw_mib: float) -> str:
    if "aborted" in m:
        return f"memory: aborted, {m['aborted']} (region {raw_mib:.0f} MiB raw)"
    return (f"memory: region {m['region']} = {m['raw_mib']:.0f} MiB raw; RSS after imports "
            f"{m['rss_after_imports_mib']:.0f}, after checkout {m['rss_after_checkout_mib']:.0f}, "
            f"after repaint {m['rss_after_paint_mib']:.0f}, peak {m['peak_rss_mib']:.0f} MiB "
            f"(target <= {m['target_mib']:.0f}); checkout {m['checkout_s']:.1f} s, commit "
            f"{m['commit_s']:.1f} s, {m['voxels_written']} voxels, {m['shards_written']} shards, "
            f"{m['bytes_written'] / MiB:.1f} MiB written")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return 0
    shape = tuple(args.shape) if args.shape else SMALL_SHAPE if args.small else FULL_SHAPE
    path = ensure_store(args.data_dir, shape)
    parts = set(args.parts.split(","))
    result: dict = {"store": str(path), "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if "paint" in parts:
        result["paint"] = run_paint(path, events=args.events, brush=args.brush)
        p = result["paint"]
        print(f"checkout {p['checkout_s']:.1f} s of {p['region']} in napari; brush "
              f"{p['brush_size']}, {p['events_per_layer']} events per layer")
        for kind in ("paint", "paint+draw"):
            k = p[kind]
            print(f"  median {kind:10s}: edit {k['edit_ms']:.2f} ms, numpy {k['numpy_ms']:.2f} ms, "
                  f"ratio {k['ratio']:.2f} (target <= 1.2)")
    if "memory" in parts:
        raw_mib = int(np.prod(shape)) * 4 / MiB
        result["memory"] = m = run_memory(path, cap_mib=args.memory_cap or 4 * raw_mib + 1024)
        print(memory_text(m, raw_mib))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())
