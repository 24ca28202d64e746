"""The semantic vote voxel by voxel: coverage, quorum, ties, the reserved conflict value."""

from __future__ import annotations

import numpy as np

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
