"""A loopback HTTP server with byte-range support that counts requests and injects faults.

It stands in for an object store or a static web server in tests and benchmarks::

    with RangeHTTPServer(tmp_path, latency=0.03) as server:
        arr = open_array(f"{server.url}/volume.zarr")
        ...
        assert server.count("/c/") == 4          # data requests the read made
        server.inject("503", times=2)             # the next two requests fail

Only ``GET`` and ``HEAD`` of one byte range are implemented (``bytes=a-b``, ``bytes=a-``,
``bytes=-n``), which is all a sharded-Zarr reader sends. It binds to 127.0.0.1 only and never
serves anything outside ``root``.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FAULTS", "RangeHTTPServer", "RequestRecord"]

#: faults :meth:`RangeHTTPServer.inject` understands
FAULTS = frozenset({"500", "502", "503", "504", "408", "429", "drop", "truncate", "hang",
                    "chunked", "close-delimited", "redirect", "overlong", "slow-body",
                    "throttle", "stall-body", "huge-length", "short-length", "short-range",
                    "no-content-range", "flood", "flood-close"})

#: what a ``"flood"`` answer sends at most (in 64 KiB chunks) unless the client hangs up
FLOOD_BYTES = 256 * 2**20

_HANG_SECONDS = 60.0
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (or deliberately did not).

    ``status`` is 0 for a dropped or hung connection; ``nbytes`` counts body bytes sent;
    ``authorized``: the request carried an ``Authorization`` header; ``header_names``: the
    lower-case names of every header it carried.
    """

    method: str
    path: str
    range_header: str | None
    status: int
    nbytes: int
    authorized: bool = False
    header_names: frozenset[str] = frozenset()


@dataclass
class _Fault:
    kind: str
    remaining: int
    contains: str | None


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive ``(first, last)`` byte positions a ``Range`` header selects.

    None means "ignore the header and send the whole file" (a syntax we do not implement, as
    RFC 9110 allows); :class:`_Unsatisfiable` means answer 416.
    """
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else int(last)
    if end < start:
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(end, size - 1)


class RangeHTTPServer:
    """Serve the files below ``root`` on ``http://127.0.0.1:<free port>``.

    Parameters
    ----------
    root
        Folder to serve.
    latency
        Seconds slept before each response, like an object store's time to first byte.
        Can be changed while the server runs.
    tls
        A server-side SSL context: serve ``https://`` instead.
    """

    def __init__(self, root: str | Path, *, latency: float = 0.0,
                 tls: ssl.SSLContext | None = None):
        self.root = Path(root).resolve()
        self.tls = tls
        self.latency = latency
        self.ignore_range = False
        #: where a ``"redirect"`` fault sends the client (default: this server, same path)
        self.redirect_to: str | None = None
        #: connections accepted so far (a client that pools connections opens few)
        self.connections_opened = 0
        #: the most connections that were open at once
        self.peak_connections = 0
        #: bytes per second of a ``"throttle"`` answer's body
        self.throttle_rate = 256 * 1024
        #: body bytes ``"flood"`` answers got out before the client hung up
        self.flood_sent = 0
        self.log: list[RequestRecord] = []
        self.url = ""
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._released = threading.Event()  # ends the hangs in progress (release_hangs)
        self._connections: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> RangeHTTPServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        if self.tls is not None:  # each connection's handshake happens when it is accepted
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self._stopping.clear()
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="RangeHTTPServer", daemon=True)
        self._thread.start()
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (a dead server, not an idle one)."""
        if self._httpd is None:
            return
        self._stopping.set()  # wakes "hang" and latency sleeps
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def close_connections(self) -> None:
        """Close every open connection from the server's side, as a server does with idle
        keep-alive connections after its timeout."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request log -----------------------------------------------------------------------
    def count(self, contains: str | None = None, *, method: str = "GET") -> int:
        """Number of logged ``method`` requests whose path contains ``contains``."""
        with self._lock:
            return sum(1 for r in self.log
                       if r.method == method and (contains is None or contains in r.path))

    def bytes_sent(self, contains: str | None = None) -> int:
        """Body bytes sent for logged GET requests whose path contains ``contains``."""
        with self._lock:
            return sum(r.nbytes for r in self.log
                       if r.method == "GET" and (contains is None or contains in r.path))

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self.log.append(record)

    # -- faults ----------------------------------------------------------------------------
    def inject(self, fault: str, *, times: int = 1, contains: str | None = None) -> None:
        """Answer the next ``times`` requests (whose path contains ``contains``) with ``fault``.

        ``fault`` is an HTTP status (``"500"``, ``"502"``, ``"503"``, ``"504"``, ``"408"``,
        ``"429"``), ``"drop"`` (close without answering), ``"truncate"`` (correct headers, half
        the body, close) or ``"hang"`` (answer nothing for 60 s, to test timeouts). Answers that
        are correct but framed otherwise: ``"chunked"`` (the body in chunked transfer encoding),
        ``"close-delimited"`` (no length: the body ends when the connection closes),
        ``"redirect"`` (302 to :attr:`redirect_to`, or to the same URL). ``"overlong"``: ten
        bytes more than the ``Content-Length`` says. ``"slow-body"``: the first half of the body,
        then the rest 0.3 s later. ``"throttle"``: the body at :attr:`throttle_rate` bytes/s.
        ``"stall-body"``: half the body, then nothing (as ``"hang"``).

        Answers that contradict the request: ``"huge-length"`` (a ``Content-Length`` a TiB
        longer than the body), ``"short-length"`` (half the body, and a ``Content-Length``
        saying so, under the full ``Content-Range``), ``"short-range"`` (a self-consistent 206
        of the first half of the range asked for), ``"no-content-range"`` (206 without
        ``Content-Range``), ``"flood"`` (a chunked 206 that goes on sending, up to
        :data:`FLOOD_BYTES`; :attr:`flood_sent` says how much got out), ``"flood-close"`` (the
        same without length nor chunks: ended by closing).
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; choose one of {sorted(FAULTS)}")
        with self._lock:
            self._faults.append(_Fault(fault, times, contains))

    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.contains is None or fault.contains in path):
                    fault.remaining -= 1
                    return fault.kind
            return None

    def release_hangs(self) -> None:
        """End the ``"hang"`` faults in progress now: their connections close unanswered."""
        released, self._released = self._released, threading.Event()
        released.set()

    def _hang(self) -> None:
        released, deadline = self._released, time.monotonic() + _HANG_SECONDS
        while not (released.is_set() or self._stopping.is_set()) and time.monotonic() < deadline:
            released.wait(0.05)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of concurrent range requests must not overflow the backlog
    owner: RangeHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections to object stores
    # Headers and body go out in two writes: with Nagle's algorithm on, the body of a small
    # response waits for the client's delayed ACK of the headers (40 ms on Linux) - a stall no
    # object store has, which made every small request (a shard index) take ~44 ms.
    disable_nagle_algorithm = True
    server: _Server
    timeout = 30

    def setup(self) -> None:
        super().setup()
        with self.server.owner._lock:
            owner = self.server.owner
            owner._connections.add(self.connection)
            owner.connections_opened += 1
            owner.peak_connections = max(owner.peak_connections, len(owner._connections))

    def finish(self) -> None:
        with self.server.owner._lock:
            self.server.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    # ---------------------------------------------------------------------------------------
    def _serve(self, *, body: bool) -> None:
        owner = self.server.owner
        path = unquote(urlsplit(self.path).path)
        range_header = self.headers.get("Range")

        def record(status: int, nbytes: int = 0) -> None:
            owner._record(RequestRecord(self.command, path, range_header, status, nbytes,
                                        "Authorization" in self.headers,
                                        frozenset(k.lower() for k in self.headers)))

        # Every request is logged before its answer leaves, so a client that has its answer
        # can count it.
        owner._sleep(owner.latency)
        fault = owner._take_fault(path)
        if fault in ("drop", "hang"):
            record(0)
            if fault == "hang":
                owner._hang()
            self.close_connection = True
            return
        if fault == "redirect":
            record(302)
            base = owner.redirect_to or owner.url
            self._send_empty(302, {"Location": base + self.path})
            return
        if fault is not None and fault.isdigit():
            record(int(fault))
            self._send_empty(int(fault))
            return

        file = self._resolve(path)
        if file is None or not file.is_file():
            status = 403 if file is None else 404
            record(status)
            self._send_empty(status)
            return
        stat = file.stat()
        size = stat.st_size
        wanted = None if owner.ignore_range else range_header  # None or "": the whole file
        try:
            span = _parse_range(wanted, size) if wanted else None
        except _Unsatisfiable:
            record(416)
            self._send_empty(416, {"Content-Range": f"bytes */{size}"})
            return
        first, last = span if span is not None else (0, size - 1)
        if fault == "short-range" and span is not None and last > first:
            last = first + (last - first + 1) // 2 - 1  # a consistent answer, but short
        length = last - first + 1
        status = 206 if span is not None else 200
        data = b""
        if body:
            with open(file, "rb") as f:
                f.seek(first)
                data = f.read(length)
            if fault in ("truncate", "short-length"):
                data = data[: len(data) // 2]
                self.close_connection = True
        record(status, len(data))

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if fault in ("chunked", "flood"):
            self.send_header("Transfer-Encoding", "chunked")
        elif fault in ("close-delimited", "flood-close"):
            self.close_connection = True
        elif fault == "huge-length":
            self.send_header("Content-Length", str(length + 2**40))
            self.close_connection = True
        elif fault == "short-length":
            self.send_header("Content-Length", str(len(data)))
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "none" if owner.ignore_range else "bytes")
        self.send_header("ETag", f'"{size:x}-{stat.st_mtime_ns:x}"')
        if span is not None and fault != "no-content-range":
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        if fault in ("truncate", "close-delimited", "flood-close"):
            self.send_header("Connection", "close")
        self.end_headers()
        if fault == "chunked":  # 777-byte chunks, with an extension and a trailer
            pieces = [data[i:i + 777] for i in range(0, len(data), 777)]
            out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
            self.wfile.write(out + b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if fault in ("flood", "flood-close"):
            self._flood(chunked=fault == "flood")
            return
        if fault == "overlong":
            data += b"0123456789"
            self.close_connection = True
        if fault == "slow-body":
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            owner._sleep(0.3)
            data = data[len(data) // 2:]
        if fault == "throttle":
            self._throttled(data)
            return
        if fault == "stall-body":
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            owner._hang()
            self.close_connection = True
            return
        self.wfile.write(data)

    def _throttled(self, data: bytes) -> None:
        """Send ``data`` at the owner's ``throttle_rate``, in pieces every 1/16 s."""
        owner = self.server.owner
        piece = max(1, owner.throttle_rate // 16)
        started = time.monotonic()
        for i, pos in enumerate(range(0, len(data), piece)):
            owner._sleep(started + i / 16 - time.monotonic())
            self.wfile.write(data[pos:pos + piece])
            self.wfile.flush()

    def _flood(self, *, chunked: bool) -> None:
        owner = self.server.owner
        piece = b"\xab" * 65536
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
        try:
            for _ in range(FLOOD_BYTES // len(piece)):
                self.wfile.write(chunk)
                with owner._lock:
                    owner.flood_sent += len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client hung up
            self.close_connection = True

    def _resolve(self, path: str) -> Path | None:
        """The file ``path`` names below the root, or None when it would escape the root."""
        if "\x00" in path:
            return None
        root = self.server.owner.root
        candidate = (root / path.lstrip("/")).resolve()
        return candidate if candidate.is_relative_to(root) else None

    def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
