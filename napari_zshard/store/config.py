"""Storage options per URL prefix, so drag-and-drop and the Save dialog reach private buckets.

Two sources, the environment overriding the file, the longest matching prefix winning:

* a TOML file, ``$NAPARI_ZSHARD_CONFIG`` or ``~/.config/napari-zshard/storage.toml``::

      ["s3://lab-bucket/"]
      profile = "lab"
      ["s3://public-data/"]
      anon = true

* ``$NAPARI_ZSHARD_STORAGE_OPTIONS``: the same mapping as JSON.

Options given explicitly to ``open_array(..., storage_options=...)`` override both.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ZShardError

log = logging.getLogger(__name__)

ENV_OPTIONS = "NAPARI_ZSHARD_STORAGE_OPTIONS"
ENV_FILE = "NAPARI_ZSHARD_CONFIG"


class StorageConfigError(ZShardError, ValueError):
    """The storage configuration file or variable cannot be parsed."""


def config_path() -> Path:
    if os.environ.get(ENV_FILE):
        return Path(os.environ[ENV_FILE]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "napari-zshard" / "storage.toml"


def _load_file(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError) as e:
        raise StorageConfigError(f"cannot read storage configuration {path}: {e}") from e
    return _check_mapping(data, str(path))


def _check_mapping(data: Any, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise StorageConfigError(
            f"{source}: expected a mapping of URL prefix to a table of storage options"
        )
    return data


def load_prefix_options() -> dict[str, dict[str, Any]]:
    """Every configured prefix with its options (file first, the environment on top)."""
    sources = [_load_file(config_path())]
    raw = os.environ.get(ENV_OPTIONS)
    if raw:
        try:
            env = json.loads(raw)
        except ValueError as e:
            raise StorageConfigError(f"${ENV_OPTIONS} is not valid JSON: {e}") from e
        sources.append(_check_mapping(env, f"${ENV_OPTIONS}"))
    options: dict[str, dict[str, Any]] = {}
    for source in sources:
        for prefix, opts in source.items():
            key = _normal_prefix(prefix)
            options[key] = {**options.get(key, {}), **opts}
    return options


def prefix_matches(prefix: str, url: str) -> bool:
    """Whether ``url`` is ``prefix`` or lies below it, on a ``/`` boundary.

    ``s3://lab`` (or ``s3://lab/``) matches ``s3://lab`` and ``s3://lab/vol.zarr`` but not
    ``s3://lab-public/...``, and ``https://data.lab.org`` does not match
    ``https://data.lab.org.example.net/``: options often hold credentials, which must never
    reach another bucket or host.
    """
    base = _normal_prefix(prefix)
    if base.endswith("://") or not base:  # a bare "s3://": every URL of the protocol
        return url.startswith(base)
    return url == base or url.startswith(base + "/")


def _normal_prefix(prefix: str) -> str:
    """``prefix`` without trailing slashes (except a bare ``protocol://``)."""
    stripped = prefix.rstrip("/")
    return stripped + "//" if stripped.endswith(":") else stripped


def options_for(url: str) -> dict[str, Any]:
    """The configured storage options of the longest prefix of ``url``, or ``{}``."""
    configured = load_prefix_options()
    matching = [p for p in configured if prefix_matches(p, url)]
    if not matching:
        return {}
    best = max(matching, key=len)
    log.debug("storage options for %s come from the configured prefix %s", url, best)
    return dict(configured[best])


# -- what each transport accepts ---------------------------------------------------------------
# fsspec file systems take any keyword and silently ignore the ones they do not know (or, over
# HTTP, hand them to every request), and a wrong type fails far from where it was given
# ("'>' not supported between 'str' and 'int'"). Options are checked here, where they enter:
# the name must be one the transport takes, the value of the type it expects.

_Check = tuple[str, Callable[[Any], bool]] | None  # (what it expects, test), None: anything


def _number(minimum: float, *, integer: bool = False, strict: bool = False) -> _Check:
    kind = "an integer" if integer else "a number"
    what = f"{kind} {'>' if strict else '≥'} {minimum:g}"
    return what, lambda v: (isinstance(v, int if integer else (int, float))
                            and not isinstance(v, bool)
                            and (v > minimum if strict else v >= minimum))


_BOOL: _Check = ("true or false", lambda v: isinstance(v, bool))
_STR: _Check = ("a string", lambda v: isinstance(v, str))
_MAP: _Check = ("a mapping (a JSON object)", lambda v: isinstance(v, dict))
_HEADERS: _Check = ("a mapping of header names to string values",
                    lambda v: isinstance(v, dict) and all(
                        isinstance(k, str) and isinstance(x, str) for k, x in v.items()))
_URL: _Check = ("an http:// or https:// URL",
                lambda v: isinstance(v, str) and v.startswith(("http://", "https://")))
_TIMEOUT: _Check = ("a number of seconds > 0",
                    lambda v: not isinstance(v, (str, bool, dict, list)) and (
                        not isinstance(v, (int, float)) or v > 0))
_INT0, _INT1 = _number(0, integer=True), _number(1, integer=True)

_COMMON: dict[str, _Check] = {
    "skip_instance_cache": _BOOL, "use_listings_cache": _BOOL,
    "listings_expiry_time": _number(0), "max_paths": _INT1, "batch_size": _INT1,
    # read by the engine itself (store/remote.py ENGINE_OPTIONS), never by fsspec
    "stall_timeout": None}  # (checked by RetryPolicy.from_options)
OPTIONS: dict[str, dict[str, _Check]] = {
    "file": {},
    "http": {**_COMMON,
             "headers": _HEADERS, "client_kwargs": _MAP, "block_size": _INT0,
             "simple_links": _BOOL, "same_scheme": _BOOL, "size_policy": _STR,
             "cache_type": _STR, "cache_options": _MAP, "encoded": _BOOL, "get_client": None,
             # what aiohttp takes per request (fsspec passes unknown options to every request)
             "auth": None, "timeout": _TIMEOUT, "ssl": None, "verify_ssl": _BOOL,
             "proxy": _URL, "proxy_auth": None, "proxy_headers": _HEADERS,
             "allow_redirects": _BOOL, "max_redirects": _INT0, "cookies": _MAP},
    "s3": {**_COMMON,
           "anon": _BOOL, "key": _STR, "secret": _STR, "token": _STR, "username": _STR,
           "password": _STR, "profile": _STR, "endpoint_url": _URL, "client_kwargs": _MAP,
           "config_kwargs": _MAP, "s3_additional_kwargs": _MAP, "requester_pays": _BOOL,
           "default_block_size": _INT1, "default_fill_cache": _BOOL,
           "default_cache_type": _STR, "version_aware": _BOOL, "use_ssl": _BOOL,
           "cache_regions": _BOOL, "session": None, "max_concurrency": _INT1,
           "fixed_upload_size": _BOOL, "local_expiry_check": _BOOL,
           # botocore session / client arguments s3fs passes on
           "region_name": _STR, "aws_access_key_id": _STR, "aws_secret_access_key": _STR,
           "aws_session_token": _STR, "verify": None, "config": None},
    "gs": {**_COMMON,
           "token": None, "project": _STR, "access": _STR, "consistency": _STR,
           "requester_pays": None, "endpoint_url": _URL, "default_location": _STR,
           "session_kwargs": _MAP, "check_connection": _BOOL, "timeout": _TIMEOUT,
           "requests_timeout": _TIMEOUT, "block_size": _INT1, "cache_timeout": _number(0),
           "version_aware": _BOOL, "secure_serialize": _BOOL},
}
_ALIASES = {"https": "http", "s3a": "s3", "gcs": "gs"}


def check_storage_options(protocol: str, options: dict[str, Any]) -> None:
    """Raise :class:`StorageConfigError` naming the option and what it expects when ``options``
    holds a name ``protocol``'s transport does not take, or a value of the wrong type.

    Checked for local paths, HTTP(S), S3 and GCS (the names their fsspec file systems take, in
    the installed version, plus what those pass on); other fsspec protocols are passed as is.
    """
    from .base import _is_secret

    kind = _ALIASES.get(protocol, protocol)
    table = OPTIONS.get(kind)
    if table is None or not options:
        return
    if kind == "file":
        raise StorageConfigError(
            f"a local path takes no storage options, got {', '.join(sorted(options))}")
    known = {**dict.fromkeys(_fsspec_parameters(kind)), **table}
    for name, value in options.items():
        if name not in known:
            raise StorageConfigError(
                f"unknown storage option {name!r} for {protocol}:// URLs; it takes: "
                f"{', '.join(sorted(known))}")
        check = known[name]
        if check is not None and not check[1](value):
            shown = "" if _is_secret(name) else f", got {value!r}"
            raise StorageConfigError(
                f"storage option {name!r} for {protocol}:// URLs expects {check[0]}{shown}")


def _fsspec_parameters(kind: str) -> list[str]:
    """The keyword parameters of the fsspec file system class of ``kind`` (and its bases)."""
    import inspect

    import fsspec

    try:
        cls = fsspec.get_filesystem_class(kind)
    except (ImportError, ValueError):
        return []
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        names += [n for n, p in inspect.signature(init).parameters.items() if n != "self"
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names
