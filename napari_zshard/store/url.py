"""From a path or URL to a :class:`Store`. The only place that knows about protocols."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse, urlsplit, urlunsplit

from ..errors import UnsupportedURLError
from .base import Store
from .config import check_storage_options, options_for


def normalize_url(url: str | os.PathLike) -> str:
    """A canonical address: an absolute local path, or a URL without a trailing slash."""
    text = os.fspath(url)
    if "://" not in text:
        return os.path.abspath(os.path.expanduser(text))
    if text.startswith("file://"):
        return os.path.abspath(unquote(urlparse(text).path))
    return text.rstrip("/")


def redact_url(url: str | os.PathLike) -> str:
    """``url`` as it may be shown, logged or put in an error: without the userinfo
    (``user:password@``), the query (presigned-URL signatures, ``X-Amz-Credential``, SAS and
    access tokens) and the fragment. Local paths come back unchanged.

    Every message of this package that names a URL passes it through here; a :class:`Store`'s
    ``url`` is already free of userinfo, but a user's input may not be.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or "://" not in text:
        return text if isinstance(text, str) else repr(text)
    scheme, _, rest = text.partition("://")
    # (not urlsplit: it refuses some malformed hosts, and an error path must never raise)
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    hidden = "?<redacted>" if cut < len(rest) else ""
    rest = rest[:cut]
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    if "@" in netloc:
        netloc = "<redacted>@" + netloc.rpartition("@")[2]
    elif "@" in rest and ":" in (head := rest[:rest.find("@")].split("/")[0]) and not (
            head.rpartition(":")[2].isdigit()):
        # an unquoted "/" in the password: the authority only seems to end before the "@"
        # (a "host:port" before a path holding an "@" is not one)
        netloc, _, path = rest.partition("@")[2].partition("/")
        netloc, path = "<redacted>@" + netloc, "/" + path if path or "/" in rest else ""
    return f"{scheme}://{netloc}{path}{hidden}"


def carries_credentials(url: str | os.PathLike) -> bool:
    """Whether ``url`` has userinfo or a query (what :func:`redact_url` hides)."""
    text = os.fspath(url)
    return isinstance(text, str) and redact_url(text) != text


def redact_text(text: str, url: str | os.PathLike) -> str:
    """``text`` (an error message, say) with every occurrence of ``url`` — and of its userinfo
    and query, which libraries quote on their own — replaced by :func:`redact_url`'s form."""
    raw = os.fspath(url)
    if not isinstance(raw, str) or "://" not in raw:
        return text
    text = text.replace(raw, redact_url(raw))
    parts = urlsplit(raw) if _splittable(raw) else None
    secrets = []
    if parts is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        secrets += [userinfo, userinfo.partition(":")[2], unquote(userinfo.partition(":")[2])]
        secrets += [parts.query, unquote(parts.query)]
        secrets += [v for _, v in parse_qsl(parts.query)]
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text


def _splittable(url: str) -> bool:
    try:
        urlsplit(url)
    except ValueError:
        return False
    return True


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def open_store(url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> Store:
    """Open the store at ``url`` (a local path, ``file://``, ``http(s)://``, ``s3://``,
    ``gs://``, ``memory://`` or any fsspec protocol).

    Options configured for the URL's prefix (see :mod:`napari_zshard.store.config`) apply first;
    ``storage_options`` override them.
    """
    address = normalize_url(url)
    protocol = protocol_of(address)
    _refuse_credentials_in(address, protocol)
    options = {**options_for(_without_userinfo(address)), **(storage_options or {})}
    check_storage_options(protocol, options)
    if protocol == "file":
        from .local import LocalStore

        return LocalStore(address, options)
    if protocol in ("http", "https"):
        from .http import HTTPStore

        return HTTPStore(address, options)
    if protocol in ("s3", "s3a"):
        from .s3 import S3Store

        return S3Store("s3://" + address.split("://", 1)[1], options)
    if protocol in ("gs", "gcs", "memory") or _is_fsspec_protocol(protocol):
        from .generic import FsspecStore

        return FsspecStore(address, options)
    raise UnsupportedURLError(
        f"cannot open {redact_url(address)}: unknown protocol {protocol!r}. Use a local path "
        "or a file://, http(s)://, s3:// or gs:// URL."
    )


def _refuse_credentials_in(address: str, protocol: str) -> None:
    """A store's ``url`` is shown, logged and pickled: it must carry no secret. ``user:pw@``
    of an HTTP(S) URL becomes an ``Authorization`` header (the store strips it); anything else
    that could be a credential — a query string (presigned-URL signatures, SAS tokens; a
    store URL has no use for one: keys are appended to its path), userinfo in an object-store
    URL — is refused, never silently dropped."""
    if protocol == "file":
        return
    rest = address.partition("://")[2]
    if "?" in rest or "#" in rest:
        raise UnsupportedURLError(
            f"cannot open {redact_url(address)}: a store URL cannot have a query string (a "
            "presigned or tokened URL names one object, not a store). Pass credentials as "
            "storage options (-o headers='{\"Authorization\": ...}') or configure them for "
            "the URL's prefix.")
    if protocol not in ("http", "https") and "@" in rest.partition("/")[0]:
        raise UnsupportedURLError(
            f"cannot open {redact_url(address)}: {protocol}:// URLs cannot carry credentials "
            "(user:password@). Use a profile or storage options instead.")


def _without_userinfo(url: str) -> str:
    """``https://user:pw@host/x`` → ``https://host/x``: configured prefixes name hosts only."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _is_fsspec_protocol(protocol: str) -> bool:
    from fsspec.registry import known_implementations, registry

    return protocol in registry or protocol in known_implementations
