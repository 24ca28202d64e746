"""S3 store: ranged GetObject calls on s3fs's aiobotocore client (bytes, size and ETag at once)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ..errors import RemoteReadError, ShortReadError, StoreError, UnsupportedURLError
from .http import range_header
from .keys import validate_key
from .remote import RemoteStore, check_range_result
from .requests import ByteRequest, ByteResult, FullRequest, SuffixRequest
from .retry import TRANSIENT_HTTP_STATUS, TransientError


def _credentials_available(options: dict[str, Any]) -> bool:
    if options.get("key") or options.get("profile") or options.get("session"):
        return True
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    try:
        import botocore.session

        return botocore.session.get_session().get_credentials() is not None
    except Exception:
        return False


class S3Store(RemoteStore):
    """``s3://bucket/prefix``. Public buckets are read anonymously when no credentials exist."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        super().__init__(url.rstrip("/"), options)
        try:
            import s3fs
        except ImportError as e:
            raise UnsupportedURLError(
                f"reading {url} needs s3fs: pip install 'napari-zshard[s3]'"
            ) from e
        opts = dict(self.options)
        if "anon" not in opts and not _credentials_available(opts):
            opts["anon"] = True
        config = dict(opts.pop("config_kwargs", None) or {})
        config.setdefault("max_pool_connections", self.max_concurrency)
        # RemoteStore retries reads itself; botocore's own retries on top multiplied the wait
        # for an unreachable endpoint (5 x 5 attempts: 33 s instead of under a second).
        config.setdefault("retries", {"max_attempts": 0})
        self.fs = s3fs.S3FileSystem(config_kwargs=config, **opts)
        bucket_and_prefix = self.url.split("://", 1)[1]
        self.bucket, _, self.prefix = bucket_and_prefix.partition("/")

    def object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _fetch_once(self, req: ByteRequest) -> ByteResult:
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        client = await self.fs.set_session()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(req.key)}
        rng = range_header(req)
        if rng:
            kwargs["Range"] = rng
        try:
            resp = await client.get_object(**kwargs)
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "404") or status == 404:
                return ByteResult(None)
            if code == "InvalidRange" or status == 416:
                if isinstance(req, SuffixRequest) and req.length > 0:
                    # only an empty object has no last n bytes
                    return ByteResult(b"", object_size=0)
                raise ShortReadError(
                    f"{self.url}/{req.key}: range {rng} starts past the end of the object",
                    key=req.key, start=getattr(req, "start", 0),
                    requested=getattr(req, "length", 0), received=0,
                ) from e
            if status in TRANSIENT_HTTP_STATUS or code in ("SlowDown", "RequestTimeout"):
                raise TransientError(f"{self.url}/{req.key}: {code or status}") from e
            if status in (401, 403) or code in ("AccessDenied", "InvalidAccessKeyId",
                                                "SignatureDoesNotMatch"):
                raise StoreError(
                    f"{self.url}/{req.key}: access denied ({code}). Configure credentials for "
                    "this bucket (environment, AWS profile, or the per-URL storage options)."
                ) from e
            raise RemoteReadError(f"{self.url}/{req.key}: {code or status}") from e
        except (BotoConnectionError, ReadTimeoutError, OSError) as e:
            raise TransientError(f"{self.url}/{req.key}: {e}") from e
        etag = resp.get("ETag")
        if isinstance(req, FullRequest):
            if resp.get("ContentLength") not in (None, len(data)):
                raise TransientError(f"{req.key}: body {len(data)} of {resp['ContentLength']}")
            return ByteResult(data, object_size=len(data), etag=etag)
        content_range = resp.get("ContentRange")
        if content_range is None and not data:
            # S3 answers a range of an empty object with the whole (empty) object.
            content_range = "bytes */0"
        result = check_range_result(self, req, data, content_range)
        return ByteResult(result.data, result.object_size, etag)

    def write(self, key: str, data: bytes) -> None:
        # One PUT is atomic on S3: readers see the old object or the new one.
        self.fs.pipe_file(f"{self.bucket}/{self.object_key(key)}", data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.bucket}/{self.object_key(key)}")

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = f"{self.bucket}/{self.prefix}".rstrip("/")
        base = f"{root}/{prefix}".rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            yield path[len(root) + 1:], int(info.get("size", 0))
