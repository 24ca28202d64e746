"""Merging annotators: byte-identical outputs (thread counts, moto S3), coverage rules,
reserved names, bad inputs, a merge killed by SIGKILL, resolutions that survive re-merges,
and the command."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import put_on_s3
from test_consensus_merge import NAMES, OPTIONS, read, synthetic, table, write_store

from napari_zshard import annotations as ann
from napari_zshard.annotations.consensus import MergeInputError, merge, resolve
from napari_zshard.annotations.coverage import (
    ReservedNameError,
    mark_reviewed,
    read_coverage,
)
from napari_zshard.annotations.labelimage import _list_label_image
from napari_zshard.cli import main
from napari_zshard.errors import AnnotationError
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.store import open_store

ROOT = Path(__file__).resolve().parents[1]


def output_hashes(url: str, storage_options=None) -> dict[str, str]:
    """sha256 of every object of both outputs (not the run log, not the overrides)."""
    store = open_store(url, storage_options)
    out = {}
    for name in ("consensus", "conflicts"):
        for key, _ in store.list_prefix(f"labels/{name}/"):
            if "/zshard/runs/" in key or key.endswith("overrides.json"):
                continue
            out[key] = hashlib.sha256(store.read(key)).hexdigest()
    return out


@pytest.fixture(scope="module")
def truth():
    return synthetic(seed=2, n=60)


@pytest.fixture
def store_url(tmp_path, truth) -> tuple[str, dict[str, str]]:
    return write_store(tmp_path, truth)


def test_two_thread_counts_give_the_same_bytes(tmp_path, truth, store_url):
    url, slugs = store_url
    classes = {slugs[n]: truth.obj_classes[n] for n in NAMES}
    merge(url, mode="instance", classes=classes, workers=1)
    one = output_hashes(url)
    other = str(tmp_path / "copy.zarr")
    shutil.copytree(url, other)
    shutil.rmtree(Path(other, "labels", "consensus"))
    merge(other, mode="instance", classes=classes, workers=3)
    three = output_hashes(other)
    assert one == three
    assert any(k.startswith("labels/consensus/0/c/") for k in one)
    assert any(k.startswith("labels/conflicts/1/c/") for k in one)
    assert "labels/conflicts/zshard/conflicts.csv" in one
    # no run information inside the outputs; it is in the log beside them
    runs = list(Path(url, "labels", "consensus", "zshard", "runs").iterdir())
    assert len(runs) == 1 and json.loads(runs[0].read_text())["workers"] == 1


def test_moto_s3_gives_the_same_bytes(truth, store_url, s3_bucket, s3_options):
    url, _ = store_url
    s3_url = f"{s3_bucket}/vol.zarr"
    put_on_s3(url, s3_url, s3_options["endpoint_url"])
    merge(url, mode="semantic", workers=2)
    merge(s3_url, mode="semantic", workers=2, storage_options=s3_options)
    local, remote = output_hashes(url), output_hashes(s3_url, s3_options)
    assert local == remote and len(local) > 4
    assert "consensus" in ann.label_images(s3_url, storage_options=s3_options)


def test_coverage_counts_whole_chunks_only(store_url):
    url, slugs = store_url
    name = slugs["dee"]
    cov = read_coverage(url, labels=name)
    assert cov.reviewed[:1].all() and not cov.reviewed[1:].any()  # z < 16 only
    # a region covering chunk (1, 0, 0) whole and (1, 0, 1) in part
    report = mark_reviewed(url, labels=name, region=(slice(16, 32), slice(0, 32), slice(0, 40)))
    assert (report.marked, report.partial) == (1, 1)
    assert report.coverage.reviewed[1, 0, 0] and not report.coverage.reviewed[1, 0, 1]
    back = mark_reviewed(url, labels=name, region=(slice(16, 32), slice(0, 32), slice(0, 32)),
                         reviewed=False)
    assert not back.coverage.reviewed[1:].any()
    raw = Path(url, "labels", name, "zshard", "coverage.json").read_bytes()
    assert len(raw) < 300  # one bit per chunk, compressed


def test_reserved_names(store_url):
    url, _ = store_url
    for reserved in ("consensus", "conflicts"):
        assert ann.annotator_slug(reserved) != reserved
        with pytest.raises(ReservedNameError, match="reserved"):
            mark_reviewed(url, labels=reserved)
        with pytest.raises(MergeInputError, match="merge output"):
            merge(url, inputs=[reserved])


def _odd_label_image(url: str, tmp_path: Path) -> str:
    other = str(tmp_path / "odd.zarr")
    save_image(other, np.zeros((32, 96, 64), np.uint8), ImageSpec(),
               labels={"odd": (np.ones((32, 96, 64), np.uint32), ImageSpec(kind="labels"))},
               options=WriteOptions(**OPTIONS))
    shutil.copytree(Path(other, "labels", "odd"), Path(url, "labels", "odd"))
    _list_label_image(open_store(url), "odd")
    return "odd"


def test_bad_inputs_are_named(tmp_path, store_url):
    url, slugs = store_url
    with pytest.raises(MergeInputError,
                       match=r"do not match the image.*odd \(shape \(32, 96, 64\)"):
        merge(url, inputs=[slugs["ann"], _odd_label_image(url, tmp_path)])
    with pytest.raises(MergeInputError, match="'ghost' is not a label image"):
        merge(url, inputs=[slugs["ann"], "ghost"])
    with pytest.raises(MergeInputError, match="nothing to merge"):
        merge(url, inputs=[])
    mark_reviewed(url, labels=slugs["bob"], reviewed=False)
    with pytest.raises(MergeInputError, match=f"{slugs['bob']}.*no coverage"):
        merge(url, inputs=[slugs["ann"], slugs["bob"]])
    # "all": annotators without coverage are left out and said so (odd has none either)
    report = merge(url, inputs="all")
    assert report.skipped == tuple(sorted([slugs["bob"], "odd"]))
    assert slugs["bob"] not in report.inputs
    with pytest.raises(ValueError, match="mode"):
        merge(url, mode="vote")
    with pytest.raises(ValueError, match="two label images"):
        merge(url, output="x", conflicts="x")


_SLOW_MERGE = """
import sys, time
from napari_zshard.annotations.consensus import output, merge
write0 = output.OutputImage.write0
def slow(self, shard, block):
    n = write0(self, shard, block)
    print("wrote", self.name, shard, flush=True)
    time.sleep(0.4)
    return n
output.OutputImage.write0 = slow
merge(sys.argv[1], mode="instance", workers=1)
"""


def test_kill_9_mid_merge_then_rerun_completes(store_url):
    url, _ = store_url
    merge(url, mode="instance", workers=2)
    complete = output_hashes(url)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_MERGE, url], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("wrote"), line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # nothing half-written looks complete: unlisted, no group document
    assert "consensus" not in ann.label_images(url)
    assert not Path(url, "labels", "consensus", "zarr.json").exists()
    t0 = time.perf_counter()
    merge(url, mode="instance", workers=2)
    assert time.perf_counter() - t0 < 60
    assert output_hashes(url) == complete
    assert "consensus" in ann.label_images(url)


def test_resolutions_survive_re_merges(truth, store_url):
    url, slugs = store_url
    classes = {slugs[n]: truth.obj_classes[n] for n in NAMES}
    merge(url, mode="instance", classes=classes)
    rows = table(url, "labels/conflicts/zshard/conflicts.csv")
    target = next(r for r in rows if r["kind"] == "split")
    before = read(url, "conflicts") == int(target["id"])
    assert before.any()
    entry = resolve(url, int(target["id"]), value=4242, by="carol")
    assert entry["key"] == target["key"] and entry["by"] == "carol"
    for _ in range(2):  # every later merge re-applies it
        report = merge(url, mode="instance", classes=classes)
        assert report.overrides_applied == 1
        cons, conf = read(url, "consensus"), read(url, "conflicts")
        assert (cons[before] == 4242).all()
        assert not (conf[before] == int(target["id"])).any()
    with pytest.raises(AnnotationError, match="no conflict 99999"):
        resolve(url, 99999, value=1)


def test_command(store_url, capsys):
    url, slugs = store_url
    assert main(["annotations", "merge", url, "--mode", "instance", "--inputs",
                 f"{slugs['ann']},{slugs['bob']},{slugs['cyd']}", "--quorum", "2"]) == 0
    out = capsys.readouterr().out
    assert "merged 3 annotators" in out and "consensus objects" in out
    assert main(["annotations", "merge", url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "semantic" and len(report["inputs"]) == 4
    assert main(["annotations", "merge", url, "--inputs", "ghost"]) == 2
    assert "'ghost' is not a label image" in capsys.readouterr().err


def test_dask_distributed_gives_the_same_bytes(tmp_path, store_url):
    from dask import distributed

    url, _ = store_url
    merge(url, mode="instance", workers=2)
    threads = output_hashes(url)
    shutil.rmtree(Path(url, "labels", "consensus"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        merge(url, mode="instance", client=client)
    assert output_hashes(url) == threads


def test_a_merge_step_by_step_reports_progress_and_stops_cleanly_when_closed(store_url):
    """What the widget's progress bar and Cancel use: a merge closed part-way leaves nothing
    that looks complete, and the next merge gives the same bytes as one never stopped."""
    url, _ = store_url
    steps = ann.merge_steps(url, mode="instance", workers=1)
    seen = [next(steps) for _ in range(3)]
    assert [s.done for s in seen] == [1, 2, 3] and seen[0].stage == "counting"
    assert seen[-1].total > 3
    steps.close()
    assert "consensus" not in ann.label_images(url) and "conflicts" not in ann.label_images(url)
    assert not Path(url, "labels", "consensus", "zarr.json").exists()

    progress = []
    run = ann.merge_steps(url, mode="instance", workers=1)
    while True:
        try:
            progress.append(next(run))
        except StopIteration as done:
            report = done.value
            break
    assert progress[-1].done == progress[-1].total == len(progress)
    assert {"counting", "painting", "pyramids"} <= {p.stage for p in progress}
    assert report.conflicts > 0 and "consensus" in ann.label_images(url)
    first = output_hashes(url)
    merge(url, mode="instance", workers=1)
    assert output_hashes(url) == first
