"""The semantic vote voxel by voxel: coverage, quorum, ties, the reserved conflict value."""

from __future__ import annotations

import numpy as np
import pytest

from napari_zshard.annotations.consensus import CONFLICT_VALUE
from napari_zshard.annotations.consensus.semantic import NO_QUORUM, TIE, vote


def test_vote_counts_only_covering_annotators():
    # 4 annotators x 6 voxels
    values = np.array([[1, 1, 1, 2, 0, 5],
                       [1, 2, 1, 2, 0, 5],
                       [1, 2, 3, 0, 0, 5],
                       [0, 0, 0, 0, 0, 0]], dtype=np.uint32)
    covered = np.array([[1, 1, 1, 1, 0, 1],
                        [1, 1, 1, 1, 0, 0],
                        [1, 1, 1, 1, 0, 0],
                        [0, 1, 0, 1, 0, 0]], dtype=bool)
    cons, kind = vote(values, covered, quorum=None)
    # voxel 0: 3 of 3 covering say 1 (the 4th never looked: its 0 is no vote)
    # voxel 1: 1 vs 2,2 vs 0 (covered): 2 has 2 of 4, no strict majority -> no quorum
    # voxel 2: 1,1,3 -> 1 with 2 of 3
    # voxel 3: 2,2 vs 0,0 -> a tie
    # voxel 4: nobody looked -> 0, no conflict; voxel 5: one annotator, 1 of 1
    assert cons.tolist() == [1, CONFLICT_VALUE, 1, CONFLICT_VALUE, 0, 5]
    assert kind.tolist() == [0, NO_QUORUM, 0, TIE, 0, 0]
    cons2, kind2 = vote(values, covered, quorum=2)
    assert cons2.tolist() == [1, 2, 1, CONFLICT_VALUE, 0, CONFLICT_VALUE]
    assert kind2.tolist() == [0, 0, 0, TIE, 0, NO_QUORUM]


@pytest.mark.parametrize("kind", ["blobs", "noise", "transposed"])
def test_block_stats_equal_a_per_label_count(kind):
    """Statistics from runs of labels equal the obvious per-label computation over voxels."""
    from napari_zshard.annotations.consensus.contingency import block_stats

    rng = np.random.default_rng(3)
    if kind == "noise":
        labels = rng.integers(0, 6, (9, 17, 23)).astype(np.uint32)
    else:
        labels = np.repeat(np.repeat(np.repeat(rng.integers(0, 40, (3, 4, 5)), 5, 0), 6, 1), 7,
                           2).astype(np.uint32)
        if kind == "transposed":
            labels = labels.transpose(2, 0, 1)
    region = tuple(slice(o, o + n) for o, n in zip((64, 3, 10), labels.shape, strict=True))
    stats = block_stats(labels, region)
    assert stats.ids.tolist() == sorted(set(np.unique(labels).tolist()) - {0})
    for r, label in enumerate(stats.ids.tolist()):
        where = np.argwhere(labels == label) + np.array([64, 3, 10])
        assert stats.count[r] == len(where)
        assert stats.lo[r].tolist() == where.min(0).tolist()
        assert stats.hi[r].tolist() == (where.max(0) + 1).tolist()
        assert stats.sums[r].tolist() == where.sum(0).astype(float).tolist()
