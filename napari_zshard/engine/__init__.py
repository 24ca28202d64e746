"""The shard engine: layout math, shard index, codecs, read planner and shard writer."""

from .array import ShardedArray, open_array, open_arrays, read_array_meta
from .cache import EngineCache, default_cache, set_cache_budget
from .coalesce import CoalescePolicy, coalesce_ranges
from .metadata import ArrayMeta, ShardingSpec

__all__ = [
    "ArrayMeta", "CoalescePolicy", "EngineCache", "ShardedArray", "ShardingSpec",
    "coalesce_ranges", "default_cache", "open_array", "open_arrays", "read_array_meta",
    "set_cache_budget",
]
