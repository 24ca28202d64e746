"""A commit killed (SIGKILL) at random points: the store stays clean for fsck, readers never
see a torn shard, and `repair` (or the next commit) finishes it to exactly the intended data."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import numpy as np

from napari_zshard import annotations as ann
from napari_zshard.annotations import commit as commit_module
from napari_zshard.annotations import provenance
from napari_zshard.survey import fsck, survey
from tests.test_annotations_commit import assert_pyramid_true, levels
from tests.test_annotations_region import make_image

TRIALS = 26


def _paint_and_commit(url: str, box: tuple[slice, ...], value: int, ready) -> None:
    edit = ann.checkout(url, labels="cells", annotator="victim")
    edit.data[box] = value
    ready.send(True)
    edit.commit("about to be killed")


def test_kill_at_random_points_then_repair_or_next_commit(tmp_path, monkeypatch):
    url = make_image(tmp_path)
    ann.checkout(url, labels="cells", create=True, annotator="setup",
                 region=(slice(0, 1),) * 3).commit()
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(7)
    outcomes = {"nothing": 0, "interrupted": 0, "committed": 0}
    monkeypatch.setattr(provenance, "STALE_INTENT_SECONDS", 0.0)
    for trial in range(TRIALS):
        before = levels(url)[0]
        lo = [rng.randrange(0, n - 8) for n in (32, 128, 128)]
        box = tuple(slice(a, min(n, a + rng.randrange(8, 80))) for a, n in
                    zip(lo, (32, 128, 128), strict=True))
        value = trial + 1
        known = {r.commit_id for r in ann.log(url)}
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_paint_and_commit, args=(url, box, value, theirs))
        proc.start()
        assert ours.poll(30)
        ours.recv()
        time.sleep(rng.uniform(0, 0.12))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        # fsck: every shard intact at every level (a killed writer never leaves a torn one)
        report = fsck(survey(url))
        assert report.clean, report.problems
        new = [r for r in ann.log(url) if r.commit_id not in known]
        assert len(new) <= 1
        status = new[0].status if new else "nothing"
        outcomes[status] += 1
        if status == "interrupted":
            if trial % 2:
                done = ann.repair(url)
                assert done.finished == [new[0].commit_id]
                assert ann.repair(url).finished == []  # idempotent: nothing left
            else:
                commit_module._last_stale_check.clear()
                nxt = ann.checkout(url, labels="cells", annotator="next",
                                   region=(slice(0, 1),) * 3)
                nxt.commit()  # finishes the interrupted one first
            assert [r.status for r in ann.log(url) if r.commit_id == new[0].commit_id] == [
                "committed"]
        expected = before.copy()
        if status != "nothing":
            expected[box] = value
        np.testing.assert_array_equal(levels(url)[0], expected)
        assert_pyramid_true(url)
    print(outcomes)
    # the object table counts what the store holds, killed commits included
    final = levels(url)[0]
    rows = {r["id"]: r["voxels"] for r in ann.object_table(url, labels="cells")}
    for value in range(1, TRIALS + 1):
        assert rows.get(value, 0) == np.count_nonzero(final == value), value
    # the random kill times did hit a commit before, during and after its shards
    assert outcomes["nothing"] and outcomes["interrupted"], outcomes


def test_repair_while_the_slow_original_still_runs(tmp_path, monkeypatch):
    """Object stores cannot tell a dead committer from a slow one: a repair that finishes a
    commit whose author is still writing must leave exactly what the commit alone leaves."""
    url = make_image(tmp_path)
    edit = ann.checkout(url, labels="cells", create=True, annotator="slow")
    edit.data[0:20, 10:100, 10:120] = 5  # all four level-0 shards
    colleague = ann.checkout(url, labels="cells", annotator="colleague",
                             region=(slice(0, 32), slice(0, 128), slice(0, 128)))
    steps = edit.commit_steps("slow")
    while True:
        progress = next(steps)
        if not progress.cancellable and progress.done == 1:
            break  # one shard written, three to go
    repaired = ann.repair(url)
    assert len(repaired.finished) == 1
    colleague.data[25, 0, 0] = 3  # a later, unrelated commit
    colleague.commit()
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        report = stop.value
    assert not report.conflicts
    expected = np.zeros((32, 128, 128), np.uint32)
    expected[0:20, 10:100, 10:120] = 5
    expected[25, 0, 0] = 3
    np.testing.assert_array_equal(levels(url)[0], expected)
    assert_pyramid_true(url)
    records = ann.log(url)
    assert [(r.annotator, r.status, r.repaired) for r in records] == [
        ("slow", "committed", True), ("colleague", "committed", False)]
    assert ann.repair(url).finished == []
    rows = {r["id"]: r["voxels"] for r in ann.object_table(url, labels="cells")}
    assert rows[5] == 20 * 90 * 110 and rows[3] == 1
