"""Google Cloud Storage on the loopback interface: ``gcp-storage-emulator`` (its JSON API, in
memory, in a thread), used through gcsfs as real GCS is.

Needs the test extra (``gcp-storage-emulator``, ``gcsfs``)::

    with GCSEmulator() as gcs:
        gcs.make_bucket("bkt")
        upload_dir("vol.zarr", "gs://bkt/vol.zarr", gcs.endpoint_url)
        arr = open_array("gs://bkt/vol.zarr", storage_options=gcs.storage_options)

gcsfs 2026.x first asks GCS's control plane (over gRPC) what kind of bucket it reads, a
service no emulator offers; the lookup only gives up after a long timeout. Starting the
emulator turns that lookup off for this process (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``,
read when gcsfs is first imported), so start it before anything imports gcsfs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["GCSEmulator", "upload_dir"]

_REQUEST_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d+)')


class _RequestLog(logging.Handler):
    """The emulator logs each request's line and status (``http.server``'s access log): kept
    here, so tests can count the requests a read made."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        found = _REQUEST_LINE.search(record.getMessage())
        if found:
            with self._lock:
                self.lines.append((found["method"], found["path"], int(found["status"])))


class GCSEmulator:
    """``gcp-storage-emulator`` on ``http://127.0.0.1:<free port>``, objects in memory."""

    def __init__(self) -> None:
        os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
        from gcp_storage_emulator.server import create_server

        self._server = create_server("127.0.0.1", 0, in_memory=True)
        self._log = _RequestLog()
        self._logger = logging.getLogger("gcp_storage_emulator.server")
        self.endpoint_url = ""

    def start(self) -> GCSEmulator:
        self._logger.addHandler(self._log)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False  # its access log stays out of the tests' output
        self._server.start()
        host, port = self._server._api._httpd.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()
        self._logger.removeHandler(self._log)

    def __enter__(self) -> GCSEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def storage_options(self) -> dict[str, Any]:
        """What ``open_array``/``open_store`` need to reach the emulator, anonymously."""
        return {"endpoint_url": self.endpoint_url, "token": "anon"}

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name``; returns ``"gs://<name>"``."""
        gcs_filesystem(self.endpoint_url).mkdir(name)
        return f"gs://{name}"

    def reset_log(self) -> None:
        with self._log._lock:
            self._log.lines.clear()

    def lines(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request since the last reset."""
        with self._log._lock:
            return list(self._log.lines)

    def requests(self) -> Counter:
        """Requests since the last reset, by kind: ``download`` (an object's bytes, ranged or
        whole), ``metadata`` (an object's size and generation), ``other``."""
        kinds: Counter = Counter()
        for method, path, _ in self.lines():
            if method == "GET" and "alt=media" in path:
                kinds["download"] += 1
            elif method == "GET" and "/o/" in path:
                kinds["metadata"] += 1
            else:
                kinds["other"] += 1
        return kinds


def gcs_filesystem(endpoint_url: str, **options: Any):
    """A gcsfs file system on ``endpoint_url``, anonymous, without a listing cache."""
    import gcsfs

    return gcsfs.GCSFileSystem(endpoint_url=endpoint_url, token="anon",
                               use_listings_cache=False, **options)


def upload_dir(local_dir: str | os.PathLike, gs_url: str, endpoint_url: str) -> int:
    """Copy every file below ``local_dir`` to ``gs_url`` (``gs://bucket/prefix``), keeping the
    relative keys. Returns the number of objects written."""
    fs = gcs_filesystem(endpoint_url)
    root = Path(local_dir)
    base = gs_url.removeprefix("gs://").rstrip("/")
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        fs.pipe_file(f"{base}/{path.relative_to(root).as_posix()}", path.read_bytes())
        count += 1
    return count
