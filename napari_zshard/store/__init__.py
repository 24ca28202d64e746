"""I/O: URL → store, batched ranged reads with retries and length checks, atomic writes."""

from ..keys import join_key, validate_key, validate_name
from .base import Store, public_options
from .config import options_for
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest
from .retry import RetryPolicy
from .stats import RequestStats
from .url import normalize_url, open_store, redact_url

__all__ = [
    "ByteRequest", "ByteResult", "FullRequest", "RangeRequest", "RequestStats", "RetryPolicy",
    "Store", "SuffixRequest", "join_key", "normalize_url", "open_store", "options_for",
    "public_options", "redact_url", "validate_key", "validate_name",
]
