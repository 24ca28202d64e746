"""The shard engine: layout math, shard index, codecs, read planner and shard writer.

How a read works
================
The life of one cold plane, ``arr[300]`` of a 512x1024x1024 uint16 array stored as 64³ inner
chunks in 256³ shards (zstd + crc32c), nothing cached:

1. :meth:`.array.ShardedArray.__getitem__` turns the numpy key into a step-1 region and hands
   it to the array's :class:`.reader.RegionReader`.
2. The reader asks the array's :class:`.layout.ShardLayout` which inner chunks the region
   touches: plane 300 lies at depth 44 of chunk row 4, so 16 x 16 chunks ``(4, y, x)``.
3. :meth:`.fetch_plan.FetchPlanner.validate` makes sure each of the 16 shards holding them was
   checked since the array was opened: their indexes are read in one concurrent batch
   (:mod:`.shard_index`, one ranged request each) and cached (:mod:`.cache`), together with the
   shard's identity (ETag, or inode-size-mtime), so chunks of a shard someone rewrote are
   never served.
4. Nothing is cached, so the reader *claims* the 256 chunks in the decoded-chunk cache for
   one :class:`.inflight.InFlight` unit, the one place in-flight state lives; a concurrent
   read of the same chunks finds that unit and waits on it instead of fetching again. The
   rest of the chunk row is claimed for the same unit as read-ahead (when the cache can hold
   it).
5. :meth:`.fetch_plan.FetchPlanner.plan` maps each chunk to its shard and slot
   (:meth:`.layout.ShardLayout.locate`), looks the slot up in the shard's index, and coalesces
   the byte ranges per shard (:mod:`.coalesce`): a few requests, sent in one concurrent batch
   by the store (``Store.read_many``). Read-ahead rides along only where its bytes lie inside
   those requests; the rest is fetched after the read returns.
6. :mod:`.slab` gives each chunk row one buffer (:mod:`.buffers`), so a plane is later copied
   out of it in a few strided copies; the unit knows the slabs it fills.
7. As each request's bytes arrive (even before the whole range has), the
   :class:`.chunk_decode.ChunkDecoder` posts the decode of each chunk in it to the decode pool
   (:mod:`.pools`), the chunks the read waits for first. A chunk the read needs only the top of
   is decoded that far first (:mod:`.progressive`), straight into its slot; the rest follows at
   low priority. The crc32c (:mod:`.checksum`) is verified before anything is decoded;
   :mod:`.codecs` raises a located error for damage, and the unit hands it to every read that
   needs that chunk.
8. The reader copies out what is ready, then takes what the unit publishes as it is decoded
   (:meth:`.inflight.InFlight.collect`), and returns. The decoded chunks are now cached (each a
   view of its slab slot, evicted together with its slab).
9. The next plane, ``arr[301]``, finds the row's slab (in the cache, or still in its unit with
   enough of each slot decoded) and is one copy per row of chunks: no planning, no requests.

Read-ahead outside the read's own byte ranges goes to the read-ahead pool, which starts once
the read's own decodes are done: it never delays the read. Arrays whose codecs the engine does
not implement are read through zarr-python (:mod:`.fallback`).
"""

from .array import ShardedArray, open_array, open_arrays, read_array_meta
from .cache import EngineCache, default_cache, set_cache_budget
from .coalesce import CoalescePolicy, coalesce_ranges
from .metadata import ArrayMeta, ShardingSpec

__all__ = [
    "ArrayMeta", "CoalescePolicy", "EngineCache", "ShardedArray", "ShardingSpec",
    "coalesce_ranges", "default_cache", "open_array", "open_arrays", "read_array_meta",
    "set_cache_budget",
]
