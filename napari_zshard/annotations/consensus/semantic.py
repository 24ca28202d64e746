"""Semantic merge: a value is a class, so every voxel is a vote among the annotators whose
coverage includes it.

* The winner is the value most covering annotators gave (0 counts: a reviewed voxel left 0 is
  a vote for background). It needs ``quorum`` votes; the default is a strict majority of the
  annotators covering the voxel.
* A tie for first place, or a winner below quorum, gives :data:`CONFLICT_VALUE` in the
  consensus and a conflict id in the conflicts image.
* A voxel nobody reviewed is 0 in both (and not a conflict).

Conflicts are grouped per level-0 inner chunk and kind: conflict id ``2 * chunk + kind``
(chunk: the C-order index of the inner chunk in the whole grid; kind 1 = tie, 2 = no quorum),
a pure function of where it is, so ids never depend on the run.
"""

from __future__ import annotations

import numpy as np

#: the consensus value of a voxel without a decision (tie or no quorum)
CONFLICT_VALUE = np.iinfo(np.uint32).max
TIE, NO_QUORUM = 1, 2
KIND_NAMES = {TIE: "tie", NO_QUORUM: "no_quorum"}


def vote(values: np.ndarray, covered: np.ndarray, *, quorum: int | None
         ) -> tuple[np.ndarray, np.ndarray]:
    """(consensus, kind) of a block: ``values``/``covered`` are (k, ...) per annotator."""
    k = values.shape[0]
    n_cov = covered.sum(axis=0)
    counts = np.zeros(values.shape, dtype=np.int16)
    for i in range(k):
        for j in range(k):
            counts[i] += covered[j] & (values[j] == values[i])
    counts[~covered] = -1
    best = counts.argmax(axis=0)  # the first annotator (by name) with the most votes
    top = np.take_along_axis(counts, best[None], axis=0)[0]
    winner = np.take_along_axis(values, best[None], axis=0)[0]
    # a tie: another covering annotator with as many votes for another value
    tie = np.zeros(top.shape, dtype=bool)
    for i in range(k):
        tie |= (counts[i] == top) & (values[i] != winner) & covered[i]
    need = (n_cov // 2 + 1) if quorum is None else np.full(n_cov.shape, quorum)
    kind = np.zeros(top.shape, dtype=np.uint8)
    kind[(top < need) & (n_cov > 0)] = NO_QUORUM
    kind[tie & (n_cov > 0)] = TIE
    out = np.where(n_cov > 0, winner, 0).astype(np.uint64)
    out[kind > 0] = CONFLICT_VALUE
    if out.max(initial=0) > CONFLICT_VALUE:
        raise ValueError(f"label value {int(out.max())} does not fit the consensus (uint32)")
    return out.astype(np.uint32), kind


def conflict_ids(kind: np.ndarray, region: tuple[slice, ...], chunk_shape: tuple[int, ...],
                 grid: tuple[int, ...]) -> np.ndarray:
    """Conflict id per voxel (0: none): ``2 * global chunk index + kind``."""
    idx: tuple[np.ndarray, ...] = np.indices(kind.shape, sparse=True)
    chunk = [(ix + s.start) // c for ix, s, c in zip(idx, region, chunk_shape, strict=True)]
    flat = np.ravel_multi_index(np.broadcast_arrays(*chunk), grid).astype(np.uint64)
    return np.where(kind > 0, 2 * flat + kind, 0).astype(np.uint32)
