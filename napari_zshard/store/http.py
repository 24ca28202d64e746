"""HTTP(S) store: ranged GETs through the engine's own HTTP/1.1 client (:mod:`.http_client`),
or through the aiohttp session of fsspec's HTTP file system when the store's options ask for
what only aiohttp does (client options, authentication objects) or
``NAPARI_ZSHARD_HTTP_CLIENT=aiohttp`` is set."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import yarl

from ..errors import RangeNotSupportedError, RemoteReadError, ShortReadError, StoreError
from .http_client import client_for_loop
from .keys import validate_key
from .remote import RemoteStore, check_range_result, parse_content_range
from .requests import ByteRequest, ByteResult, FullRequest, RangeRequest, SuffixRequest
from .retry import TRANSIENT_HTTP_STATUS, TransientError


def range_header(req: ByteRequest) -> str | None:
    if isinstance(req, RangeRequest):
        return f"bytes={req.start}-{req.start + req.length - 1}"
    if isinstance(req, SuffixRequest):
        return f"bytes=-{req.length}"
    return None


def split_userinfo(url: str) -> tuple[str, str | None]:
    """``https://user:pw@host/path`` → (``https://host/path``, its ``Authorization`` header).

    The store's address (its repr, errors, pickles, dask graphs) never carries the password.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


class HTTPStore(RemoteStore):
    """A URL prefix served over HTTP(S). Read-only unless the server accepts PUT."""

    read_only = True

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        url, authorization = split_userinfo(url)
        if authorization is not None:  # explicit headers win over the URL's user:password
            options = dict(options or {})
            options["headers"] = {"Authorization": authorization, **(options.get("headers") or {})}
        super().__init__(url.rstrip("/"), options)
        import fsspec

        self.fs = fsspec.filesystem("https" if url.startswith("https") else "http",
                                    asynchronous=False, **self.options)
        from fsspec.implementations.http import get_client

        self._own_client = (set(self.fs.kwargs) <= {"headers"} and not self.fs.client_kwargs
                            and self.fs.get_client is get_client
                            and os.environ.get("NAPARI_ZSHARD_HTTP_CLIENT") != "aiohttp")

    async def _get(self, target: yarl.URL, headers: dict[str, str]):
        """The answer to a GET of ``target``, as an async context manager (status, headers,
        ``read()``) from whichever client this store uses."""
        if self._own_client:
            return await client_for_loop(asyncio.get_running_loop()).get(target, headers)
        session = await self.fs.set_session()
        kwargs = {k: v for k, v in self.fs.kwargs.items() if k != "headers"}
        return session.get(target, headers=headers, **kwargs)

    async def _fetch_once(self, req: ByteRequest, progress=None) -> ByteResult:
        headers = dict(self.fs.kwargs.get("headers") or {})
        rng = range_header(req)
        if rng:
            headers["Range"] = rng
        url = f"{self.url}/{validate_key(req.key)}"
        # Percent-encode the key's segments: a key holding '#', '?' or '%' must name that very
        # object, not a fragment, a query or another (decoded) name.
        target = yarl.URL(self.url).joinpath(*req.key.split("/"))
        try:
            async with await self._get(target, headers) as r:
                if r.status in (404, 410):
                    return ByteResult(None)
                if r.status in TRANSIENT_HTTP_STATUS:
                    raise TransientError(f"HTTP {r.status} for {url}")
                if r.status == 416:
                    _, _, size = parse_content_range(r.headers.get("Content-Range"))
                    if isinstance(req, SuffixRequest) and size == 0:
                        # The last n bytes of an empty object: nothing (as a local file gives).
                        return ByteResult(b"", object_size=0, etag=r.headers.get("ETag"))
                    raise ShortReadError(
                        f"{url}: range {rng} starts past the end of the object "
                        f"({r.headers.get('Content-Range', 'size unknown')})",
                        key=req.key, start=getattr(req, "start", 0),
                        requested=getattr(req, "length", 0), received=0,
                    )
                if r.status in (401, 403):
                    raise StoreError(
                        f"HTTP {r.status} for {url}: access denied. Check the credentials "
                        "configured for this URL prefix (see the README, 'Storage options')."
                    )
                if r.status >= 400:
                    raise RemoteReadError(f"HTTP {r.status} for {url}")
                if rng and r.status != 206:
                    raise RangeNotSupportedError(
                        f"{url}: the server answered a byte-range request with HTTP {r.status} "
                        "instead of 206 Partial Content. Sharded Zarr needs a server that "
                        "supports Range requests."
                    )
                if not self._own_client:
                    data = await r.read()
                else:  # the front of the body is handed out early only when it is the range
                    first, last, _ = parse_content_range(r.headers.get("Content-Range"))
                    exact = (isinstance(req, RangeRequest) and first == req.start
                             and last is not None and last - first + 1 == req.length)
                    data = await r.read(progress if exact else None)
                if isinstance(req, FullRequest):
                    data = bytes(data)  # metadata, parsed as JSON: bytes, not a buffer view
                    length = r.headers.get("Content-Length")
                    if length is not None and int(length) != len(data):
                        raise TransientError(f"{url}: body {len(data)} of {length} bytes")
                    return ByteResult(data, object_size=len(data), etag=r.headers.get("ETag"))
                result = check_range_result(self, req, data, r.headers.get("Content-Range"))
                return ByteResult(result.data, result.object_size, r.headers.get("ETag"))
        except ssl.SSLCertVerificationError as e:
            raise StoreError(f"{url}: the server's TLS certificate is not trusted "
                             f"({e.verify_message or e}); if it is a private CA's, point "
                             "SSL_CERT_FILE at its certificate") from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as e:
            raise TransientError(f"{url}: {type(e).__name__}: {e}") from e

    def write(self, key: str, data: bytes) -> None:
        raise StoreError(f"{self.url}: plain HTTP stores are read-only")

    def delete(self, key: str) -> None:
        raise StoreError(f"{self.url}: plain HTTP stores are read-only")

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        raise StoreError(f"{self.url}: an HTTP server cannot be listed")
