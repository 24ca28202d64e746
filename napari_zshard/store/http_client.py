"""A small HTTP/1.1 client for the GETs of :class:`~.http.HTTPStore`: the body of a response is
received by the kernel straight into the buffer the engine decodes from.

aiohttp receives a body as a list of ``bytes`` (each ``recv`` a new object) and ``read()`` joins
them: every byte is copied twice more in Python's heap. For the 71 MiB of a cold 1024² plane
over loopback that was 36-44 ms of CPU in the client (of 42-49 ms wall), as much again as the
server needed to send it; received into one preallocated buffer per response
(:class:`asyncio.BufferedProtocol`, ``recv_into``), 10-13 ms. Over HTTP, a cold plane went
from 0.99-1.19x the time of tensorstore to 0.69-0.80x.

It speaks what sharded reads need: keep-alive connections pooled per host on fsspec's I/O loop
(at most :data:`CONNECTIONS_PER_HOST` open to one host; more requests wait for one),
``Content-Length`` and chunked bodies and bodies ended by closing (each bounded by what the
request asked for), redirects (see :func:`follow_redirect`: at most :data:`MAX_REDIRECTS`,
never from https to http, and a redirect to another origin leaves every configured header
behind), TLS with the system's certificate store, and a stall timeout (no byte for N seconds)
instead of a total one. A pooled connection the server closed while idle is replaced once,
silently, before any answer was read from it (every request here is an idempotent GET). Stores
whose options need more (aiohttp client options, authentication objects) and URLs that go
through a proxy (``HTTP(S)_PROXY``) keep using aiohttp.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping

import yarl

from ..errors import StoreError
from .http_connection import Connection, Headers, StaleConnection

#: An error answer's body is read (and the connection kept) only up to this size.
MAX_ERROR_BODY = 64 * 1024
#: Redirects followed for one request (aiohttp's default too); more is an error.
MAX_REDIRECTS = 10
#: Connections open to one (scheme, host, port) at once, in use or idle: one batch's requests
#: (``RemoteStore.max_concurrency``) all in flight; read-ahead batches beside it wait.
CONNECTIONS_PER_HOST = 64
_USER_AGENT = "napari-zshard"
_REDIRECTS = (301, 302, 303, 307, 308)


class RedirectError(StoreError):
    """A redirect this client will not follow (a downgrade, a loop, not HTTP)."""


def follow_redirect(url: yarl.URL, location: str, configured: Mapping[str, str]
                    ) -> tuple[yarl.URL, Mapping[str, str]]:
    """Where a redirect from ``url`` to ``location`` leads, and the configured headers that
    may go along: all of them to the same origin, none to another one (scheme, host or port
    differ: the whole ``headers`` option is a secret, not only ``Authorization``). From https
    to http is refused: the request and its answer would cross the network in clear text."""
    target = url.join(yarl.URL(location))
    if target.scheme not in ("http", "https"):
        raise RedirectError(f"{url} redirects to a {target.scheme}: URL, not HTTP(S)")
    if url.scheme == "https" and target.scheme == "http":
        raise RedirectError(f"{url} redirects to plain http://{target.host}:{target.port}: "
                            "refusing to downgrade from https to http")
    if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
        configured = {}
    return target, configured


class Response:
    """An answer whose head was read: ``status``, ``headers``; :meth:`read` the body once."""

    def __init__(self, client: Client, conn: Connection, status: int, headers: Headers,
                 url: yarl.URL):
        self._client = client
        self._conn: Connection | None = conn  # None once the body was read or dropped
        self.status, self.headers, self.url = status, headers, url

    async def read(self, progress: Callable[[memoryview, int], None] | None = None, *,
                   limit: int) -> bytes | memoryview:
        """The body, at most ``limit`` bytes (see :meth:`Connection.body`)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self.url}: the body of this answer was already read")
        try:
            body = await conn.body(progress, limit=limit)
        except BaseException:
            self._release(keep=False)
            raise
        self._release(keep=True)
        return body

    async def discard(self) -> None:
        """Drop the body: read it when small (the connection is then re-used), else close."""
        length = self.headers.get("content-length")
        small = length is not None and length.isdigit() and int(length) <= MAX_ERROR_BODY
        if small and not self.headers.get("transfer-encoding"):
            await self.read(limit=MAX_ERROR_BODY)
        else:
            self._release(keep=False)

    def _release(self, keep: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn, keep)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, kind, error, traceback) -> None:
        if self._conn is None:
            return
        if kind is None:  # answered without its body (an error status): keep the connection
            await self.discard()
        else:
            self._release(keep=False)


class _Host:
    """The connections to one (scheme, host, port): idle ones, how many are open, who waits."""

    def __init__(self) -> None:
        self.idle: list[Connection] = []
        self.open = 0
        self.waiters: list[asyncio.Future] = []

    def wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


class Client:
    """Pooled keep-alive connections per (scheme, host, port), on one asyncio loop."""

    def __init__(self, *, connections_per_host: int = CONNECTIONS_PER_HOST) -> None:
        self.connections_per_host = connections_per_host
        self._hosts: dict[tuple[str, str, int], _Host] = {}
        self._ssl: ssl.SSLContext | None = None

    async def get(self, url: yarl.URL, headers: Mapping[str, str], *,
                  request_headers: Mapping[str, str] | None = None,
                  stall: float = 30.0) -> Response:
        """GET ``url``, following redirects (:func:`follow_redirect`); the answer with its head
        read. ``headers`` are the configured ones (left behind on another origin),
        ``request_headers`` this request's own (``Range``: they go along everywhere).
        ``stall``: seconds without a byte (connecting, or of the answer) before giving up."""
        extra = dict(request_headers or {})
        configured: Mapping[str, str] = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._get_once(url, {**configured, **extra}, stall)
            location = response.headers.get("location")
            if response.status not in _REDIRECTS or not location:
                return response
            await response.discard()
            url, configured = follow_redirect(url, location, configured)
        raise RedirectError(f"{url}: more than {MAX_REDIRECTS} redirects (a redirect loop?)")

    async def _get_once(self, url: yarl.URL, headers: Mapping[str, str], stall: float
                        ) -> Response:
        request = _request_bytes(url, headers)
        while True:
            conn = await self._acquire(url, stall)
            try:
                status, head = await conn.head(request, stall)
            except StaleConnection:
                self._release(conn, keep=False)
                continue  # closed while idle: a new connection, not a retry
            except BaseException:
                self._release(conn, keep=False)
                raise
            return Response(self, conn, status, head, url)

    async def _acquire(self, url: yarl.URL, stall: float) -> Connection:
        key = (url.scheme, url.host or "", url.port or (443 if url.scheme == "https" else 80))
        host = self._hosts.setdefault(key, _Host())
        loop = asyncio.get_running_loop()
        while True:
            while host.idle:
                conn = host.idle.pop()
                if not conn.closed and conn.transport is not None and \
                        not conn.transport.is_closing():
                    conn.used = True
                    return conn
                host.open -= 1  # closed while idle
            if host.open < self.connections_per_host:
                break
            waiter = loop.create_future()  # a connection is released or closed: look again
            host.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    host.wake_one()  # pass the turn on
                raise
        host.open += 1
        secure = url.scheme == "https"
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: Connection(key), key[1], key[2],
                ssl=self._ssl_context() if secure else None,
                server_hostname=key[1] if secure else None), stall)
        except BaseException:
            host.open -= 1
            host.wake_one()
            raise
        return conn

    def _release(self, conn: Connection, keep: bool) -> None:
        host = self._hosts.setdefault(conn.key, _Host())
        if keep and conn.reusable:
            conn.mark_idle()
            host.idle.append(conn)
        else:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.abort()
            host.open -= 1
        host.wake_one()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


def _request_bytes(url: yarl.URL, headers: Mapping[str, str]) -> bytes:
    target = url.raw_path_qs or "/"
    host = url.raw_host or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if url.port is not None and not url.is_default_port():
        host = f"{host}:{url.port}"
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", f"User-Agent: {_USER_AGENT}",
             "Accept-Encoding: identity"]
    for name, value in headers.items():
        value = str(value)
        if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
            raise StoreError(f"HTTP header {name!r}: a line break in it, or a colon in its "
                             "name; check the headers configured for this URL prefix")
        if name.lower() in ("host", "user-agent", "accept-encoding", "content-length",
                            "transfer-encoding", "connection"):
            lines = [line for line in lines if not line.lower().startswith(name.lower() + ":")]
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_clients: dict[tuple[int, int], Client] = {}


def client_for_loop(loop: asyncio.AbstractEventLoop) -> Client:
    """The client (connection pools) of ``loop`` in this process."""
    key = (os.getpid(), id(loop))
    found = _clients.get(key)
    if found is None:
        found = _clients[key] = Client()
    return found


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clients.clear)
