"""A loopback HTTP forward proxy that counts what it forwards, for tests of ``HTTP_PROXY``::

    with ForwardingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        ...
        assert proxy.count("/c/") == 4

It answers requests in absolute form (``GET http://host:port/path``) by making the same request
to that host and passing the answer back whole. Plain ``http://`` targets on 127.0.0.1 only
(no ``CONNECT`` tunnels): enough to see that a client goes through it.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["ForwardingProxy"]

# Headers about one connection, not the message (RFC 9110 §7.6.1): never forwarded.
_HOP_BY_HOP = frozenset({"connection", "proxy-connection", "keep-alive", "proxy-authorization",
                         "proxy-authenticate", "te", "trailer", "transfer-encoding", "upgrade",
                         "content-length"})


class ForwardingProxy:
    """An HTTP proxy on ``http://127.0.0.1:<free port>``; :attr:`forwarded` lists the
    absolute URLs it forwarded."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        self.url = ""
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ForwardingProxy:
        httpd = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ForwardingProxy", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> ForwardingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def count(self, contains: str | None = None) -> int:
        """Requests forwarded whose URL contains ``contains``."""
        with self._lock:
            return sum(1 for url in self.forwarded if contains is None or contains in url)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: ForwardingProxy


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30

    def log_message(self, format: str, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname != "127.0.0.1":
            self._answer(400, {}, b"this proxy forwards http://127.0.0.1 only")
            return
        owner = self.server.owner
        with owner._lock:
            owner.forwarded.append(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request("GET", path or "/", headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
            passed = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP}
            self._answer(answer.status, passed, body)
        except OSError as e:
            self._answer(502, {}, f"upstream failed: {e}".encode())
        finally:
            upstream.close()

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
