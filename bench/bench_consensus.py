"""Merge time and peak memory for 4 annotators (issue 15).

    python bench/bench_consensus.py --size 256 --objects 5000 [--size 512 ...] [--mode instance]

Builds a Voronoi volume of ``--objects`` cells at 256³ (larger sizes repeat each voxel, so
the objects stay the same and only the voxels grow) and four annotators from it (shifted by
1-2 voxels from each other, 5 % of objects dropped, ids permuted), writes them as label
images of one sharded OME-Zarr image (64³ chunks, 128³ shards), then runs the merge in a
fresh process and reports its wall time and peak RSS (VmHWM of that process: ru_maxrss would
include the builder's memory across fork+exec; the baseline is the same process after the
imports, before the merge). Bytes per object = (peak - baseline) / (4 x objects).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SHIFTS = ((1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 1, 0))  # boundaries off by 1-2 voxels


def build(path: str, size: int, objects: int, seed: int = 0) -> None:
    import dask.array as da
    from scipy.spatial import cKDTree

    from napari_zshard import annotations as ann
    from napari_zshard.annotations.coverage import mark_reviewed
    from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image

    rng = np.random.default_rng(seed)
    base = 256
    seeds = rng.uniform(0, base, (objects, 3))
    gt = np.empty((base,) * 3, np.uint32)
    tree = cKDTree(seeds)
    zz = np.stack(np.indices((1, base, base)), -1).reshape(-1, 3).astype(np.float64)
    for z in range(base):  # a slab at a time: little memory
        zz[:, 0] = z
        gt[z] = (tree.query(zz)[1] + 1).reshape(base, base)
    labels = {}
    for a, shift in enumerate(SHIFTS):
        lab = np.roll(gt, shift, axis=(0, 1, 2))
        drop = rng.choice(objects, objects // 20, replace=False) + 1
        perm = np.r_[0, rng.permutation(objects) + 1 + a * objects].astype(np.uint32)
        perm[drop] = 0
        lab = perm[lab]
        arr = da.from_array(lab, chunks=(64, 256, 256))
        f = size // base
        if f > 1:
            arr = arr.repeat(f, 0).repeat(f, 1).repeat(f, 2)
        name = ann.annotator_slug(f"annotator {a}")
        labels[name] = (arr.rechunk((128, 128, 128)), ImageSpec(kind="labels", name=name))
    image = da.zeros((size,) * 3, np.uint8, chunks=128)
    save_image(path, image, ImageSpec(), labels=labels,
               options=WriteOptions(chunks=(64, 64, 64), shards=(128, 128, 128), levels=2))
    for name in labels:
        mark_reviewed(path, labels=name)


def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_merge(path: str, mode: str, workers: int) -> dict:
    from napari_zshard.annotations.consensus import merge

    base = _hwm_kib()
    t0 = time.perf_counter()
    report = merge(path, mode=mode, workers=workers)
    seconds = time.perf_counter() - t0
    peak = _hwm_kib()
    return {"seconds": seconds, "peak_rss_mib": peak / 1024, "baseline_rss_mib": base / 1024,
            "consensus_objects": report.consensus_objects, "conflicts": report.conflicts}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--objects", type=int, action="append")
    p.add_argument("--mode", default="instance")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--merge-only", metavar="PATH")
    args = p.parse_args()
    if args.merge_only:
        print(json.dumps(run_merge(args.merge_only, args.mode, args.workers)))
        return
    for size in args.size or [256]:
        for objects in args.objects or [5000]:
            with tempfile.TemporaryDirectory(prefix="bench-consensus-") as tmp:
                path = os.path.join(tmp, "vol.zarr")
                t0 = time.perf_counter()
                build(path, size, objects)
                built = time.perf_counter() - t0
                out = subprocess.run([sys.executable, __file__, "--merge-only", path, "--mode",
                                      args.mode, "--workers", str(args.workers)],
                                     capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                per_obj = (r["peak_rss_mib"] - r["baseline_rss_mib"]) * 2**20 / (4 * objects)
                print(f"{size}³, 4 x {objects} objects, {args.mode}, {args.workers} threads: "
                      f"merge {r['seconds']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
                      f"(baseline {r['baseline_rss_mib']:.0f} MiB, {per_obj:,.0f} B/object "
                      f"incl. shard buffers), {r['consensus_objects']} consensus objects, "
                      f"{r['conflicts']} conflicts; build {built:.0f} s", flush=True)


if __name__ == "__main__":
    main()
