"""Store keys: validation of names that come from untrusted metadata."""

from __future__ import annotations

from ..errors import UnsafeKeyError


def validate_key(key: str, *, what: str = "store key") -> str:
    """Return ``key`` if it is a safe relative store key, else raise :class:`UnsafeKeyError`.

    A safe key is relative, uses ``/`` separators, and has no empty, ``.`` or ``..`` segment
    and no NUL or backslash, so it can never address anything outside the store.
    """
    if not isinstance(key, str) or key == "":
        raise UnsafeKeyError(f"{what} {key!r} is empty or not a string")
    if "\x00" in key or "\\" in key:
        raise UnsafeKeyError(f"{what} {key!r} contains a NUL or backslash")
    if key.startswith("/") or (len(key) > 1 and key[1] == ":"):
        raise UnsafeKeyError(f"{what} {key!r} is an absolute path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeKeyError(f"{what} {key!r} has an empty, '.' or '..' segment")
    return key


def validate_name(name: str, *, what: str = "name") -> str:
    """A single path segment (label name, annotator id): a safe key without ``/``."""
    validate_key(name, what=what)
    if "/" in name:
        raise UnsafeKeyError(f"{what} {name!r} must not contain '/'")
    return name


def join_key(prefix: str, key: str) -> str:
    """Join a store-relative prefix and key with exactly one ``/``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
