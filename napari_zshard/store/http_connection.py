"""One HTTP/1.1 connection of :mod:`.http_client`, as an :class:`asyncio.BufferedProtocol`:
it sends a request, parses the answer's head, and receives the body by the framing the head
announces (``Content-Length``, chunked, or until the server closes), a body of known length
straight into its final buffer.

Two guards a client carrying credentials over the network needs: a body is never allowed to
grow past the ``limit`` its reader gives (a ``Content-Length`` above it is refused before
anything is allocated; a chunked or close-delimited body fails as it crosses it), and an answer
that stops arriving fails after ``stall`` seconds without a byte (:class:`StalledConnection`),
however long the whole body takes on a slow link."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

#: Bodies from this size on are received into an uninitialised numpy buffer and handed out as
#: a read-only memoryview of it; smaller ones become ``bytes``.
BIG_BODY = 64 * 1024
#: A response head bigger than this is refused (a server that never ends its headers).
MAX_HEAD = 64 * 1024
_STAGING = 256 * 1024


class ProtocolError(ConnectionError):
    """The server's answer is not HTTP/1.x as spoken here (a ``ConnectionError``, so the store
    retries it like a dropped connection)."""


class BodyTooLarge(ProtocolError):
    """The answer's body is (or would be) longer than its reader allows."""


class StalledConnection(TimeoutError):
    """No byte of the answer arrived for the stall timeout."""


class Headers(dict):
    """Response headers by lower-case name; a repeated header's values joined by ``", "``."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection: one request at a time, its answer read into a buffer."""

    def __init__(self, key: tuple[str, str, int]):
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # has answered a request already (a reused connection)
        self._staging = memoryview(bytearray(_STAGING))
        self._waiter: asyncio.Future | None = None
        self._stall = 30.0
        self._last = 0.0  # loop time of the last byte received (or of the request sent)
        self._watchdog: asyncio.TimerHandle | None = None
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
        self._limit = 0

    async def head(self, request: bytes, stall: float = 30.0) -> tuple[int, Headers]:
        """Send ``request``; wait for the answer's status line and headers. The answer fails
        with :class:`StalledConnection` when no byte of it arrives for ``stall`` seconds (here
        and in :meth:`body`)."""
        self._reset()
        self._state = "head"
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        assert self.transport is not None
        self._stall, self._last = stall, loop.time()
        self._arm(loop)
        self.transport.write(request)
        await waiter
        return self._status, self._headers

    async def body(self, progress: Callable[[memoryview, int], None] | None = None, *,
                   limit: int) -> bytes | memoryview:
        """The answer's body, whole, of at most ``limit`` bytes (else :class:`BodyTooLarge`,
        before allocating when the head announced the length). ``progress(body, available)``
        as a body of known length arrives (``body`` a read-only view of the whole buffer, its
        first ``available`` bytes final)."""
        self._progress = progress
        self._limit = limit
        if self._error is not None:
            raise self._error
        if self._status in (204, 304):
            self._finish()
            return b""
        if self._state != "done":
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._start_body()
            if self._state != "done" and self._error is None:
                self._arm(loop)
            await waiter
        body, readonly = self._body, self._readonly
        self._body = self._view = self._readonly = self._progress = None
        if isinstance(body, np.ndarray):
            return readonly if readonly is not None else body.data.toreadonly()
        return bytes(body) if body is not None else b""

    @property
    def reusable(self) -> bool:
        return self._state == "done" and self._keep_alive and not self.closed

    def mark_idle(self) -> None:
        """Back in the pool: bytes arriving now are an error."""
        self._state = "idle"
        self._disarm()

    # -- the stall timeout ----------------------------------------------------------------
    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check for a stall when ``stall`` seconds passed since the last byte (one timer per
        stall period, not one per ``recv``)."""
        self._disarm()
        self._watchdog = loop.call_at(self._last + self._stall, self._check_stall)

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _check_stall(self) -> None:
        self._watchdog = None
        if self._waiter is None or self._waiter.done():
            return  # nobody waits for this answer (its head is read, its body not asked yet)
        loop = asyncio.get_running_loop()
        if loop.time() - self._last >= self._stall:
            self._fail(StalledConnection(f"no bytes received for {self._stall:g} s"))
        else:
            self._arm(loop)

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
                n = -1
            if n < 0:
                self._fail(ProtocolError(f"bad Content-Length {length!r}"))
                return
            if n > self._limit:
                self._fail(BodyTooLarge(f"Content-Length {n} is more than the {self._limit} "
                                        "bytes asked for"))
                return
            self._length = n
            if n >= BIG_BODY:
                # ndarray.data is memoryview(array); numpy's stubs declare an ndarray a buffer
                # only from Python 3.12 on (numpy#26783)
                big = np.empty(n, np.uint8)
                self._body, self._view = big, big.data.cast("B")
            else:
                small = bytearray(n)
                self._body, self._view = small, memoryview(small).cast("B")
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
            # state "body": _start_body set _view
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
            self._body.extend(data)  # type: ignore[union-attr]  # until-close: a bytearray
            self._check_limit()

    def _check_limit(self) -> None:
        if len(self._body) > self._limit:  # type: ignore[arg-type]  # set while reading a body
            self._fail(BodyTooLarge(f"the body runs past the {self._limit} bytes asked for"))

    def _feed_chunked(self, data) -> None:
        raw = bytes(data)
        view = memoryview(raw)
        pos = 0
        while pos < len(raw) and self._state == "chunked":
            if self._chunk_left > 0:  # chunk data
                n = min(self._chunk_left, len(raw) - pos)
                self._body.extend(view[pos:pos + n])  # type: ignore[union-attr]  # a bytearray
                self._chunk_left -= n
                pos += n
                self._check_limit()
                if self._state != "chunked":
                    return
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
                    size = -1
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
                # _readonly is only set together with _progress (_start_body)
                self._progress(self._readonly, self._got)  # type: ignore[misc]
            except BaseException as e:  # the reader's error ends this answer
                self._fail(e)

    def _finish(self) -> None:
        self._state = "done"
        self._disarm()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._disarm()
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
            error = (StaleConnection() if stale else
                     ConnectionResetError("the server closed the connection mid-answer"))
            self._fail(error)

    # -- asyncio.BufferedProtocol ---------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._state == "body":
            return self._view[self._got:]  # type: ignore[index]  # "body": _view is set
        return self._staging

    def buffer_updated(self, nbytes: int) -> None:
        self._received_any = True
        self._last = asyncio.get_running_loop().time()
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
            self._take_head()
        elif state in ("chunked", "until-close"):
            self._feed(data)
        elif state == "head-done":  # the body's start, before body() was awaited
            self._head.extend(data)
        else:  # bytes nobody asked for
            self._fail(ProtocolError("the server sent bytes with no request pending"))

    def _take_head(self) -> None:
        """Parse the answer's head once it is all in (skipping interim 1xx answers); what
        follows it stays in ``_head`` for :meth:`_start_body`."""
        while True:
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
            if not (100 <= self._status < 200 and self._status != 101):  # not 100 Continue
                break
        self._state = "head-done"
        self._wake()

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
            self._fail(StaleConnection() if stale else ConnectionResetError(str(exc)))
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


class StaleConnection(ConnectionResetError):
    """A pooled connection closed by the server before it answered: try a new one."""
