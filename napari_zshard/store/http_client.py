"""A small HTTP/1.1 client for the GETs of :class:`~.http.HTTPStore`: the body of a response is
received by the kernel straight into the buffer the engine decodes from.

aiohttp receives a body as a list of ``bytes`` (each ``recv`` a new object) and ``read()`` joins
them: every byte is copied twice more in Python's heap. For the 71 MiB of a cold 1024² plane
over loopback that was 36-44 ms of CPU in the client (of 42-49 ms wall), as much again as the
server needed to send it; received into one preallocated buffer per response
(:class:`asyncio.BufferedProtocol`, ``recv_into``), 10-13 ms. Over HTTP, a cold plane went
from 0.99-1.19x the time of tensorstore to 0.69-0.80x.

It speaks what sharded reads need: keep-alive connections pooled per host on fsspec's I/O loop,
``Content-Length`` and chunked bodies and bodies ended by closing, redirects (a redirect to
another host drops ``Authorization``), TLS with the system's certificate store. A pooled
connection the server closed while idle is replaced once, silently, before any answer was read
from it (every request here is an idempotent GET). Stores whose options need more (aiohttp
client options, authentication objects, proxies) keep using aiohttp.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Mapping

import yarl

from ..errors import StoreError
from .http_connection import Connection, Headers, ProtocolError, StaleConnection

#: An error answer's body is read (and the connection kept) only up to this size.
MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 10
IDLE_PER_HOST = 64
_USER_AGENT = "napari-zshard"


class Response:
    """An answer whose head was read: ``status``, ``headers``; :meth:`read` the body once."""

    def __init__(self, client: Client, conn: Connection, status: int, headers: Headers,
                 url: yarl.URL):
        self._client, self._conn = client, conn
        self.status, self.headers, self.url = status, headers, url

    async def read(self, progress: Callable[[memoryview, int], None] | None = None
                   ) -> bytes | memoryview:
        """The body (see :meth:`Connection.body` for ``progress``)."""
        conn = self._conn
        try:
            body = await conn.body(progress)
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
            await self.read()
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


class Client:
    """Pooled keep-alive connections per (scheme, host, port), on one asyncio loop."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def get(self, url: yarl.URL, headers: Mapping[str, str]) -> Response:
        """GET ``url`` (following redirects); the answer with its head read."""
        send = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._get_once(url, send)
            location = response.headers.get("location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            await response.discard()
            target = url.join(yarl.URL(location))
            if target.scheme not in ("http", "https"):
                raise ProtocolError(f"{url} redirects to {target.scheme}:, not HTTP")
            if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
                send = {k: v for k, v in send.items() if k.lower() != "authorization"}
            url = target
        raise ProtocolError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _get_once(self, url: yarl.URL, headers: Mapping[str, str]) -> Response:
        request = _request_bytes(url, headers)
        while True:
            conn = await self._acquire(url)
            try:
                status, head = await conn.head(request)
            except StaleConnection:
                self._release(conn, keep=False)
                continue  # closed while idle: a new connection, not a retry
            except BaseException:
                self._release(conn, keep=False)
                raise
            return Response(self, conn, status, head, url)

    async def _acquire(self, url: yarl.URL) -> Connection:
        key = (url.scheme, url.host or "", url.port or (443 if url.scheme == "https" else 80))
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and \
                    not conn.transport.is_closing():
                conn.used = True
                return conn
        loop = asyncio.get_running_loop()
        secure = url.scheme == "https"
        _, conn = await loop.create_connection(
            lambda: Connection(key), key[1], key[2],
            ssl=self._ssl_context() if secure else None,
            server_hostname=key[1] if secure else None)
        return conn

    def _release(self, conn: Connection, keep: bool) -> None:
        if keep and conn.reusable:
            conn.mark_idle()
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.closed = True
        if conn.transport is not None:
            conn.transport.abort()

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
