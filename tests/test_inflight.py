"""The engine's one in-flight unit: what readers waiting on another reader's fetch get."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import napari_zshard
from napari_zshard.engine import EngineCache
from napari_zshard.engine.inflight import COMPLETE, InFlight
from napari_zshard.errors import CorruptDataError


def test_a_waiter_gets_the_value_once_enough_of_it_is_ready():
    unit = InFlight()
    got = []
    waiter = threading.Thread(target=lambda: got.append(unit.wait("a", need=100, timeout=10)))
    waiter.start()
    unit.publish("a", "top", 50)
    time.sleep(0.05)
    assert not got  # 50 of the 100 bytes it needs
    unit.publish("a", "top", 120)
    waiter.join(10)
    assert got == ["top"]
    assert unit.get("a", COMPLETE) is None  # not whole yet
    unit.publish("a", "whole")
    assert unit.get("a") == "whole"


def test_progress_never_goes_back_and_a_failed_key_stays_failed():
    unit = InFlight()
    unit.publish("a", "whole")
    unit.publish("a", "prefix", 10)  # late report of a prefix: ignored
    assert unit.get("a") == "whole"
    unit.fail(["a", "b"], ValueError("gone"))
    assert unit.get("a") == "whole"  # whole before the failure
    with pytest.raises(ValueError, match="gone"):
        unit.get("b")
    unit.publish("b", "late")
    with pytest.raises(ValueError, match="gone"):
        unit.wait("b", timeout=1)


def test_the_part_decoded_before_damage_showed_is_still_served():
    unit = InFlight()
    unit.publish("a", "prefix", 64)
    unit.fail(["a"], CorruptDataError("the rest overflows"))
    assert unit.get("a", 64) == "prefix"
    with pytest.raises(CorruptDataError):
        unit.get("a", 65)


def test_a_wait_that_times_out_says_so():
    with pytest.raises(TimeoutError):
        InFlight().wait("a", timeout=0.05)


def test_collect_hands_over_everything_published_since_the_last_look():
    unit = InFlight()
    needs = {"a": 10, "b": 10, "c": 10}
    unit.publish("a", 1, 5)  # not enough yet
    unit.publish("b", 2)
    unit.publish("x", 9)  # not asked for
    ready, since = unit.collect(needs, 0)
    assert ready == [("b", 2)]
    del needs["b"]
    done = []

    def collect_rest() -> None:
        pos = since
        while needs:
            got, pos = unit.collect(needs, pos)
            for key, value in got:
                del needs[key]
                done.append((key, value))

    t = threading.Thread(target=collect_rest)
    t.start()
    unit.publish("a", 1, 10)
    unit.publish("c", 3)
    t.join(10)
    assert sorted(done) == [("a", 1), ("c", 3)]


def test_collect_raises_the_error_of_a_key_it_waits_for():
    unit = InFlight()
    unit.fail(["b"], ValueError("b failed"))
    with pytest.raises(ValueError, match="b failed"):
        unit.collect({"b": 1}, 0)


def test_a_cold_plane_is_fetched_in_one_unit_however_many_chunks_it_has(tmp_path, monkeypatch):
    """One unit per read replaced a future per chunk (1,300 of them per cold plane, whose
    cyclic garbage collections took 14% of its CPU time) and four other registries."""
    from test_slab import structured, write

    from napari_zshard.engine import inflight

    made = []
    real_init = inflight.InFlight.__init__
    monkeypatch.setattr(inflight.InFlight, "__init__",
                        lambda self: (made.append(self), real_init(self))[1])
    data = structured((32, 512, 512))
    path = write(tmp_path / "a.zarr", data, (32, 32, 32), (32, 256, 256))  # 256 chunks a plane
    arr = napari_zshard.open_array(path, cache=EngineCache())
    np.testing.assert_array_equal(arr[3], data[3])
    used = [unit for unit in made if len(unit)]
    assert [len(unit) for unit in used] == [4, 256]  # the shard indexes, then the chunks
    made.clear()
    np.testing.assert_array_equal(arr[5], data[5])  # the same chunk row, decoded already
    assert not [unit for unit in made if len(unit)]
