"""Saving and resharding stream: memory stays bounded by a few shards per worker, however big the
volume (the benchmarks measure this at 1 GiB; these tests keep it true on every run).

Each run is a fresh interpreter (a test process's peak RSS is whatever earlier tests needed) that
first does a small run of the same kind, so imports, thread pools and codec contexts are in place,
then measures its peak resident size (``VmHWM``) during the big run above its resident size just
before it. With 2 MiB (save) and 4 MiB (reshard) shards on 2 workers, the bound is 64 MiB, a
quarter of the 256 MiB volume: a writer that held the volume, a pyramid level or a row of shards
would go past it. Measured: 38-42 MiB for the save (128 MiB to 512 MiB sources alike), 24-30 MiB
for the reshard (256 MiB and 512 MiB sources alike).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import napari_zshard as nz

BOUND = 64 * 2**20
SHAPE = (512, 512, 512)  # uint16: 256 MiB, four times the bound
SHARD = (64, 128, 128)  # 2 MiB

# A lazy volume (dask, never held whole) with a pattern to check the result against.
VOLUME = textwrap.dedent("""
    import json, re, sys
    import dask.array as da
    import numpy as np
    from napari_zshard.multiscale.write import WriteOptions, save_image

    def kib(field):
        with open("/proc/self/status") as f:
            return int(re.search(rf"^{field}:\\s+(\\d+) kB", f.read(), re.M).group(1))

    def fill(block, block_info=None):
        (z0, _), (y0, _), _ = block_info[None]["array-location"]
        out = np.empty(block.shape, "uint16")
        out[:] = np.arange(block.shape[-1], dtype="uint16") + z0 + y0
        return out

    def volume(shape):
        return da.zeros(shape, dtype="uint16", chunks=SHARD).map_blocks(fill, dtype="uint16")

    def save(url, shape, levels):
        options = WriteOptions(chunks=(32, 64, 64), shards=SHARD, levels=levels, workers=2)
        save_image(url, volume(shape), options=options)
""")


def expected_plane(z: int) -> np.ndarray:
    """Plane ``z`` of the volume: x + (z rounded down to its block) + (y rounded down)."""
    y = np.arange(SHAPE[1]) // SHARD[1] * SHARD[1]
    row = np.arange(SHARD[2], dtype="uint16")
    return (np.tile(row, SHAPE[2] // SHARD[2])[None, :] + (z // SHARD[0] * SHARD[0])
            + y[:, None]).astype("uint16")


def run_child(script: str, *args: str) -> str:
    code = f"SHAPE, SHARD = {SHAPE!r}, {SHARD!r}\n" + VOLUME + textwrap.dedent(script)
    child = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    return child.stdout


def run_measured(script: str, *args: str) -> dict:
    return json.loads(run_child(script, *args).splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_saving_a_volume_four_times_the_bound_stays_under_it(tmp_path):
    got = run_measured("""
        dst = sys.argv[1]
        save(dst + ".warm", (64, 128, 256), 2)
        before = kib("VmRSS")
        save(dst, SHAPE, 2)
        print(json.dumps({"peak": (kib("VmHWM") - before) * 1024}))
    """, str(tmp_path / "saved.zarr"))

    assert got["peak"] < BOUND, f"peak RSS rose by {got['peak'] / 2**20:.0f} MiB"
    image = nz.open_image(tmp_path / "saved.zarr")
    assert [a.shape for a in image.arrays] == [SHAPE, (256, 256, 256)]
    np.testing.assert_array_equal(image.arrays[0][300], expected_plane(300))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_resharding_a_volume_four_times_the_bound_stays_under_it(tmp_path):
    run_child("""
        save(sys.argv[1], SHAPE, 1)
        save(sys.argv[2], (64, 128, 256), 1)
    """, str(tmp_path / "src.zarr"), str(tmp_path / "small.zarr"))

    got = run_measured("""
        from napari_zshard.reshard import plan_reshard

        def reshard(src, dst):
            plan = plan_reshard(src, dst, chunks=(16, 64, 64), shards=(32, 256, 256),
                                measure=False)
            for _ in plan.run(workers=2):
                pass

        src, small, dst = sys.argv[1:4]
        reshard(small, dst + ".warm")
        before = kib("VmRSS")
        reshard(src, dst)
        print(json.dumps({"peak": (kib("VmHWM") - before) * 1024}))
    """, *(str(tmp_path / n) for n in ("src.zarr", "small.zarr", "out.zarr")))

    assert got["peak"] < BOUND, f"peak RSS rose by {got['peak'] / 2**20:.0f} MiB"
    out = nz.open_image(tmp_path / "out.zarr").arrays[0]
    assert out.shape == SHAPE and out.shards == (32, 256, 256)
    np.testing.assert_array_equal(out[300], expected_plane(300))
