"""The masked three-way merge of one shard (engine/shard_update.merge_edits_into_shard)."""

from __future__ import annotations

import numpy as np

from napari_zshard.engine.create import create_array
from napari_zshard.engine.shard_update import (
    ChunkEdit,
    merge_edits_into_shard,
    split_shard,
)
from napari_zshard.engine.shard_writer import encode_shard


def test_only_masked_voxels_of_edited_chunks_change(tmp_path):
    _, meta = create_array(tmp_path / "a", shape=(8, 8), dtype=np.uint16, chunks=(4, 4),
                           shards=(8, 8))
    theirs = np.arange(64, dtype=np.uint16).reshape(8, 8) + 1
    current = encode_shard(meta, theirs)
    base = theirs[0:4, 0:4].copy()
    base[0, 0] = 999  # someone changed (0, 0) since our base
    ours = base.copy()
    ours[0, 0] = 7  # ... and we did too, to another value: a conflict
    ours[0, 1] = 8  # ours only
    ours[3, 3] = theirs[3, 3]  # equal to what is stored: nothing to write
    mask = ours != base
    mask[3, 3] = True
    outcomes: dict = {}
    new = merge_edits_into_shard(current, meta=meta, key="c/0/0", where="test",
                                 edits={0: ChunkEdit(base=base, ours=ours, mask=mask)},
                                 outcomes=outcomes)
    out = outcomes[0]
    assert out.conflict.sum() == 1 and out.conflict[0, 0]
    assert out.written.sum() == 1 and out.written[0, 1]
    before, after = split_shard(current, meta, key="k", where="t"), split_shard(
        new, meta, key="k", where="t")
    assert bytes(before[0]) != bytes(after[0])
    assert [bytes(c) for c in before[1:]] == [bytes(c) for c in after[1:]]  # copied as stored
    chunk = meta.chunk_codecs.decode(after[0], (4, 4), meta.dtype)
    expected = theirs[0:4, 0:4].copy()
    expected[0, 1] = 8
    np.testing.assert_array_equal(chunk, expected)
    # merging again changes nothing: the very same bytes come back (the store writes nothing)
    again = merge_edits_into_shard(new, meta=meta, key="c/0/0", where="test",
                                   edits={0: ChunkEdit(base=base, ours=ours, mask=mask)},
                                   outcomes=outcomes)
    assert again is new and not outcomes[0].written.any()
