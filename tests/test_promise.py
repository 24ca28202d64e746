"""The engine's one-shot results (chunks and shard indexes in flight): settled once, waited for
by any number of threads, errors delivered to every waiter."""

from __future__ import annotations

import threading
import time

import pytest

from napari_zshard.engine.promise import Promise
from napari_zshard.errors import CorruptShardError


def test_waiters_in_other_threads_get_the_value_once_it_is_set():
    p = Promise()
    got = []
    waiters = [threading.Thread(target=lambda: got.append(p.result(timeout=10)))
               for _ in range(5)]
    for t in waiters:
        t.start()
    time.sleep(0.05)
    assert not p.done() and got == []

    assert p.set_result(42) is True
    for t in waiters:
        t.join(10)

    assert got == [42] * 5 and p.done() and p.result() == 42


def test_the_first_outcome_wins_and_later_ones_change_nothing():
    p = Promise()
    error = CorruptShardError("s3://bucket/vol.zarr/c/0/0/0: index checksum mismatch")

    assert p.set_exception(error) is True
    assert p.set_result(1) is False and p.set_exception(ValueError()) is False

    for _ in range(2):  # every waiter hears the same located error
        with pytest.raises(CorruptShardError, match="c/0/0/0"):
            p.result()


def test_result_times_out_when_nobody_settles():
    p = Promise()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        p.result(timeout=0.05)
    assert time.monotonic() - started < 5


def test_racing_settlers_settle_once():
    for _ in range(50):
        p = Promise()
        wins = []
        go = threading.Barrier(4)

        def settle(i, p=p, wins=wins, go=go):
            go.wait()
            if p.set_result(i):
                wins.append(i)

        threads = [threading.Thread(target=settle, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(wins) == 1 and p.result() == wins[0]
