"""S3 on the loopback interface: moto's server in a thread, used through s3fs like real S3.

Needs the test extra (``moto[server]``, ``s3fs``)::

    with MotoS3Server() as s3:
        upload_dir("vol.zarr", "s3://bucket/vol.zarr", s3.endpoint_url)
        arr = open_array("s3://bucket/vol.zarr", storage_options={"endpoint_url": s3.endpoint_url})

moto accepts any credentials, but botocore insists on having some: set ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY`` (to anything) in the environment, or pass ``key``/``secret``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["MotoS3Server", "upload_dir"]


class MotoS3Server:
    """moto's S3 (and every other moto service) on ``http://127.0.0.1:<free port>``.

    Writes are served one at a time. Real S3 checks a conditional PUT (``If-Match``,
    ``If-None-Match: *``) and stores the object atomically; moto checks, then stores, in the
    request's own thread, so two racing conditional PUTs could both pass under load (seen: two
    of eight ``If-None-Match: *`` creators "won"). Serialising writes gives S3's guarantee;
    reads stay concurrent.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def start(self) -> MotoS3Server:
        from moto.server import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = _WritesOneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server("127.0.0.1", 0, app, threaded=True,
                                   request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="moto-s3")
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> MotoS3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _WritesOneAtATime:
    """A WSGI app whose PUT/POST/DELETE requests run one at a time, answer included."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


def s3_filesystem(endpoint_url: str, **options: Any):
    """An s3fs file system talking to ``endpoint_url``, without a listing cache (tests change
    buckets behind its back). Made once per endpoint and options: building a client is slow."""
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint_url, use_listings_cache=False, **options)


def upload_dir(local_dir: str | os.PathLike, s3_url: str, endpoint_url: str,
               **options: Any) -> int:
    """Copy every file below ``local_dir`` to ``s3_url`` (``s3://bucket/prefix``), keeping the
    relative keys. Returns the number of objects written."""
    fs = s3_filesystem(endpoint_url, **options)
    root = Path(local_dir)
    target = s3_url.split("://", 1)[-1].rstrip("/")
    count = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{target}/{path.relative_to(root).as_posix()}")
        count += 1
    return count
