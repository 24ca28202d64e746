"""Many annotators at once: 8 processes x 20 commits into one label image (locally and on
moto S3), regions overlapping so that they share inner chunks and shards, some voxels edited
by several processes with different values. Nothing may be lost, no conflict may be false,
and the pyramid must equal a full rebuild afterwards."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
from test_annotations_commit import assert_pyramid_true, levels
from test_annotations_region import SHAPE, make_image

from napari_zshard import annotations as ann

N_PROC = 8
N_COMMITS = 20
#: the issue's 8 x 20 on S3 too; moto serves every request of the 8 processes from one Python
#: thread, so that takes ~60-110 s here (ZSHARD_ANN_S3_COMMITS=6 for a quick local run)
N_COMMITS_S3 = int(os.environ.get("ZSHARD_ANN_S3_COMMITS", "20"))
CONTESTED_BASE = 50_000
# voxels every process writes when its region covers them (x % 9 == 8: never private)
CONTESTED = [(z, y, x) for z in range(1, 32, 6) for y in range(5, 128, 21)
             for x in range(8, 128, 27)]


def _worker(url: str, p: int, options: dict | None, out: str, n_commits: int) -> None:
    rng = np.random.default_rng(1000 + p)
    results = []
    for i in range(n_commits):
        z0, y0, x0 = (int(rng.integers(0, n - e + 1)) for n, e in zip(SHAPE, (16, 64, 64),
                                                                      strict=True))
        region = (slice(z0, z0 + 16), slice(y0, y0 + 64), slice(x0, x0 + 64))
        edit = ann.checkout(url, labels="cells", annotator=f"annotator {p}", region=region,
                            storage_options=options)
        # private voxels: x % 9 == p, interleaved with the others' in the same chunks
        box = [(int(a), int(a) + n) for a, n in zip(
            (rng.integers(0, 9), rng.integers(0, 49), rng.integers(0, 49)), (8, 16, 16),
            strict=True)]
        zz, yy, xx = np.meshgrid(*(np.arange(s.start + a, s.start + b) for s, (a, b) in
                                   zip(region, box, strict=True)), indexing="ij")
        private = (xx % 9 == p) & (yy % 2 == 0)
        pts = np.stack([zz[private], yy[private], xx[private]], axis=1)
        value = 1000 * (p + 1) + i + 1
        origin = np.array([s.start for s in region])
        local = pts - origin
        edit.data[local[:, 0], local[:, 1], local[:, 2]] = value
        contested = [c for c in CONTESTED if all(s.start <= v < s.stop for v, s in
                                                 zip(c, region, strict=True))]
        cvalue = CONTESTED_BASE + 100 * p + i
        bases = [int(edit.data[tuple(v - s.start for v, s in zip(c, region, strict=True))])
                 for c in contested]
        for c in contested:
            edit.data[tuple(v - s.start for v, s in zip(c, region, strict=True))] = cvalue
        report = edit.commit(f"commit {i} of process {p}")
        results.append({
            "commit": report.commit_id, "t": time.time(), "private": pts.tolist(),
            "value": value, "contested": contested, "cvalue": cvalue,
            "bases": bases,
            "conflicts": [{"ours": c.ours, "theirs": c.theirs, "voxels": c.voxels,
                           "bbox": [[s.start, s.stop] for s in c.bbox]}
                          for c in report.conflicts]})
    Path(out).write_text(json.dumps(results))


def _run(url: str, tmp_path: Path, options: dict | None, n_commits: int
         ) -> list[list[dict]]:
    ctx = multiprocessing.get_context("fork")
    # (made in a child: a parent with an open S3 client must not fork its event loop)
    setup = ctx.Process(target=_create, args=(url, "cells", options))
    setup.start()
    setup.join(60)
    outs = [str(tmp_path / f"w{p}.json") for p in range(N_PROC)]
    procs = [ctx.Process(target=_worker, args=(url, p, options, outs[p], n_commits))
             for p in range(N_PROC)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0
    return [json.loads(Path(o).read_text()) for o in outs]


def _check(url: str, results: list[list[dict]], options: dict | None) -> None:
    l0 = levels(url, storage_options=options)[0]
    # private voxels: each holds the value of its owner's last commit that wrote it
    expected: dict[tuple, int] = {}
    for proc in results:
        for r in proc:
            for pt in r["private"]:
                expected[tuple(pt)] = r["value"]
    got = {pt: int(l0[pt]) for pt in expected}
    lost = {pt: (v, got[pt]) for pt, v in expected.items() if got[pt] != v}
    assert not lost, f"{len(lost)} private edits lost, e.g. {list(lost.items())[:3]}"
    # no false conflicts: a conflict's "ours" is always a contested value
    false = [c for proc in results for r in proc for c in r["conflicts"]
             if c["ours"] < CONTESTED_BASE]
    assert not false
    # contested voxels: in the store, or reported as a conflict, or superseded later
    writes: dict[tuple, list[tuple[int, int]]] = {}  # voxel -> (base, value) of each commit
    for proc in results:
        for r in proc:
            for c, base in zip(r["contested"], r["bases"], strict=True):
                writes.setdefault(tuple(c), []).append((base, r["cvalue"]))
    unexplained = []
    n_conflicts = 0
    for proc in results:
        for r in proc:
            for c in map(tuple, r["contested"]):
                final = int(l0[c])
                if final == r["cvalue"]:
                    continue
                reported = any(k["ours"] == r["cvalue"] and all(
                    a <= v < b for v, (a, b) in zip(c, k["bbox"], strict=True))
                    for k in r["conflicts"])
                n_conflicts += reported
                # superseded: a later commit's base held our value
                superseded = any(base == r["cvalue"] for base, _ in writes[c])
                if not (reported or superseded):
                    unexplained.append((c, r["cvalue"], final))
    assert not unexplained, unexplained[:5]
    for c, ws in writes.items():
        assert int(l0[c]) in {v for _, v in ws}
    assert n_conflicts > 0  # the workload does produce true conflicts
    assert_pyramid_true(url, storage_options=options)
    # the object table's counts (deltas computed against each merged shard) match the store
    values, counts = np.unique(l0, return_counts=True)
    stored = {int(v): int(n) for v, n in zip(values, counts, strict=True) if v}
    table = {r["id"]: r["voxels"] for r in ann.object_table(url, labels="cells",
                                                             storage_options=options)}
    assert {v: n for v, n in table.items() if n} == stored
    records = ann.log(url, storage_options=options)
    assert sum(r.status == "committed" for r in records) == sum(
        r["commit"] is not None for proc in results for r in proc)


def test_eight_processes_twenty_commits_locally(tmp_path):
    url = make_image(tmp_path)
    began = time.perf_counter()
    results = _run(url, tmp_path, None, N_COMMITS)
    print(f"local: {N_PROC * N_COMMITS} commits in {time.perf_counter() - began:.1f} s")
    _check(url, results, None)


@pytest.mark.timeout(400)
def test_eight_processes_committing_on_s3(tmp_path, s3_bucket, s3_options, put_on_s3):
    local = make_image(tmp_path)
    url = f"{s3_bucket}/img.zarr"
    put_on_s3(local, url, s3_options["endpoint_url"])
    began = time.perf_counter()
    results = _run(url, tmp_path, s3_options, N_COMMITS_S3)
    print(f"s3: {N_PROC * N_COMMITS_S3} commits in {time.perf_counter() - began:.1f} s")
    _check(url, results, s3_options)


def _create(url: str, name: str, options: dict | None) -> None:
    ann.checkout(url, labels=name, create=True, annotator=f"creator of {name}",
                 region=(slice(0, 1), slice(0, 1), slice(0, 1)), storage_options=options)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_eight_label_images_created_at_once_are_all_listed(tmp_path, where, request):
    url = make_image(tmp_path)
    options = None
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        options = request.getfixturevalue("s3_options")
        request.getfixturevalue("put_on_s3")(url, f"{bucket}/img.zarr",
                                             options["endpoint_url"])
        url = f"{bucket}/img.zarr"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_create, args=(url, f"labels{p}", options)) for p in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert sorted(ann.label_images(url, storage_options=options)) == [
        f"labels{p}" for p in range(8)]
