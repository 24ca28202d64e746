"""Concurrent, retried, length-checked byte reads for remote stores (HTTP, S3, generic fsspec).

Each subclass implements one coroutine, :meth:`RemoteStore._fetch_once`, which makes exactly one
request. This module runs a whole batch of them concurrently on fsspec's I/O loop (its own thread,
so it also works inside Jupyter where an asyncio loop is already running), retries transient
failures with backoff (:class:`.retry.RetryPolicy`, the one policy of every remote store), and
turns the last failure into a clear error.

An answer that contradicts its request (a ``Content-Range`` other than the range asked for, a
206 without one, a ``Content-Length`` that is not the range's) is taken as a transient fault of
the server or of something between (retried), never as the object's bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import RemoteReadError, ShortReadError, StoreError
from .base import ProgressCallback, ResultCallback, Store
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest
from .retry import RetryPolicy, TransientError

log = logging.getLogger(__name__)

#: The most a whole-object read (metadata; an unsharded chunk; fsck reading a whole shard)
#: takes: a bigger ``Content-Length`` is refused before allocating, a body without one stops
#: there. 4 GiB: above any shard this project writes in one PUT (S3 caps a PUT at 5 GiB).
MAX_WHOLE_OBJECT = 4 * 2**30

#: Storage options the engine reads itself (never handed to the fsspec file system).
ENGINE_OPTIONS = ("stall_timeout",)


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``"bytes 0-99/1000"`` → (0, 99, 1000); ``"bytes */1000"`` → (None, None, 1000)."""
    if not value or not value.startswith("bytes "):
        return None, None, None
    span, _, total = value[6:].partition("/")
    size = int(total) if total.strip().isdigit() else None
    if span.strip() == "*":
        return None, None, size
    first, _, last = span.partition("-")
    return int(first), int(last), size


def expected_length(store: Store, req: ByteRequest, content_range: str | None,
                    content_length: str | int | None) -> int:
    """The most body bytes the answer to ``req`` may have, judged from its head alone, before
    any of the body is read or allocated: exactly the span of its ``Content-Range`` for a
    range, at most :data:`MAX_WHOLE_OBJECT` for a whole object.

    A ``Content-Range`` that is missing or is not the range asked for (another start; shorter
    without reaching the object's end; a "suffix" that does not end the object), or a
    ``Content-Length`` other than its span, raise :class:`TransientError`: a broken proxy or
    server, retried, then a clear error; never read as the object's bytes.
    """
    where = f"{store.url}/{req.key}"
    length = None
    if content_length is not None:
        try:
            length = int(content_length)
        except ValueError:
            raise TransientError(f"{where}: bad Content-Length {content_length!r}") from None
    if isinstance(req, FullRequest):
        if length is not None and length > MAX_WHOLE_OBJECT:
            raise StoreError(f"{where}: {length} bytes, more than {MAX_WHOLE_OBJECT}, the most "
                             "a whole-object read takes")
        return MAX_WHOLE_OBJECT if length is None else length
    first, last, size = parse_content_range(content_range)
    if first is None or last is None:
        if size == 0 and not length:  # a range of an empty object (S3 answers so)
            return 0
        raise TransientError(f"{where}: the server answered a range request with 206 but "
                             f"without a usable Content-Range ({content_range!r})")
    span = last - first + 1
    if isinstance(req, RangeRequest):
        reaches_end = size is not None and last == size - 1
        fits = first == req.start and 0 < span <= req.length
        if not fits or (span < req.length and not reaches_end):
            raise TransientError(f"{where}: asked for bytes {req.start}-"
                                 f"{req.start + req.length - 1}, the answer has Content-Range "
                                 f"{content_range}")
    elif not (0 < span <= req.length and (size is None or (last == size - 1 and
                                                            span == min(req.length, size)))):
        raise TransientError(f"{where}: asked for the last {req.length} bytes, the answer has "
                             f"Content-Range {content_range}")
    if length is not None and length != span:
        raise TransientError(f"{where}: Content-Length {length} does not match Content-Range "
                             f"{content_range}")
    return span


def check_range_result(store: Store, req: ByteRequest, data: bytes, content_range: str | None,
                       ) -> ByteResult:
    """Validate a ranged response body against what was asked; return it with the object size."""
    first, last, size = parse_content_range(content_range)
    if first is not None and last is not None and len(data) != last - first + 1:
        # The server promised more bytes than arrived: a dropped connection, worth a retry.
        raise TransientError(
            f"{req.key}: body has {len(data)} bytes, Content-Range {content_range}")
    if isinstance(req, RangeRequest) and len(data) != req.length:
        if size is not None and req.start + len(data) >= size:
            raise ShortReadError(
                f"{store.url}/{req.key}: asked for bytes {req.start}..{req.start + req.length - 1}"
                f", but the object has only {size} bytes",
                key=req.key, start=req.start, requested=req.length, received=len(data),
            )
        raise TransientError(f"{req.key}: asked for {req.length} bytes, got {len(data)}")
    if isinstance(req, SuffixRequest) and len(data) > req.length:
        raise TransientError(f"{req.key}: asked for the last {req.length} bytes, got {len(data)}")
    return ByteResult(data, object_size=size)


class RemoteStore(Store):
    """Base of stores reached over the network through an async fsspec file system."""

    #: at most this many requests in flight per batch (s3fs's connection pool is raised to match)
    max_concurrency = 64

    def __init__(self, url: str, options: dict | None = None, *, retry: RetryPolicy | None = None):
        super().__init__(url, options)
        self.retry = retry or RetryPolicy.from_options(self.options)

    @property
    def fs_options(self) -> dict[str, Any]:
        """The options for the fsspec file system: all but the engine's own."""
        return {k: v for k, v in self.options.items() if k not in ENGINE_OPTIONS}

    fs: Any  # the fsspec file system (untyped); its I/O loop runs every request of this store

    def run(self, coro):
        """Run ``coro`` on the file system's I/O loop from synchronous code; return its result."""
        import fsspec.asyn

        loop = getattr(self.fs, "loop", None) or fsspec.asyn.get_loop()  # a sync fs has none
        return fsspec.asyn.sync(loop, lambda: coro)

    async def _fetch_once(self, req: ByteRequest,
                          progress: Callable[[memoryview, int], None] | None = None
                          ) -> ByteResult:
        """Make the request, once. ``progress(body, available)`` as the body arrives, where the
        transport receives it into its buffer (others ignore it)."""
        raise NotImplementedError

    async def _fetch(self, req: ByteRequest, limit: asyncio.Semaphore, index: int = 0,
                     on_result: ResultCallback | None = None,
                     on_progress: ProgressCallback | None = None) -> ByteResult:
        last: BaseException | None = None
        progress = (None if on_progress is None
                    else lambda body, available: on_progress(index, body, available))
        for attempt in range(self.retry.tries):
            if attempt:
                self.stats.record_retry()
                await self.retry.sleep(attempt - 1)
            try:
                async with limit:  # no total timeout: transports fail a stalled answer
                    result = await self._fetch_once(req, progress)
                self.stats.record(len(result.data) if result.data is not None else 0)
                if on_result is not None:
                    on_result(index, result)
                return result
            except (TransientError, asyncio.TimeoutError, ConnectionError) as e:
                last = e
                self.stats.record(0)
                log.debug("transient failure reading %s/%s (try %d): %s",
                          self.url, req.key, attempt + 1, self._describe(e))
        raise RemoteReadError(
            f"could not read {self.url}/{req.key} after {self.retry.tries} tries; last failure: "
            f"{self._describe(last)}"
        ) from last

    def _describe(self, error: BaseException | None) -> str:
        if isinstance(error, asyncio.TimeoutError):
            return f"no bytes received for {self.retry.timeout:g} s"
        return str(error) or type(error).__name__

    async def _gather(self, requests: Sequence[ByteRequest],
                      on_result: ResultCallback | None = None,
                      on_progress: ProgressCallback | None = None) -> list[ByteResult]:
        limit = asyncio.Semaphore(self.max_concurrency)
        tasks = [asyncio.ensure_future(self._fetch(r, limit, i, on_result, on_progress))
                 for i, r in enumerate(requests)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # One request failed for good: the batch is lost, stop retrying the others.
            for task in tasks:
                task.cancel()
            raise

    def read_many(self, requests: Sequence[ByteRequest], *,
                  on_result: ResultCallback | None = None,
                  on_progress: ProgressCallback | None = None) -> list[ByteResult]:
        if not requests:
            return []
        return self.run(self._gather(requests, on_result, on_progress))
