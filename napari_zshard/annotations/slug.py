"""Annotator names as store key segments: safe, deterministic and injective."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SAFE = re.compile(r"[^a-z0-9_-]+")
MAX_NAME_CHARS = 256


def annotator_slug(name: str) -> str:
    """A key segment for ``name``: a readable lower-case part plus a short hash of the exact
    name, e.g. ``alice-3f9c2a1b``.

    Only ``[a-z0-9_-]`` (portable everywhere, no ``/``, ``..``, ``:``, ``%`` or NUL, never
    a reserved Windows name by itself), at most 40 characters; the hash covers the name as
    given, so "Alice" and "alice" (one folder on macOS and Windows) get different slugs.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the annotator name must be a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"the annotator name is {len(name)} characters long; at most "
                         f"{MAX_NAME_CHARS} are allowed")
    readable = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    readable = _SAFE.sub("-", readable).strip("-_")[:24] or "user"
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=5).hexdigest()
    return f"{readable}-{digest}"
