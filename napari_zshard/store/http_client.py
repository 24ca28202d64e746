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
from typing import Any

import numpy as np
import yarl

from ..errors import StoreError

#: Bodies from this size on are received into an uninitialised numpy buffer and handed out as
#: a read-only memoryview of it; smaller ones become ``bytes``.
BIG_BODY = 64 * 1024
#: A response head bigger than this is refused (a server that never ends its headers).
MAX_HEAD = 64 * 1024
#: An error answer's body is read (and the connection kept) only up to this size.
MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 10
IDLE_PER_HOST = 64
_STAGING = 256 * 1024
_USER_AGENT = "napari-zshard"


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x as spoken here (a ``ConnectionError``, so the store
    retries it like a dropped connection)."""


class Headers(dict):
    """Response headers by lower-case name; a repeated header's values joined by ``", "``."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: one request at a time, its answer read into a buffer."""

    def __init__(self, key: tuple[str, str, int]):
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # has answered a request already (a reused connection)
        self._staging = memoryview(bytearray(_STAGING))
        self._waiter: asyncio.Future | None = None
        self._reset()

    # -- what a request sees ------------------------------------------------------------------
    def _reset(self) -> None:
        self._state = "idle"  # head → body | chunked | until-close → done
        self._head = bytearray()
        self._status = 0
        self._headers = Headers()
        self._keep_alive = True
        self._body: np.ndarray | bytearray | None = None
        self._view: memoryview | None = None
        self._got = 0
        self._length = 0
        self._chunk_left = -1  # chunked: bytes left in this chunk, -1: a size line is next
        self._line = bytearray()
        self._trailers = False
        self._received_any = False
        self._error: BaseException | None = None
        self._progress: Callable[[memoryview, int], None] | None = None
        self._readonly: memoryview | None = None

    async def head(self, request: bytes) -> tuple[int, Headers]:
        """Send ``request``; wait for the answer's status line and headers."""
        self._reset()
        self._state = "head"
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        await waiter
        return self._status, self._headers

    async def body(self, progress: Callable[[memoryview, int], None] | None = None
                   ) -> bytes | memoryview:
        """The answer's body, whole. ``progress(body, available)`` as a body of known length
        arrives (``body`` a read-only view of the whole buffer, its first ``available`` bytes
        final)."""
        self._progress = progress
        if self._error is not None:
            raise self._error
        if self._status in (204, 304):
            self._finish()
            return b""
        if self._state != "done":
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            self._start_body()
            await waiter
        body, readonly = self._body, self._readonly
        self._body = self._view = self._readonly = self._progress = None
        if isinstance(body, np.ndarray):
            return readonly if readonly is not None else memoryview(body).toreadonly()
        return bytes(body) if body is not None else b""

    @property
    def reusable(self) -> bool:
        return self._state == "done" and self._keep_alive and not self.closed

    # -- framing --------------------------------------------------------------------------
    def _start_body(self) -> None:
        """Choose how the body ends, from the headers; feed it what came with the head."""
        encoding = self._headers.get("transfer-encoding", "").lower()
        length = self._headers.get("content-length")
        leftover, self._head = bytes(self._head), bytearray()
        if encoding:
            if encoding.split(",")[-1].strip() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {encoding!r}")
            self._state, self._body = "chunked", bytearray()
        elif length is not None:
            try:
                n = int(length)
            except ValueError:
                raise ProtocolError(f"bad Content-Length {length!r}") from None
            if n < 0:
                raise ProtocolError(f"bad Content-Length {length!r}")
            self._length = n
            self._body = np.empty(n, np.uint8) if n >= BIG_BODY else bytearray(n)
            self._view = memoryview(self._body).cast("B")
            if self._progress is not None and n >= BIG_BODY:
                self._readonly = self._view.toreadonly()
            self._state = "body"
        else:
            self._state, self._body, self._keep_alive = "until-close", bytearray(), False
        if leftover:
            self._feed(leftover)
        elif self._state == "body" and self._length == 0:
            self._finish()
        if self.closed and self._state != "done":
            self._end_of_stream()

    def _feed(self, data) -> None:
        """Bytes of the answer beyond the head."""
        state = self._state
        if state == "body":
            n = min(len(data), self._length - self._got)
            self._view[self._got:self._got + n] = data[:n]  # type: ignore[index]
            self._got += n
            if n < len(data):
                self._fail(ProtocolError("the server sent more than its Content-Length"))
            elif self._got == self._length:
                self._finish()
            else:
                self._report()
        elif state == "chunked":
            self._feed_chunked(data)
        elif state == "until-close":
            self._body.extend(data)  # type: ignore[union-attr]

    def _feed_chunked(self, data) -> None:
        raw = bytes(data)
        view = memoryview(raw)
        pos = 0
        while pos < len(raw) and self._state == "chunked":
            if self._chunk_left > 0:  # chunk data
                n = min(self._chunk_left, len(raw) - pos)
                self._body.extend(view[pos:pos + n])  # type: ignore[union-attr]
                self._chunk_left -= n
                pos += n
                if self._chunk_left == 0:
                    self._chunk_left = -2  # the CRLF after the data
                continue
            end = raw.find(b"\n", pos)
            if end < 0:
                self._line.extend(view[pos:])
                if len(self._line) > MAX_HEAD:
                    self._fail(ProtocolError("a chunk size line without end"))
                return
            self._line.extend(view[pos:end + 1])
            pos = end + 1
            line, self._line = bytes(self._line).strip(), bytearray()
            if self._chunk_left == -2:  # the CRLF that ends a chunk's data
                if line:
                    self._fail(ProtocolError("chunk data longer than its size"))
                    return
                self._chunk_left = -1
            elif self._trailers:
                if not line:
                    if pos < len(raw):
                        self._fail(ProtocolError("bytes after the end of a chunked body"))
                        return
                    self._finish()
            else:
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self._fail(ProtocolError(f"bad chunk size line {line[:40]!r}"))
                    return
                if size < 0:
                    self._fail(ProtocolError(f"bad chunk size line {line[:40]!r}"))
                    return
                if size == 0:
                    self._trailers = True
                else:
                    self._chunk_left = size

    def _report(self) -> None:
        """Tell the reader of a big body how far it has arrived."""
        if self._readonly is not None:
            try:
                self._progress(self._readonly, self._got)  # type: ignore[misc]
            except BaseException as e:  # the reader's error ends this answer
                self._fail(e)

    def _finish(self) -> None:
        self._state = "done"
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._keep_alive = False
        self._state = "failed"
        self._error = error
        if self.transport is not None:
            self.transport.abort()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end_of_stream(self) -> None:
        """The server closed the connection: the end of a body that ends so, else an error."""
        if self._state == "until-close":
            self._finish()
        elif self._state not in ("done", "idle", "failed"):
            stale = self.used and not self._received_any
            error = (_StaleConnection() if stale else
                     ConnectionResetError("the server closed the connection mid-answer"))
            self._fail(error)

    # -- asyncio.BufferedProtocol ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "body":
            return self._view[self._got:]  # type: ignore[index]
        return self._staging

    def buffer_updated(self, nbytes: int) -> None:
        self._received_any = True
        state = self._state
        if state == "body":
            self._got += nbytes
            if self._got == self._length:
                self._finish()
            else:
                self._report()
            return
        data = self._staging[:nbytes]
        if state == "head":
            self._head.extend(data)
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    self._fail(ProtocolError("the answer's headers never end"))
                return
            try:
                self._parse_head(bytes(self._head[:end]))
            except ProtocolError as e:
                self._fail(e)
                return
            del self._head[:end + 4]
            if 100 <= self._status < 200 and self._status != 101:  # 100 Continue: skip it
                rest = bytes(self._head)
                self._head = bytearray()
                self.buffer_updated_bytes(rest)
                return
            self._state = "head-done"
            self._wake()
        elif state in ("chunked", "until-close"):
            self._feed(data)
        elif state == "head-done":  # the body's start, before body() was awaited
            self._head.extend(data)
        else:  # bytes nobody asked for
            self._fail(ProtocolError("the server sent bytes with no request pending"))

    def buffer_updated_bytes(self, data: bytes) -> None:
        """Feed bytes already received (after a 1xx answer) through the head parser."""
        self._state = "head"
        if data:
            n = len(data)
            self._staging[:n] = data
            self.buffer_updated(n)

    def eof_received(self) -> bool:
        self.closed = True
        if self._state != "head-done":  # a waiting body() sees the close when it starts
            self._end_of_stream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._state == "head-done":
            return
        if exc is not None and self._state not in ("done", "idle", "failed"):
            stale = self.used and not self._received_any
            self._fail(_StaleConnection() if stale else ConnectionResetError(str(exc)))
        else:
            self._end_of_stream()

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        self._status = int(parts[1])
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            key = name.strip().decode("latin-1").lower()
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._keep_alive = parts[0] == b"HTTP/1.1" and "close" not in connection


class _StaleConnection(ConnectionResetError):
    """A pooled connection closed by the server before it answered: try a new one."""


class Response:
    """An answer whose head was read: ``status``, ``headers``; :meth:`read` the body once."""

    def __init__(self, client: Client, conn: _Connection, status: int, headers: Headers,
                 url: yarl.URL):
        self._client, self._conn = client, conn
        self.status, self.headers, self.url = status, headers, url

    async def read(self, progress: Callable[[memoryview, int], None] | None = None
                   ) -> bytes | memoryview:
        """The body (see :meth:`_Connection.body` for ``progress``)."""
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
            self._client._release(conn, keep and conn.reusable)

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
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
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
            except _StaleConnection:
                self._release(conn, keep=False)
                continue  # closed while idle: a new connection, not a retry
            except BaseException:
                self._release(conn, keep=False)
                raise
            return Response(self, conn, status, head, url)

    async def _acquire(self, url: yarl.URL) -> _Connection:
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
            lambda: _Connection(key), key[1], key[2],
            ssl=self._ssl_context() if secure else None,
            server_hostname=key[1] if secure else None)
        return conn

    def _release(self, conn: _Connection, keep: bool) -> None:
        if keep and conn.reusable:
            conn._state = "idle"
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
