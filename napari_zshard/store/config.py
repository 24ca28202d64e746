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
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
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
