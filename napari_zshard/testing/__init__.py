"""Real components for tests and benchmarks: a loopback HTTP server with byte ranges, request
counting and fault injection, and moto's S3 on 127.0.0.1. napari-free; ``s3_server`` needs the
test extra."""

from .http_server import RangeHTTPServer, RequestRecord

__all__ = ["RangeHTTPServer", "RequestRecord"]
