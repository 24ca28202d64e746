"""S3 store: ranged GetObject calls on s3fs's aiobotocore client (bytes, size and ETag at once),
and conditional PutObject/DeleteObject for read-modify-writes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..errors import RemoteReadError, ShortReadError, StoreError, UnsupportedURLError
from ..keys import validate_key
from .base import CONFLICT, Modify, _Conflict
from .http import range_header
from .remote import RemoteStore, check_range_result, expected_length
from .requests import ByteRequest, ByteResult, FullRequest, SuffixRequest
from .retry import TRANSIENT_HTTP_STATUS, TransientError

log = logging.getLogger(__name__)

#: The largest object one PutObject may carry.
MAX_PUT_BYTES = 5 * 2**30


def _credentials_available(options: dict[str, Any]) -> bool:
    """Whether botocore finds credentials for ``options``: options or environment first, else
    its whole provider chain (files, ``credential_process``, container and instance metadata
    endpoints: up to seconds where none answers). :class:`S3Store` asks once per root store;
    its children inherit the answer."""
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

    def __init__(self, url: str, options: dict[str, Any] | None = None, *,
                 _anonymous: bool | None = None):
        super().__init__(url.rstrip("/"), options)
        try:
            import s3fs
        except ImportError as e:
            raise UnsupportedURLError(
                f"reading {url} needs s3fs: pip install 'napari-zshard[s3]'"
            ) from e
        opts = dict(self.fs_options)
        if "anon" not in opts:
            if _anonymous is None:  # a root store: ask botocore (a child was told)
                _anonymous = not _credentials_available(opts)
            if _anonymous:
                opts["anon"] = True
        self._anonymous = bool(opts.get("anon"))
        config = dict(opts.pop("config_kwargs", None) or {})
        config.setdefault("max_pool_connections", self.max_concurrency)
        # RemoteStore retries reads itself; botocore's own retries on top multiplied the wait
        # for an unreachable endpoint (5 x 5 attempts: 33 s instead of under a second).
        config.setdefault("retries", {"max_attempts": 0})
        # botocore's timeouts are per socket operation: a stall timeout, as the policy's
        config.setdefault("connect_timeout", self.retry.timeout)
        config.setdefault("read_timeout", self.retry.timeout)
        self.fs = s3fs.S3FileSystem(config_kwargs=config, **opts)
        bucket_and_prefix = self.url.split("://", 1)[1]
        self.bucket, _, self.prefix = bucket_and_prefix.partition("/")

    def child(self, path: str) -> S3Store:
        """The store at ``path`` below this one, with the credentials this one resolved (no
        second walk through botocore's provider chain)."""
        from .config import options_for

        url = f"{self.url.rstrip('/')}/{path.strip('/')}"
        options = {**options_for(url), **self.options}  # as open_store merges them
        same = options == self.options  # else a longer configured prefix: its own credentials
        return S3Store(url, options, _anonymous=self._anonymous if same else None)

    def object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _fetch_once(self, req: ByteRequest, progress=None) -> ByteResult:
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
                content_range = resp.get("ContentRange")
                if content_range is None and resp.get("ContentLength") == 0 and rng:
                    # S3 answers a range of an empty object with the whole (empty) object.
                    content_range = "bytes */0"
                # how long the body may be, from the head, before anything is read
                expected_length(self, req, content_range, resp.get("ContentLength"))
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
        result = check_range_result(self, req, data, content_range)
        return ByteResult(result.data, result.object_size, etag)

    def write(self, key: str, data: bytes | bytearray) -> None:
        # One PUT is atomic on S3: readers see the old object or the new one.
        self.fs.pipe_file(f"{self.bucket}/{self.object_key(key)}", data)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.bucket}/{self.object_key(key)}")

    def update(self, key: str, modify: Modify, *, tries: int = 10) -> bytes | None:
        """Optimistic read-modify-write of ``key`` (see :meth:`Store.update`).

        One GetObject returns the bytes with their ETag; the result of ``modify`` goes back in
        one PutObject with ``If-Match: <ETag>`` (``If-None-Match: *`` when the object did not
        exist), a deletion in one DeleteObject with ``If-Match``. S3 commits a conditional
        request atomically: of the writers who read one version exactly one commits, the
        others get 412 PreconditionFailed or 409 ConditionalRequestConflict (or 404 when the
        object vanished) and start again from a fresh read.

        Never through s3fs's ``pipe``/``put``: from twice its block size on they upload in
        parts and silently drop ``IfMatch``. One PutObject carries up to 5 GiB, so shards
        above s3fs's 100 MiB multipart threshold stay guarded; larger ones are refused.
        Conditional DeleteObject exists on AWS general purpose buckets since September 2025
        (moto honours it too); an S3-compatible server that ignores ``If-Match`` makes these
        writes unconditional, which this store cannot detect.
        """
        return super().update(key, modify, tries=tries)

    def _update_once(self, key: str, modify: Modify) -> bytes | _Conflict | None:
        found = self.read_many([FullRequest(key)])[0]  # retries transient failures
        current = found.whole
        if current is not None and not found.etag:
            raise StoreError(f"{self.url}/{key}: the server sent no ETag, so a concurrent "
                             "write could not be detected; refusing to update")
        new = modify(current)
        if new is None:
            if current is None:
                return None
            committed = self.run(self._conditional("delete_object", key, IfMatch=found.etag))
        elif new == current:
            return new
        else:
            if len(new) > MAX_PUT_BYTES:
                raise StoreError(f"{self.url}/{key}: {len(new)} bytes exceed the 5 GiB of one "
                                 "PutObject; use smaller shards")
            condition = ({"IfMatch": found.etag} if current is not None
                         else {"IfNoneMatch": "*"})
            committed = self.run(self._conditional("put_object", key, Body=new, **condition))
        return new if committed else CONFLICT

    async def _conditional(self, operation: str, key: str, **kwargs: Any) -> bool:
        """Make one conditional request; False when its precondition failed (or its outcome
        is unknown: a lost answer is retried from a fresh read as if it were a conflict)."""
        from botocore.exceptions import ClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        client = await self.fs.set_session()
        try:
            await getattr(client, operation)(Bucket=self.bucket, Key=self.object_key(key),
                                              **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code == "NoSuchBucket":
                raise StoreError(f"{self.url}: the bucket does not exist") from e
            if status in (404, 409, 412) or code in ("PreconditionFailed", "NoSuchKey",
                                                     "ConditionalRequestConflict"):
                return False
            if status in TRANSIENT_HTTP_STATUS or code in ("SlowDown", "RequestTimeout"):
                log.debug("%s/%s: %s failed (%s), will re-read", self.url, key, operation,
                          code or status)
                return False
            if status in (401, 403) or code == "AccessDenied":
                raise StoreError(f"{self.url}/{key}: access denied writing ({code}). Configure "
                                 "credentials that may write to this bucket.") from e
            raise StoreError(f"{self.url}/{key}: {operation} failed: {code or status}") from e
        except (BotoConnectionError, ReadTimeoutError, OSError) as e:
            log.debug("%s/%s: %s outcome unknown (%s), will re-read", self.url, key,
                      operation, e)
            return False
        finally:
            self.stats.record(0)
        return True

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """One PutObject with ``If-None-Match: *``: of concurrent creators exactly one
        succeeds. When the answer is lost, the object is read back: holding our bytes, it is
        taken as ours (write-once objects of this package carry unique content)."""
        if len(data) > MAX_PUT_BYTES:
            raise StoreError(f"{self.url}/{key}: {len(data)} bytes exceed one PutObject")
        for _ in range(5):
            if self.run(self._conditional("put_object", key, Body=data, IfNoneMatch="*")):
                return True
            current = self.read(key)
            if current is not None:
                # equal bytes: ours whose answer was lost (or identical content: the same)
                return current == data
        raise StoreError(f"{self.url}/{key}: could not create the object (no answer)")

    def overwrite(self, key: str, data: bytes | None) -> None:
        # A blind write is ordered with updates: an update in flight has read the old ETag,
        # so its conditional commit fails and it starts again from these bytes.
        if data is None:
            self.delete(key)
        else:
            self.write(key, data)

    def list_prefix(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = f"{self.bucket}/{self.prefix}".rstrip("/")
        base = f"{root}/{prefix}".rstrip("/")
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            yield path[len(root) + 1:], int(info.get("size", 0))
