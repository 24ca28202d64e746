"""Big buffers go back to a bounded pool when freed and are re-used for the next one of about
their size; nothing is re-used while an array (or a view of it) is alive."""

from __future__ import annotations

import gc

import pytest

from napari_zshard.engine import buffers


@pytest.fixture(autouse=True)
def empty_pool():
    buffers.release()
    limit = buffers.spare_limit()
    yield
    buffers.set_spare_limit(limit)
    buffers.release()


def test_a_freed_buffer_is_reused_for_the_next_one_of_about_its_size():
    a = buffers.empty((1024, 1024), "uint16")  # 2 MiB
    region = a.base
    a[...] = 7
    del a
    assert buffers.spare_bytes() == 2 << 20
    b = buffers.empty((1000, 1024), "uint16")  # a little smaller: fits
    assert b.base is region and buffers.spare_bytes() == 0
    c = buffers.empty((1024, 1024), "uint16")  # the spare is in use: new memory
    assert c.base is not region


def test_nothing_is_reused_while_a_view_is_alive():
    a = buffers.empty((4, 512, 512), "uint16")
    view = a[2]
    region = a.base
    del a
    gc.collect()
    assert buffers.spare_bytes() == 0
    b = buffers.empty((4, 512, 512), "uint16")
    assert b.base is not region
    del view
    assert buffers.spare_bytes() == 2 << 20


def test_too_big_or_too_small_a_spare_is_not_used():
    a = buffers.empty((8 << 20,), "uint8")
    region = a.base
    del a
    assert buffers.empty((2 << 20,), "uint8").base is not region  # 4x too big
    assert buffers.empty((9 << 20,), "uint8").base is not region  # too small


def test_spares_stay_within_the_limit_oldest_unmapped_first():
    buffers.set_spare_limit(5 << 20)
    a, b, c = (buffers.empty((2 << 20,), "uint8") for _ in range(3))
    first, last = a.base, c.base
    del a, b, c  # freed in this order
    assert buffers.spare_bytes() == 4 << 20
    assert first.closed and not last.closed
    assert buffers.release() == 4 << 20 and last.closed


def test_small_buffers_are_plain_numpy_arrays():
    small = buffers.empty((100, 100), "float32")
    assert small.base is None and small.flags.owndata


def test_a_cache_budget_sets_the_pool_limit():
    from napari_zshard import set_cache_budget
    from napari_zshard.engine import cache

    old = cache.default_cache().budget_bytes
    try:
        set_cache_budget(64 << 20)
        assert buffers.spare_limit() == 32 << 20
        set_cache_budget(0)
        assert buffers.spare_limit() == 0
        a = buffers.empty((2 << 20,), "uint8")
        del a
        assert buffers.spare_bytes() == 0
    finally:
        set_cache_budget(old)
