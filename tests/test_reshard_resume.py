"""A reshard that dies (SIGKILL), is cancelled or runs elsewhere: the rerun skips what the
journal proves done and the result equals the source bit for bit — on a local disk, on S3
(moto) and on a dask cluster of worker processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from cluster_checks import tasks_by_worker_pid

import napari_zshard as nz
from napari_zshard.cli import main
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, save_image
from napari_zshard.reshard import JOURNAL, plan_reshard
from napari_zshard.store import open_store


def stack(shape=(64, 128, 128), seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 300, shape) + np.arange(shape[-1])).astype(np.uint16)


def journaled(dst) -> int:
    folder = dst / JOURNAL / "done"
    # (a hidden ``.name.*.tmp`` is a marker whose write was cut short: not a marker)
    return sum(not name.startswith(".") for _, _, files in os.walk(folder) for name in files)


def count(text: str, what: str) -> int:
    return int(re.search(rf"([\d,]+) {what}", text).group(1).replace(",", ""))


def start_and_stop(command: list[str], dst, markers: int, sig: int) -> subprocess.Popen:
    """Run ``zshard COMMAND`` in a process; send it ``sig`` once ``markers`` shards are
    journaled."""
    job = subprocess.Popen([sys.executable, "-m", "napari_zshard.cli", *command],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while journaled(dst) < markers and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    job.send_signal(sig)
    job.stdout_text, job.stderr_text = job.communicate()
    return job


@pytest.mark.slow
def test_an_interrupted_or_killed_reshard_resumes_where_it_stopped(tmp_path, http_server,
                                                                   capsys):
    # An acquisition-style source: unsharded chunks, served over HTTP with 15 ms per request
    # so the job is still running when it is stopped.
    data = stack((32, 128, 128))
    zarr.create_array(str(tmp_path / "acq.zarr"), data=data, chunks=(8, 32, 32))
    http_server.latency = 0.015
    src, dst = f"{http_server.url}/acq.zarr", tmp_path / "out.zarr"
    command = ["reshard", src, str(dst), "--chunks", "8,32,32", "--shards", "8,32,64",
               "--workers", "1", "--verify", "none"]
    # Ctrl-C: the running shard finishes, the job says how to resume and exits with 130
    job = start_and_stop(command, dst, 2, signal.SIGINT)
    assert job.returncode == 130, job.stderr_text
    assert "run the same command again to resume" in job.stderr_text
    assert "Traceback" not in job.stderr_text
    # SIGKILL: no chance to clean up at all
    job = start_and_stop(command, dst, journaled(dst) + 4, signal.SIGKILL)
    killed_at = journaled(dst)
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert 6 <= killed_at < 32
    assert not (dst / "zarr.json").exists()  # not marked complete
    # what a shard write cut short by the kill leaves (unlocked: its writer is dead), aged
    # past the grace period; the kill itself may have left one too
    abandoned = dst / "c" / "0" / "0" / ".1.k1ll3d.tmp"
    abandoned.parent.mkdir(parents=True, exist_ok=True)
    abandoned.write_bytes(bytes(1000))
    partials = list(dst.rglob(".*.tmp"))
    for p in partials:
        os.utime(p, (time.time() - 3600,) * 2)
    http_server.latency = 0.0
    assert main([*command, "-q"]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(partials)} partial file(s)" in out
    assert not list(dst.rglob(".*.tmp"))
    assert "resuming an interrupted reshard" in out
    assert count(out, "already done") >= killed_at  # the journaled shards were skipped
    assert count(out, "written") + count(out, "already done") == 32
    np.testing.assert_array_equal(zarr.open_array(str(dst), mode="r")[:], data)
    assert not (dst / JOURNAL).exists()


def test_an_s3_destination_resumes_after_a_cancel(tmp_path, s3_bucket, s3_options):
    data = stack((32, 96, 96))
    save_image(tmp_path / "src.zarr", data, ImageSpec(name="s3"),
               labels={"mask": ((data > 200).astype(np.uint8), ImageSpec(kind="labels"))},
               options=WriteOptions(chunks=(16, 32, 32), shards=(32, 64, 64), levels=1))
    dst = f"{s3_bucket}/resharded.zarr"

    def plan():
        return plan_reshard(tmp_path / "src.zarr", dst, chunks=(8, 32, 32),
                            shards=(8, 32, 96), dst_options=s3_options)

    steps = plan().run(workers=2)
    for step in steps:
        if step.done >= 5:
            break
    steps.close()  # a cancel: the shards committed so far stay journaled
    first = plan()
    assert first.state.kind == "resume" and first.state.journaled >= 5
    summary = list(first.run(verify="full"))[-1].summary
    assert summary.complete and summary.resumed >= 5
    assert summary.resumed + summary.written + summary.fill == first.n_shards
    node = nz.open_image(dst, storage_options=s3_options)
    np.testing.assert_array_equal(node.arrays[0][:], data)
    np.testing.assert_array_equal(node.labels[0].arrays[0][:], data > 200)
    assert node.arrays[0].shards == (8, 32, 96)
    assert not list(open_store(dst, s3_options).list_prefix(JOURNAL))  # journal removed


@pytest.mark.slow
def test_a_local_cluster_of_worker_processes_reshards(tmp_path):
    from distributed import Client, LocalCluster

    data = stack((48, 96, 128))
    zarr.create_array(str(tmp_path / "src.zarr"), data=data, chunks=(16, 16, 16),
                      shards=(16, 32, 32))
    plan = plan_reshard(tmp_path / "src.zarr", tmp_path / "out.zarr", chunks=(8, 32, 32),
                        shards=(16, 64, 128))
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client, \
            tasks_by_worker_pid(client, prefix="reshard_shard") as written_by:
        summary = list(plan.run(client=client, verify="full"))[-1].summary
    assert summary.complete and summary.written == plan.n_shards == 6
    # every shard was written by a task in one of the two worker processes, not in this one
    assert sum(written_by.values()) == 6
    assert len(written_by) == 2 and os.getpid() not in written_by
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"))[:], data)
