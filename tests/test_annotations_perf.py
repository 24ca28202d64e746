"""Issue 14's figures for the commit: the diff stays small next to the shards it rewrites,
old diffs still replay, mode downsampling skips uniform blocks with the same result, the
pyramid update recomputes only the parents of what changed."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import zarr
import zstandard
from test_annotations_commit import assert_pyramid_true, levels
from test_annotations_region import make_image

from napari_zshard import annotations as ann
from napari_zshard.annotations import provenance as prov
from napari_zshard.multiscale.write import ImageSpec, WriteOptions, write_image

BALL = (slice(4, 28), slice(20, 108), slice(20, 108))


def _ball(edit: ann.Edit, value: int) -> None:
    z, y, x = np.ogrid[BALL]
    inside = ((z - 16) / 12.0) ** 2 + ((y - 64) / 44.0) ** 2 + ((x - 64) / 44.0) ** 2 <= 1
    part = np.array(edit.data[BALL])
    part[inside] = value
    edit.data[BALL] = part


def _diff_bytes(url: str, commit_id: str) -> bytes:
    li = ann.checkout(url, labels="cells", annotator="reader", region=(slice(0, 1),) * 3).li
    found = prov.read_intent(li, commit_id)
    assert found is not None
    return found[1]


def test_diff_of_a_painted_ball_is_small_next_to_its_voxels(tmp_path):
    url = make_image(tmp_path)
    edit = ann.checkout(url, labels="cells", annotator="alice", create=True,
                        region=(slice(0, 32), slice(0, 128), slice(0, 128)))
    _ball(edit, 9)
    report = edit.commit("ball")
    voxels = int((levels(url)[0] == 9).sum())
    assert report.voxels_written == voxels > 90_000
    raw = _diff_bytes(url, report.commit_id)
    # absolute indexes took ~2.2 bytes a voxel after zstd (210 KB here); delta-coded they are
    # mostly runs of 1: ~0.15 bytes a voxel, base and ours values included
    assert len(raw) < voxels // 4, (len(raw), voxels)


def _old_format_npz(chunks: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]],
                    chunk_size: int) -> bytes:
    """A diff as the first version wrote it: absolute uint32 indexes, no ``format`` field."""
    keys = sorted(chunks)
    blobs, counts = [], []
    for k in keys:
        index, base, ours = chunks[k]
        parts = b"" if len(index) == chunk_size else index.astype(np.uint32).tobytes()
        blobs.append(zstandard.ZstdCompressor(level=1).compress(
            parts + base.astype(np.uint32).tobytes() + ours.astype(np.uint32).tobytes()))
        counts.append(len(index))
    buf = io.BytesIO()
    np.savez(buf, chunks=np.array(keys, dtype=np.int64), counts=np.array(counts),
             sizes=np.array([len(b) for b in blobs]),
             blob=np.frombuffer(b"".join(blobs), dtype=np.uint8),
             dtype=np.array(np.dtype(np.uint32).str), chunk_size=np.array(chunk_size))
    return buf.getvalue()


def test_repair_replays_a_diff_of_the_first_format(tmp_path):
    url = make_image(tmp_path)
    edit = ann.checkout(url, labels="cells", annotator="setup", create=True,
                        region=(slice(0, 32), slice(0, 64), slice(0, 64)))
    li = edit.li
    size = 16 ** 3
    scattered = np.array([3, 700, 701, 702, 4000], dtype=np.uint32)
    chunks = {(0, 1, 2): (scattered, np.zeros(5, np.uint32), np.full(5, 4, np.uint32)),
              (1, 0, 0): (np.arange(size, dtype=np.uint32), np.zeros(size, np.uint32),
                          np.full(size, 6, np.uint32))}
    cid = prov.new_commit_id("old")
    prov.write_intent(li, cid, _old_format_npz(chunks, size), annotator="old",
                      annotator_slug="old", created=prov.now().isoformat(), message="v1",
                      label_image="cells", region=[[0, 32], [0, 64], [0, 64]],
                      base_shards={}, overrides=[], voxels=5 + size)
    assert ann.repair(url).finished == [cid]
    l0 = levels(url)[0]
    expected = np.zeros_like(l0)
    block = np.zeros(size, np.uint32)
    block[scattered] = 4
    expected[0:16, 16:32, 32:48] = block.reshape(16, 16, 16)
    expected[16:32, 0:16, 0:16] = 6
    np.testing.assert_array_equal(l0, expected)
    assert_pyramid_true(url)


def test_pyramid_update_recomputes_only_the_parents_of_the_changed_voxels(tmp_path):
    url = make_image(tmp_path)
    ann.checkout(url, labels="cells", annotator="setup", create=True,
                 region=(slice(0, 1),) * 3).commit()
    # a marker in level 1, inside the coarse chunk that the edit below changes, but outside
    # the parents of its voxels: recomputing the whole chunk would erase it
    level1 = zarr.open_array(f"{url}/labels/cells/1", mode="r+")
    level1[0, 0, 0] = 77
    edit = ann.checkout(url, labels="cells", annotator="alice",
                        region=(slice(0, 32), slice(0, 32), slice(0, 32)))
    edit.data[20:24, 20:24, 20:24] = 5
    edit.commit()
    lv = levels(url)
    assert lv[1][0, 0, 0] == 77
    assert (lv[1][10:12, 10:12, 10:12] == 5).all() and (lv[1] == 5).sum() == 8
    assert lv[2][5, 5, 5] == 5 and (lv[2] == 5).sum() == 1


COMMIT_A_REPAINT = r"""
import json, sys
import numpy as np
from napari_zshard import annotations as ann

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

edit = ann.checkout(sys.argv[1], labels="cells", annotator="painter")
yy, xx = np.mgrid[0:edit.data.shape[1], 0:edit.data.shape[2]]
for z in range(edit.data.shape[0]):  # every voxel, 32-pixel tiles of distinct ids
    edit.data[z] = ((yy // 32) * 97 + xx // 32 + z * 7 + 1).astype(np.uint32)
with open("/proc/self/clear_refs", "w") as f:  # the peak from here on
    f.write("5")
before = kib("VmRSS")
report = edit.commit("repaint")
print(json.dumps({"voxels": report.voxels_written, "over": (kib("VmHWM") - before) * 1024,
                  "raw": edit.data.nbytes}))
"""


def test_commit_of_a_fully_repainted_region_needs_little_memory_beyond_it(tmp_path):
    """A repainted region is committed chunk by chunk: no second copy of it (snapshot), no
    shard's worth of full merge arrays, no full masks kept for the pull. What remains is
    about constant (imports, a few chunks' arrays): ~60 MiB here, where the first version
    took ~4.5x the region (~580 MiB)."""
    url = str(tmp_path / "img.zarr")
    shape = (64, 512, 1024)  # 128 MiB of uint32
    for _ in write_image(url, np.zeros(shape, np.uint8), ImageSpec(name="img"),
                         options=WriteOptions(chunks=(16, 128, 128), shards=(32, 256, 256),
                                              levels=3)):
        pass
    ann.checkout(url, labels="cells", annotator="setup", create=True,
                 region=(slice(0, 1),) * 3).commit()
    child = subprocess.run([sys.executable, "-c", COMMIT_A_REPAINT, url], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    got = json.loads(child.stdout.splitlines()[-1])
    assert got["voxels"] == math.prod(shape)
    assert got["over"] <= got["raw"] * 3 // 4, (got["over"] / 2**20, got["raw"] / 2**20)
    assert_pyramid_true(url)
