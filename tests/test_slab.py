"""A chunk row fetched together is decoded into one array and copied out in one strided copy:
every region reads back exactly what was written (edges, holes, several planes, several rows,
readers racing), and the cache evicts a row's chunks together so it holds what it counts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec

import napari_zshard
from napari_zshard import EngineCache
from napari_zshard.engine import slab
from napari_zshard.engine.cache import ClaimingLRU
from napari_zshard.engine.pools import decode_pool, readahead_pool

CHAIN = [BytesCodec(), ZstdCodec(level=1), Crc32cCodec()]


def structured(shape) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((x * 7 + y * 3 + z * 11) % 4000 + (x * y) % 97).astype("uint16")


def write(path, data, chunk, shard, *, skip=()) -> str:
    """``data`` as a sharded array; the chunks at ``skip`` (chunk coordinates) never written."""
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=shard,
                            serializer=ShardingCodec(chunk_shape=chunk, codecs=CHAIN),
                            compressors=None, fill_value=7, zarr_format=3)
    arr[...] = data
    for c in skip:
        arr[tuple(slice(g * n, (g + 1) * n) for g, n in zip(c, chunk, strict=True))] = 7
    return str(path)


def cached_chunks(arr) -> dict:
    lru = arr._reader.cache.chunks
    with lru._lock:
        return {k[1]: e.value for k, e in lru._data.items() if k[0] == arr._reader.token}


# an array whose last chunk row and column are partial (200 = 6*32 + 8, 260 = 8*32 + 4)
SHAPE, CHUNK, SHARD = (40, 200, 260), (16, 32, 32), (32, 128, 128)

REGIONS = [
    (5,),
    (slice(5, 6), slice(0, 64), slice(0, 96)),  # aligned
    (5, slice(10, 190), slice(3, 250)),  # unaligned on every side
    (slice(3, 30), slice(None), slice(None)),  # several planes, two chunk rows
    (slice(14, 18), slice(31, 97), slice(100, 260)),  # across two rows, to the right edge
    (39, slice(190, 200), slice(250, 260)),  # the corner chunk alone
    (slice(None), 150, slice(None)),  # an XZ plane
]


@pytest.mark.parametrize("region", REGIONS, ids=[str(i) for i in range(len(REGIONS))])
def test_every_region_reads_back_exactly_cold_and_warm(tmp_path, region):
    data = structured(SHAPE)
    path = write(tmp_path / "a.zarr", data, CHUNK, SHARD)
    arr = napari_zshard.open_array(path, cache=EngineCache())
    np.testing.assert_array_equal(arr[region], data[region])  # cold: prefixes, then slabs
    readahead_pool().wait_idle(30)
    decode_pool().wait_idle(30)
    for again in REGIONS:  # warm: copied out of the slabs
        np.testing.assert_array_equal(arr[again], data[again], err_msg=str(again))


def test_a_rows_chunks_share_one_array_and_a_plane_is_one_copy_of_it(tmp_path, monkeypatch):
    data = structured(SHAPE)
    arr = napari_zshard.open_array(write(tmp_path / "a.zarr", data, CHUNK, SHARD),
                                   cache=EngineCache())
    np.testing.assert_array_equal(arr[5], data[5])
    decode_pool().wait_idle(30)
    row = {c: v for c, v in cached_chunks(arr).items() if c[0] == 0}
    assert len(row) == 7 * 9  # the whole row was read ahead, into one slab
    assert len({id(v.base) for v in row.values()}) == 1
    copies = []
    real = slab.gather
    monkeypatch.setattr("napari_zshard.engine.slab.gather",
                        lambda out, *a: (copies.append(out.shape), real(out, *a)))

    def per_chunk(*args):
        raise AssertionError("a plane of a decoded slab was planned chunk by chunk")

    monkeypatch.setattr(arr._reader, "_placements", per_chunk)
    hits = arr._reader.cache.chunks.hits
    np.testing.assert_array_equal(arr[9], data[9])
    # the plane, partial edge chunks included, in one gather of the slab's memory
    assert copies == [(1, 200, 260)]
    assert arr._reader.cache.chunks.hits == hits + 7 * 9
    np.testing.assert_array_equal(arr[9, 10:190, 3:250], data[9, 10:190, 3:250])
    assert copies[1:] == [(1, 180, 247)]


def test_a_chunk_decoded_outside_its_slot_is_not_read_from_the_slab(tmp_path, monkeypatch):
    from napari_zshard.engine.codecs import ChunkCodecs

    real = ChunkCodecs.decode

    def elsewhere(self, data, shape, dtype, out=None, **kw):
        # a chain that decodes into an array of its own, leaving the slot it was given as it was
        result = real(self, data, shape, dtype, None, **kw)
        if out is not None:
            out[...] = 0
        return result

    monkeypatch.setattr(ChunkCodecs, "decode", elsewhere)
    data = structured(SHAPE)
    arr = napari_zshard.open_array(write(tmp_path / "a.zarr", data, CHUNK, SHARD),
                                   cache=EngineCache(), progressive=False)
    np.testing.assert_array_equal(arr[5], data[5])
    decode_pool().wait_idle(30)
    assert not arr._reader.cache.chunks._groups
    for region in REGIONS:
        np.testing.assert_array_equal(arr[region], data[region], err_msg=str(region))


def test_rows_with_chunks_never_written_read_the_fill_value_around_them(tmp_path):
    data = structured(SHAPE)
    holes = [(0, 2, 3), (0, 0, 0), (1, 6, 8)]
    path = write(tmp_path / "a.zarr", data, CHUNK, SHARD, skip=holes)
    for c in holes:
        data[tuple(slice(g * n, (g + 1) * n) for g, n in zip(c, CHUNK, strict=True))] = 7
    arr = napari_zshard.open_array(path, cache=EngineCache())
    for region in REGIONS:
        np.testing.assert_array_equal(arr[region], data[region], err_msg=str(region))
        np.testing.assert_array_equal(arr[region], data[region], err_msg=str(region))


def test_readers_racing_over_big_planes_each_get_their_own_plane(tmp_path):
    # 1 MiB planes, several readers copying out of the same slabs at once
    shape = (32, 1024, 512)
    data = structured(shape)
    arr = napari_zshard.open_array(write(tmp_path / "a.zarr", data, (16, 64, 64),
                                         (16, 256, 256)), cache=EngineCache())
    errors: list[str] = []
    start = threading.Barrier(8)

    def scroll(offset: int) -> None:
        start.wait()
        for z in range(offset, offset + 24):
            if not np.array_equal(arr[z % 32], data[z % 32]):
                errors.append(f"plane {z % 32} differs")

    threads = [threading.Thread(target=scroll, args=(3 * i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_a_slab_is_evicted_whole_so_the_cache_holds_what_it_counts(tmp_path):
    shape = (64, 256, 256)
    data = structured(shape)
    chunk_bytes = 16 * 64 * 64 * 2
    # room for two and a half rows of 16 chunks: a third row evicts the first, whole
    budget = 40 * chunk_bytes
    cache = EngineCache(budget * 16 // 15 + 1)  # 1/16 of a budget goes to shard indexes
    arr = napari_zshard.open_array(write(tmp_path / "a.zarr", data, (16, 64, 64),
                                         (32, 256, 256)), cache=cache)
    for z in (0, 20, 40, 60, 1):
        np.testing.assert_array_equal(arr[z], data[z])
        decode_pool().wait_idle(30)
        rows: dict[int, list] = {}
        for c, v in cached_chunks(arr).items():
            rows.setdefault(c[0], []).append(v)
        assert cache.chunks.nbytes <= cache.chunks.max_bytes
        for members in rows.values():
            assert len(members) == 16, "a row's chunks stay or go together"
        held = {id(v.base): v.base.nbytes for members in rows.values() for v in members}
        assert sum(held.values()) == cache.chunks.nbytes


def test_groups_in_the_lru():
    lru = ClaimingLRU(100)
    a, b = object(), object()
    for k in range(4):
        lru.claim([("a", k)])
        lru.fulfil(("a", k), k, 10, a)
    lru.claim([("x",)])
    lru.fulfil(("x",), "x", 10)
    for k in range(4):
        lru.claim([("b", k)])
        lru.fulfil(("b", k), k, 10, b)
    assert lru.nbytes == 90
    lru.get_all([("a", 0)])  # one member used recently does not keep the group
    lru.claim([("c",)])
    lru.fulfil(("c",), "c", 20)  # 110 > 100: the oldest entry, ("a", 1), goes with its group
    assert lru.nbytes == 70
    assert lru.get_all([("a", 0)]) is None
    assert lru.get_all([("x",), ("b", 0), ("b", 3), ("c",)]) == ["x", 0, 3, "c"]
    lru.discard(lambda k: k == ("b", 2))
    assert lru.nbytes == 60 and lru._groups[b].members == {("b", 0), ("b", 1), ("b", 3)}
    lru.clear()
    assert lru.nbytes == 0 and not lru._groups


def test_planes_decoded_already_are_read_before_the_rest_of_their_chunks_is(tmp_path,
                                                                         monkeypatch):
    from napari_zshard.engine.chunk_decode import ChunkDecoder

    shape = (64, 256, 256)
    data = structured(shape)
    arr = napari_zshard.open_array(write(tmp_path / "a.zarr", data, (32, 128, 128),
                                         (32, 256, 256)), cache=EngineCache())
    rests = []  # the rest of each chunk, decoded when the test says so
    real_finish = ChunkDecoder._finish
    monkeypatch.setattr(ChunkDecoder, "_finish", lambda self, *a: rests.append((self, a)))
    np.testing.assert_array_equal(arr[0], data[0])  # cold: the top of each chunk decoded
    decode_pool().wait_idle(30)
    assert len(rests) == 4
    token = arr._reader.token
    unit = arr._reader.cache.chunks.inflight((token, (0, 0, 0)))
    plane = 128 * 128 * 2
    chunks = [(token, (0, y, x)) for y in (0, 1) for x in (0, 1)]
    planes = 1
    while all(unit.get(k, (planes + 1) * plane) is not None for k in chunks):
        planes += 1
    assert 1 < planes < 32  # the top of each chunk decoded, not the rest

    hits = arr._reader.cache.chunks.hits
    for z in range(1, planes):  # read off the prefixes as they are: no waiting for the rest
        np.testing.assert_array_equal(arr[z], data[z])
    region = (slice(0, planes), slice(10, 250), slice(3, 130))
    np.testing.assert_array_equal(arr[region], data[region])
    assert arr._reader.cache.chunks.hits == hits  # not cached yet
    for decoder, args in rests:
        real_finish(decoder, *args)
    for z in (planes, 31, 7):  # decoded whole: the cache's slab now
        np.testing.assert_array_equal(arr[z], data[z])
    assert arr._reader.cache.chunks.hits == hits + 3 * 4
    assert arr._reader.cache.chunks.inflight((token, (0, 0, 0))) is None  # the cache's now


class Sized:
    def __init__(self, size):
        self.size = size


def test_a_group_is_read_whole_only_when_complete_fresh_and_accepted():
    lru = ClaimingLRU(1000)
    g, h = Sized(3), Sized(2)
    for k in range(3):
        lru.claim([("g", k)])
        lru.fulfil(("g", k), k, 10, g)
    lru.claim([("h", 0)])
    lru.fulfil(("h", 0), 0, 10, h)  # one of two: not complete
    lru.claim([("x",)])
    lru.fulfil(("x",), "x", 10)
    assert lru.get_groups([("g", 1)], lambda grp: True, hits=5) == [g]
    assert lru.hits == 5
    assert set(list(lru._data)[-3:]) == {("g", 0), ("g", 1), ("g", 2)}  # most recently used
    for keys, accept in (([("h", 0)], None), ([("x",)], None), ([("y",)], None),
                         ([("g", 0), ("h", 0)], None), ([("g", 0)], lambda grp: False)):
        order = list(lru._data)
        assert lru.get_groups(keys, accept or (lambda grp: True), hits=1) is None
        assert lru.hits == 5 and list(lru._data) == order  # nothing touched or counted
    assert lru.get_groups([("g", 0)], lambda grp: True, hits=1, max_age=60) == [g]
    time.sleep(0.02)
    assert lru.get_groups([("g", 0)], lambda grp: True, hits=1, max_age=0.01) is None
    lru.discard(lambda k: k == ("g", 2))  # no longer complete
    assert lru.get_groups([("g", 0)], lambda grp: True, hits=1) is None
    lru.claim([("g", 2)])
    lru.fulfil(("g", 2), 2, 10, g)
    assert lru.get_groups([("g", 0), ("g", 2)], lambda grp: True, hits=2) == [g, g]


