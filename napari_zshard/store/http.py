"""HTTP(S) store: ranged GETs through the engine's own HTTP/1.1 client (:mod:`.http_client`),
or through the aiohttp session of fsspec's HTTP file system when the store's options ask for
what only aiohttp does (client options, authentication objects), when the URL goes through a
proxy (``HTTP_PROXY``/``HTTPS_PROXY``, unless ``NO_PROXY`` exempts its host: aiohttp with
``trust_env``), or when ``NAPARI_ZSHARD_HTTP_CLIENT=aiohttp`` is set.

Either way the same rules hold: redirects by :func:`.http_client.follow_redirect`, a body never
longer than the request asked for (:func:`.remote.expected_length`, checked on the head before
anything is allocated), and the retry policy's stall timeout."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import yarl

from ..errors import RangeNotSupportedError, RemoteReadError, ShortReadError, StoreError
from ..keys import validate_key
from .base import public_options
from .http_client import _REDIRECTS, MAX_REDIRECTS, RedirectError, client_for_loop, follow_redirect
from .http_connection import BodyTooLarge
from .remote import (
    MAX_WHOLE_OBJECT,
    RemoteStore,
    check_range_result,
    expected_length,
    parse_content_range,
)
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


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``HTTPS_PROXY``; None when
    there is none or ``NO_PROXY`` exempts the host), as aiohttp's ``trust_env`` picks it."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


async def _read_bounded(response: Any, limit: int) -> bytes:
    """An aiohttp answer's body, failing as soon as it runs past ``limit`` bytes."""
    chunks, total = [], 0
    async for chunk in response.content.iter_any():
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge(f"the body runs past the {limit} bytes asked for")
        chunks.append(chunk)
    return b"".join(chunks)


class _AiohttpAnswer:
    """An aiohttp response with :class:`.http_client.Response`'s interface."""

    def __init__(self, response: Any):
        self._response = response
        self.status, self.headers = response.status, response.headers

    async def read(self, progress: Any = None, *, limit: int) -> bytes:
        return await _read_bounded(self._response, limit)

    async def __aenter__(self) -> _AiohttpAnswer:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._response.release()


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

        #: the proxy this store's requests go through (from the environment), if any
        self.proxy = proxy_for(url)
        fs_options = self.fs_options
        if self.proxy is not None:
            client_kwargs = dict(fs_options.get("client_kwargs") or {})
            client_kwargs.setdefault("trust_env", True)
            fs_options = {**fs_options, "client_kwargs": client_kwargs}
        self.fs = fsspec.filesystem("https" if url.startswith("https") else "http",
                                    asynchronous=False, **fs_options)
        from fsspec.implementations.http import get_client

        self._own_client = (set(self.fs.kwargs) <= {"headers"} and not self.fs.client_kwargs
                            and self.fs.get_client is get_client and self.proxy is None
                            and os.environ.get("NAPARI_ZSHARD_HTTP_CLIENT") != "aiohttp")

    async def _get(self, target: yarl.URL, headers: Mapping[str, str], rng: str | None):
        """The answer to a GET of ``target``, as an async context manager (status, headers,
        ``read(progress, limit=)``) from whichever client this store uses. ``headers``: the
        configured ones; ``rng``: the ``Range`` header."""
        request_headers = {"Range": rng} if rng else {}
        stall = self.retry.timeout
        if self._own_client:
            return await client_for_loop(asyncio.get_running_loop()).get(
                target, headers, request_headers=request_headers, stall=stall)
        session = await self.fs.set_session()
        kwargs = {k: v for k, v in self.fs.kwargs.items() if k != "headers"}
        kwargs["allow_redirects"] = False  # followed below, by the same rules as our client
        kwargs["timeout"] = aiohttp.ClientTimeout(total=None, sock_connect=stall,
                                                  sock_read=stall)
        for _ in range(MAX_REDIRECTS + 1):
            response = await session.get(target, headers={**headers, **request_headers},
                                         **kwargs)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return _AiohttpAnswer(response)
            response.release()
            origin = (target.scheme, target.host, target.port)
            target, headers = follow_redirect(target, location, headers)
            if (target.scheme, target.host, target.port) != origin:
                kwargs = public_options(kwargs)  # ``auth`` and the like stay behind too
        raise RedirectError(f"{target}: more than {MAX_REDIRECTS} redirects (a redirect loop?)")

    async def _fetch_once(self, req: ByteRequest, progress=None) -> ByteResult:
        headers = dict(self.fs.kwargs.get("headers") or {})
        rng = range_header(req)
        url = f"{self.url}/{validate_key(req.key)}"
        # Percent-encode the key's segments: a key holding '#', '?' or '%' must name that very
        # object, not a fragment, a query or another (decoded) name.
        target = yarl.URL(self.url).joinpath(*req.key.split("/"))
        try:
            async with await self._get(target, headers, rng) as r:
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
                # how long the body may be, from the head, before anything is allocated
                limit = expected_length(self, req, r.headers.get("Content-Range"),
                                        r.headers.get("Content-Length"))
                # the front of the body is handed out early only when it is the range
                exact = isinstance(req, RangeRequest) and limit == req.length
                try:
                    data = await r.read(progress if exact else None, limit=limit)
                except BodyTooLarge as e:
                    if isinstance(req, FullRequest):  # not worth retrying: it would again
                        raise StoreError(f"{url}: larger than {MAX_WHOLE_OBJECT} bytes, the "
                                         "most a whole-object read takes") from e
                    raise
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
            if isinstance(e, TimeoutError):  # ours (StalledConnection) or aiohttp's
                raise TransientError(f"{url}: no bytes received for {self.retry.timeout:g} s "
                                     f"({type(e).__name__})") from e
            raise TransientError(f"{url}: {type(e).__name__}: {e}") from e

    def write(self, key: str, data: bytes | bytearray) -> None:
        raise StoreError(f"{self.url}: plain HTTP stores are read-only")

    def _describe(self, error: BaseException | None) -> str:
        text = super()._describe(error)
        return f"{text} (through the proxy {self.proxy})" if self.proxy else text

    def delete(self, key: str) -> None:
        raise StoreError(f"{self.url}: plain HTTP stores are read-only")

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        raise StoreError(f"{self.url}: an HTTP server cannot be listed")
