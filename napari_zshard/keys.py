"""Store keys: validation of names that come from untrusted metadata."""

from __future__ import annotations

from urllib.parse import unquote

from .errors import UnsafeKeyError


def validate_key(key: str, *, what: str = "store key") -> str:
    """Return ``key`` if it is a safe relative store key, else raise :class:`UnsafeKeyError`.

    A safe key is relative, uses ``/`` separators, and has no empty, ``.`` or ``..`` segment
    and no NUL or backslash, so it can never address anything outside the store — neither as
    written nor after any number of percent-decodings (a ``file://`` URL, an HTTP server or a
    URL library decodes ``%2e%2e%2f`` into ``../`` further down the line).
    """
    if not isinstance(key, str) or key == "":
        raise UnsafeKeyError(f"{what} {key!r} is empty or not a string")
    _check_form(key, key, what)
    for decoded in _decodings(key):
        _check_form(key, decoded, what)
    return key


def _decodings(key: str) -> list[str]:
    """Every distinct form ``key`` takes when percent-decoded again and again."""
    forms = []
    while "%" in key:
        once = unquote(key)
        if once == key:
            break
        forms.append(key := once)
    return forms


def _check_form(key: str, form: str, what: str) -> None:
    how = "" if form == key else f" (percent-decoded: {form!r})"
    if form == "":
        raise UnsafeKeyError(f"{what} {key!r} is empty{how}")
    if "\x00" in form or "\\" in form:
        raise UnsafeKeyError(f"{what} {key!r} contains a NUL or backslash{how}")
    if form.startswith("/") or (len(form) > 1 and form[1] == ":"):
        raise UnsafeKeyError(f"{what} {key!r} is an absolute path{how}")
    for part in form.split("/"):
        if part in ("", ".", ".."):
            raise UnsafeKeyError(f"{what} {key!r} has an empty, '.' or '..' segment{how}")


def validate_name(name: str, *, what: str = "name") -> str:
    """A single path segment (label name, annotator id): a safe key without ``/``, as written
    or percent-decoded."""
    validate_key(name, what=what)
    if any("/" in form for form in [name, *_decodings(name)]):
        raise UnsafeKeyError(f"{what} {name!r} must not contain '/' (nor '%2f')")
    return name


def join_key(prefix: str, key: str) -> str:
    """Join a store-relative prefix and key with exactly one ``/``."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
