"""The zarr-python fallback is bounded like the engine: a crafted chunk in a codec chain the
engine does not implement (numcodecs' zstd through zarr-python) is a DecompressionBombError,
and neither a read nor ``zshard convert`` allocates what the frame declares.

Peak memory is measured in a fresh interpreter (``VmHWM`` of the child itself), so nothing
this test process allocated before hides or inflates it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_corrupt_input import gzip_of_zeros, zstd_rle_frame

from napari_zshard.engine.checksum import crc32c

GIB = 2**30
EMPTY = 2**64 - 1
ROOT = Path(__file__).resolve().parents[1]


def write_fallback_bomb(path: Path, bomb: bytes, compressor) -> np.ndarray:
    """A (32, 16, 16) uint16 array in one shard of two 16³ chunks, compressed by a numcodecs
    codec through zarr-python; chunk 0 is replaced by ``bomb``, chunk 1 holds real data."""
    import zarr

    data = np.arange(32 * 16 * 16, dtype=np.uint16).reshape(32, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = zarr.create_array(store=str(path), shape=data.shape, chunks=(16, 16, 16),
                                shards=(32, 16, 16), dtype="uint16", compressors=[compressor],
                                fill_value=0)
        arr[:] = data
    good = zarr.open_array(str(path))  # what chunk 1 holds, re-encoded by zarr-python
    shard = (path / "c/0/0/0").read_bytes()
    entries = np.frombuffer(shard[-36:-4], "<u8").reshape(2, 2)
    second = shard[int(entries[1, 0]):int(entries[1, 0] + entries[1, 1])]
    index = np.array([[0, len(bomb)], [len(bomb), len(second)]], "<u8").tobytes()
    (path / "c/0/0/0").write_bytes(bomb + second + index +
                                   crc32c(index).to_bytes(4, "little"))
    assert good.shape == data.shape
    return data


def run_child(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, to which the child's own
    peak RSS is added."""
    # VmHWM, not ru_maxrss: Linux carries the parent's resident size at fork into the child's
    # ru_maxrss, so a test process already at 1.3 GiB made every child report 1.3 GiB
    script = code + (
        "\nimport json\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "result['peak_rss'] = int(hwm.split()[1]) * 1024\n"
        "print(json.dumps(result))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def numcodecs_zstd():
    from zarr.codecs.numcodecs import Zstd

    return Zstd(level=1)


def numcodecs_gzip():
    from zarr.codecs.numcodecs import GZip

    return GZip(level=1)


BOMBS = {
    "zstd-declares-2GiB": (numcodecs_zstd, lambda: zstd_rle_frame(2 * GIB, declare_size=True)),
    "zstd-streams-2GiB": (numcodecs_zstd, lambda: zstd_rle_frame(2 * GIB, declare_size=False)),
    "gzip-256MiB": (numcodecs_gzip, lambda: gzip_of_zeros(256 * 2**20)),
}
#: A fresh interpreter with numpy, zarr and napari_zshard imported stays far below this; the
#: unbounded fallback peaked at 8 GiB on the 2 GiB frame.
PEAK_LIMIT = 400 * 2**20


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_bomb_read_through_the_fallback_is_an_error_with_bounded_memory(bomb, tmp_path):
    compressor, make = BOMBS[bomb]
    data = write_fallback_bomb(tmp_path / "vol.zarr", make(), compressor())
    result = run_child(f"""
import numpy as np, napari_zshard as nz
from napari_zshard.errors import DecompressionBombError
arr = nz.open_array({str(tmp_path / 'vol.zarr')!r})
assert arr.uses_fallback
result = {{"second": arr[16:].tolist() == np.asarray({data[16:].tolist()!r}).tolist()}}
try:
    arr[0]
except DecompressionBombError as e:
    result["error"] = str(e)
""")
    assert result["second"], "the healthy chunk beside the bomb must still read"
    assert "error" in result, "reading the crafted chunk must raise DecompressionBombError"
    assert "c/0/0/0: inner chunk at index entry 0" in result["error"]
    assert result["peak_rss"] < PEAK_LIMIT, f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB"


def test_convert_of_a_fallback_bomb_fails_with_bounded_memory(tmp_path):
    write_fallback_bomb(tmp_path / "vol.zarr", zstd_rle_frame(2 * GIB, declare_size=True),
                        numcodecs_zstd())
    result = run_child(f"""
import contextlib, io
from napari_zshard.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(["convert", {str(tmp_path / 'vol.zarr')!r}, {str(tmp_path / 'out.zarr')!r},
                 "-q"])
result = {{"code": code, "stderr": err.getvalue()}}
""")
    assert result["code"] != 0
    assert "zstd frame declares 2147483648 bytes" in result["stderr"]
    assert result["peak_rss"] < PEAK_LIMIT, f"peak RSS {result['peak_rss'] / 2**20:.0f} MiB"


def test_a_healthy_fallback_array_reads_whole_shards_and_single_chunks(tmp_path):
    import zarr

    import napari_zshard as nz

    data = np.random.default_rng(1).integers(0, 60000, (64, 32, 16), dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.create_array(store=str(tmp_path / "ok.zarr"), shape=data.shape,
                          chunks=(16, 16, 16), shards=(32, 32, 16), dtype="uint16",
                          compressors=[numcodecs_zstd()], fill_value=0)[:] = data
    arr = nz.open_array(tmp_path / "ok.zarr")
    assert arr.uses_fallback
    np.testing.assert_array_equal(arr[:], data)
    np.testing.assert_array_equal(arr[40, 3:20], data[40, 3:20])

