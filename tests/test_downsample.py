"""Pyramid levels: labels keep real label values, images average, anisotropic data evens out."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_zshard.multiscale.downsample import downsample, level_factors


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint32, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
              elements=st.integers(0, 5)))
def test_label_mode_only_ever_yields_values_from_its_own_block(labels):
    coarse = downsample(labels, (2, 2, 2), "mode")
    assert coarse.shape == tuple(-(-n // 2) for n in labels.shape)
    for idx in np.ndindex(coarse.shape):
        block = labels[tuple(slice(2 * i, 2 * i + 2) for i in idx)]
        values, counts = np.unique(block, return_counts=True)
        assert coarse[idx] in values
        assert counts[list(values).index(coarse[idx])] == counts.max()


def test_mode_prefers_the_majority_not_the_mean():
    block = np.array([[[7, 7], [7, 1]], [[1, 9], [7, 7]]], dtype=np.uint16)
    assert downsample(block, (2, 2, 2), "mode").item() == 7
    assert downsample(block, (2, 2, 2), "mean").item() == round(block.mean())


def test_mean_of_integer_images_rounds_and_keeps_the_dtype():
    data = np.arange(16, dtype=np.uint16).reshape(4, 4)
    out = downsample(data, (2, 2), "mean")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[2, 4], [10, 12]])  # 2.5 → 2, 4.5 → 4 (to even)


@pytest.mark.parametrize(("shape", "scale", "expected"), [
    ((512, 1024, 1024), None, [(2, 2, 2), (2, 2, 2)]),
    # 4 µm z, 0.5 µm xy: only xy is halved until the voxels are roughly cubic
    ((64, 2048, 2048), (4, 0.5, 0.5), [(1, 2, 2)] * 3),
    ((200, 200, 200), None, []),
])
def test_levels_stop_at_a_coarsest_level_napari_can_render_in_3d(shape, scale, expected):
    assert level_factors(shape, scale) == expected


def _mode_by_sorting_every_block(blocks: np.ndarray) -> np.ndarray:
    """block_mode as it was before uniform blocks were skipped: the reference."""
    s = np.sort(blocks, axis=-1)
    counts = np.zeros(s.shape, dtype=np.int32)
    for j in range(blocks.shape[-1]):
        counts += s == s[..., j:j + 1]
    return np.take_along_axis(s, np.argmax(counts, axis=-1)[..., None], axis=-1)[..., 0]


def test_block_mode_skipping_uniform_blocks_matches_sorting_every_block():
    from napari_zshard.multiscale.downsample import _blocks, block_mode

    rng = np.random.default_rng(3)
    cases = [rng.integers(0, 4, (30, 31, 33), dtype=np.uint32),  # ties, mixed blocks
             rng.integers(0, 2**32 - 1, (16, 16, 16), dtype=np.uint32),
             np.full((16, 18, 20), 7, dtype=np.uint64),  # uniform everywhere
             np.zeros((8, 8, 8), dtype=np.uint8)]
    labels = np.zeros((32, 64, 64), dtype=np.uint32)  # uniform and mixed blocks together
    labels[5:20, 10:50, 3:40] = 9
    labels[::7, ::5] = rng.integers(0, 3, labels[::7, ::5].shape)
    cases.append(labels)
    for data in cases:
        for factors in [(2, 2, 2), (1, 2, 2), (2, 1, 3)]:
            blocks = _blocks(data, factors)
            expected = _mode_by_sorting_every_block(blocks)
            got = block_mode(blocks)
            assert got.dtype == data.dtype
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(downsample(data, factors, "mode"), expected)


def test_block_mode_in_batches_matches_sorting_every_block(monkeypatch):
    from napari_zshard.multiscale import downsample as ds

    monkeypatch.setattr(ds, "_MODE_BATCH", 37)  # batches that split rows of blocks
    data = np.random.default_rng(5).integers(0, 3, (10, 22, 26), dtype=np.uint16)
    data[:, :10] = 4
    blocks = ds._blocks(data, (2, 2, 2))
    np.testing.assert_array_equal(ds.block_mode(blocks), _mode_by_sorting_every_block(blocks))
