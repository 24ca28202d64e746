"""Running a reshard plan: one task per destination shard on threads or a dask cluster,
journaled as it goes, verified at the end, marked complete last."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..engine import default_cache
from ..engine.shard_tasks import ShardTaskRunner
from ..engine.shard_writer import iter_shards
from ..multiscale.write import group_json
from ..store import Store, join_key, open_store
from .errors import CorruptSourceError, VerificationError
from .journal import (
    done_shards,
    inspect_destination,
    plan_document,
    remove_journal,
    write_plan,
)
from .plan import ReshardPlan, plan_reshard
from .report import summary_text
from .tasks import CommitQueue, SourceRef, reshard_shard, verify_shard

log = logging.getLogger(__name__)

VERIFY_MODES = ("sample", "full", "none")
ON_CORRUPT = ("stop", "skip")
#: Shards per array a sampled verification compares (one random layer of each).
SAMPLED_SHARDS = 4


@dataclass
class ReshardSummary:
    """What a run did. ``complete``: the destination is whole and marked so (no shard was
    skipped); ``corrupt`` lists ``(array, shard key, error)`` of the skipped ones."""

    source: str
    destination: str
    total: int
    written: int = 0
    fill: int = 0
    resumed: int = 0
    swept: tuple[int, int] = (0, 0)  # partial files of the interrupted run removed, bytes
    corrupt: list[tuple[str, str, str]] = field(default_factory=list)
    bytes_written: int = 0
    pixels: int = 0
    verify: str = "sample"
    verified: int = 0
    seconds: float = 0.0
    complete: bool = False

    def text(self) -> str:
        return summary_text(self)


@dataclass(frozen=True)
class ReshardProgress:
    """One step: ``done`` of ``total`` units (shards, then verified regions); the last step
    carries the :class:`ReshardSummary`."""

    done: int
    total: int
    message: str
    summary: ReshardSummary | None = None


def run_reshard(plan: ReshardPlan, *, verify: str = "sample", on_corrupt: str = "stop",
                workers: int | None = None, client: Any = None) -> Iterator[ReshardProgress]:
    """Execute ``plan``, yielding progress; the last item carries the summary.

    Parameters
    ----------
    verify
        ``"sample"``: compare a random layer of a few shards per array with the source;
        ``"full"``: compare everything; ``"none"``.
    on_corrupt
        A destination shard whose source is corrupt: ``"stop"`` the run (raising
        :class:`CorruptSourceError` naming it), or ``"skip"`` it (not written; listed in the
        summary; the journal stays, so a rerun after repairing the source writes it).
    workers
        Threads (default: one per core). Memory holds about two shards' layers per thread.
    client
        A ``dask.distributed`` Client, or a scheduler address: run the shard tasks there.

    Closing the generator early (a cancel, Ctrl-C) lets the running shard tasks finish; every
    shard committed so far is journaled, and running the same plan again resumes.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, not {verify!r}")
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, not {on_corrupt!r}")
    began = time.perf_counter()
    store = open_store(plan.destination, plan.dst_options)
    planned = {a.path: a.zarr_json for a in plan.arrays}
    state = inspect_destination(store, planned)  # again: it may have changed since planning
    if state.kind == "new":
        write_plan(store, plan_document(plan.source, planned))
    summary = ReshardSummary(plan.source, plan.destination, plan.n_shards, verify=verify)
    todo = []
    for a in plan.arrays:
        ref = SourceRef.of(a.source)
        journaled = done_shards(store, a.path) if state.kind == "resume" else set()
        for shard in iter_shards(a.target):
            if state.kind == "complete" or a.target.object_key(shard) in journaled:
                summary.resumed += 1
            else:
                todo.append((ref, store, a.path, a.target, shard, a.depth, a.passthrough))
    checks = _verification_tasks(plan, store, verify)
    total = plan.n_shards + len(checks)
    if state.kind == "resume":  # the partial shard files the interrupted run died writing
        summary.swept = store.sweep_temporaries()
        if summary.swept[0]:
            log.info("removed %d partial files (%d bytes) left by the interrupted run",
                     *summary.swept)
    yield ReshardProgress(summary.resumed, total, f"{summary.resumed:,} of {plan.n_shards:,} "
                          "shards already done" if summary.resumed else "starting")
    # on threads, shards are committed on a thread of their own while the next is computed
    commits = CommitQueue() if client is None else None
    client, own_client = _connect(client)
    runner = ShardTaskRunner(workers=workers, client=client, name="zshard-reshard")
    finished = False
    try:
        done = summary.resumed
        tasks = [(*args, commits) for args in todo]
        with contextlib.closing(runner.run(reshard_shard, tasks)) as outcomes:
            for outcome in outcomes:
                done += 1
                _tally(summary, outcome, on_corrupt)
                yield ReshardProgress(done, total, f"{outcome.array or 'array'} {outcome.key}")
        if commits is not None:
            commits.flush()  # every shard written and journaled before it is compared
        skipped = {(array, key) for array, key, _ in summary.corrupt}
        checks = [c for c in checks if (c[2], c[3].object_key(c[4])) not in skipped]
        done = total - len(checks)
        with contextlib.closing(runner.run(verify_shard, checks)) as results:
            for mismatch in results:
                if mismatch is not None:
                    raise VerificationError(
                        f"the destination differs from the source: {mismatch}. It is not "
                        "marked complete; delete it and reshard again.")
                done += 1
                summary.verified += 1
                yield ReshardProgress(done, total, "verifying")
        _mark_complete(store, plan)
        if not summary.corrupt:
            remove_journal(store)
        summary.complete = not summary.corrupt
        finished = True
    finally:
        runner.close()  # running tasks finish (and queue their commits)...
        if commits is not None:
            try:
                commits.close()  # ...which are written and journaled before the run ends
            except Exception as e:
                if finished:
                    raise
                log.warning("a shard commit failed while the reshard was stopping: %s", e)
        if own_client:
            client.close()
        default_cache().forget(store.url)
    summary.seconds = time.perf_counter() - began
    yield ReshardProgress(total, total, "done", summary)


def _tally(summary: ReshardSummary, outcome, on_corrupt: str) -> None:
    if outcome.status == "corrupt":
        if on_corrupt == "stop":
            raise CorruptSourceError(
                f"destination shard {outcome.key} of {outcome.array or 'the array'} was not "
                f"written: its source is corrupt ({outcome.error}). Repair or replace the "
                "source and rerun to resume, or rerun with on_corrupt='skip' "
                "(--on-corrupt skip) to leave such shards out.",
                array=outcome.array, shard_key=outcome.key)
        summary.corrupt.append((outcome.array, outcome.key, outcome.error or ""))
        return
    summary.written += outcome.status == "written"
    summary.fill += outcome.status == "fill"
    summary.bytes_written += outcome.nbytes
    summary.pixels += outcome.pixels


def _verification_tasks(plan: ReshardPlan, store: Store, verify: str) -> list[tuple]:
    tasks: list[tuple] = []
    if verify == "none":
        return tasks
    rng = random.Random(0)
    for a in plan.arrays:
        ref = SourceRef.of(a.source)
        shards = list(iter_shards(a.target))
        if verify == "sample":
            chosen = rng.sample(shards, min(SAMPLED_SHARDS, len(shards)))
            tasks += [(ref, store, a.path, a.target, s, a.depth, rng.randrange(2**31))
                      for s in chosen]
        else:
            tasks += [(ref, store, a.path, a.target, s, a.depth) for s in shards]
    return tasks


def _mark_complete(store: Store, plan: ReshardPlan) -> None:
    """Write the metadata: arrays, then groups deepest first, the root ``zarr.json`` last."""
    root = None
    for a in plan.arrays:
        if a.path:
            store.write(join_key(a.path, "zarr.json"), a.zarr_json)
        else:
            root = a.zarr_json
    for path, attributes in plan.groups.items():
        if path:
            store.write(join_key(path, "zarr.json"), group_json(attributes))
    store.write("zarr.json", root if root is not None else group_json(plan.groups.get("", {})))


def _connect(client: Any) -> tuple[Any, bool]:
    if isinstance(client, str):
        from distributed import Client

        return Client(client), True
    return client, False


def reshard(src: str | os.PathLike, dst: str | os.PathLike, *, verify: str = "sample",
            on_corrupt: str = "stop", workers: int | None = None, client: Any = None,
            **plan_options: Any) -> ReshardSummary:
    """Plan and run a reshard to the end; returns the summary (see :func:`plan_reshard` for
    ``plan_options``: ``chunks``, ``shards``, ``codec``, ``levels``, ...)."""
    plan = plan_reshard(src, dst, measure=False, **plan_options)
    summary = None
    for step in run_reshard(plan, verify=verify, on_corrupt=on_corrupt, workers=workers,
                            client=client):
        summary = step.summary or summary
    assert summary is not None
    return summary
