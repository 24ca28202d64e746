"""Which worker processes of a dask.distributed cluster ran a computation's tasks."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def tasks_by_worker_pid(client, *, prefix: str = "") -> Iterator[Counter]:
    """Counts the tasks (whose key name starts with ``prefix``) finished inside the block,
    per process id of the worker that ran them: the proof that the work ran in the cluster's
    worker processes, and in how many of them, where a list of workers proves nothing."""
    from dask.utils import key_split
    from distributed import get_task_stream

    pids = client.run(os.getpid)  # worker address → pid
    counts: Counter = Counter()
    with get_task_stream(client=client) as stream:
        yield counts
    for task in stream.data:
        if key_split(task["key"]).startswith(prefix):
            counts[pids.get(task["worker"], task["worker"])] += 1
