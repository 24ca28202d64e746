"""The main job: open napari on the generated sample (or a given store); ``--screenshot FILE``
saves what the canvas shows and exits (for machines without a display, under ``xvfb-run``)."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zshard view", description=__doc__)
    parser.add_argument("path", nargs="?", help="store path or URL (default: the sample)")
    parser.add_argument("--screenshot", metavar="FILE", help="save the canvas to FILE and exit")
    parser.add_argument("--ndisplay", type=int, choices=(2, 3), default=2)
    args = parser.parse_args(argv)

    from .sample import make_sample

    t0 = time.perf_counter()
    path = args.path or str(make_sample())
    import napari

    from ._viewer import view_path

    viewer = view_path(path, ndisplay=args.ndisplay, show=True,
                       title=f"napari-zshard — {path}")
    if not args.screenshot:
        napari.run()
        return 0
    from qtpy.QtWidgets import QApplication

    for _ in range(20):  # let the canvas draw the first picture
        QApplication.processEvents()
        time.sleep(0.05)
    viewer.screenshot(args.screenshot, canvas_only=True)
    layers = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in viewer.layers)
    print(f"{path}: {layers}; screenshot {args.screenshot} after "
          f"{time.perf_counter() - t0:.1f} s")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
