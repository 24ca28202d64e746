"""What the ``zshard`` commands share: exit codes, one-line errors, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
#: ``zshard fsck``: no damage found, but something could not be checked (an array skipped —
#: codecs the engine does not implement, a string dtype — or an object that cannot be read).
EXIT_INCOMPLETE = 3


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith(
            "napari_zshard"):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text} (run with --debug for the traceback)"


def redact_for(text: str, args: Any) -> str:
    """``text`` with every URL the user gave on the command line (URL, SRC, DST) redacted
    (:func:`~napari_zshard.store.url.redact_url`): errors and reports never echo a password
    or a presigned-URL signature."""
    from ..store.url import redact_text

    for name in ("url", "src", "dst"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            text = redact_text(text, value)
    return text


def follow(steps: Iterator[Any], *, show: bool,
           describe: Callable[[str], str] = lambda message: message) -> Iterator[Any]:
    """Yield every step of a progress generator (``done``, ``total``, ``message``), with a
    progress bar on stderr when ``show``; the bar is closed however the loop ends."""
    bar = None
    try:
        for step in steps:
            if show and bar is None:
                from tqdm import tqdm

                bar = tqdm(total=step.total, unit="shard", file=sys.stderr)
            if bar is not None:
                bar.update(step.done - bar.n)
                bar.set_description(describe(step.message))
            yield step
    finally:
        if bar is not None:
            bar.close()
