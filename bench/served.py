"""The project's ``RangeHTTPServer``, run in a child process so it does not share the GIL.

An in-process server would compete with the reader being measured for the GIL (tensorstore
releases it for all of its work, the Python readers do not), which would skew the comparison;
an object store is another machine. The parent talks to the child through a pipe: set the
latency, reset the request log, summarise it.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LogSummary:
    """What the server answered since the last reset."""

    requests: int  # every request, any method
    gets: int
    heads: int
    bytes: int  # body bytes sent
    statuses: dict[int, int]


def _summarise(log) -> LogSummary:
    methods = Counter(r.method for r in log)
    return LogSummary(requests=len(log), gets=methods.get("GET", 0), heads=methods.get("HEAD", 0),
                      bytes=sum(r.nbytes for r in log),
                      statuses=dict(Counter(r.status for r in log)))


def _serve(root: str, latency: float, conn) -> None:
    from napari_zshard.testing.http_server import RangeHTTPServer

    with RangeHTTPServer(root, latency=latency) as server:
        conn.send(server.url)
        while True:
            command, arg = conn.recv()
            if command == "latency":
                server.latency = float(arg)
                conn.send(None)
            elif command == "reset":
                server.reset_log()
                conn.send(None)
            elif command == "summary":
                # A handler appends its record just after writing the body: let the last ones land
                # (arg False: what was answered so far, while background reads may still run).
                n = -1
                while arg is not False and n != len(server.log):
                    n = len(server.log)
                    time.sleep(0.01)
                conn.send(_summarise(list(server.log)))
            elif command == "stop":
                conn.send(None)
                return


class ServedDirectory:
    """``RangeHTTPServer(root)`` in a child process: ``url``, ``latency``, ``reset()``,
    ``summary()``."""

    def __init__(self, root: Path, latency: float = 0.0):
        ctx = mp.get_context("spawn")  # never fork a process that already runs threads
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(str(root), latency, child), daemon=True,
                                    name="bench-http-server")
        self._process.start()
        self.url: str = self._conn.recv()
        self._latency = latency

    def _call(self, command: str, arg=None):
        self._conn.send((command, arg))
        return self._conn.recv()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def latency(self) -> float:
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._call("latency", seconds)
        self._latency = seconds

    def reset(self) -> None:
        self._call("reset")

    def summary(self, *, settle: bool = True) -> LogSummary:
        """The log since ``reset()``; ``settle=False`` takes it as it is now, without waiting for
        requests still being answered (bytes fetched by the time a read returned)."""
        return self._call("summary", settle)

    def stop(self) -> None:
        if self._process.is_alive():
            self._call("stop")
            self._process.join(10)

    def __enter__(self) -> ServedDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
