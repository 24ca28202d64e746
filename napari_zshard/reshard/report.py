"""Plans and results as text: the preview table and the closing summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .layout import describe_layout

if TYPE_CHECKING:
    from .cost import ViewCost
    from .plan import ArrayPlan, ReshardPlan
    from .run import ReshardSummary

_LABEL, _COLUMN = 26, 26
_HOW: dict[str | None, str] = {"copy": "copied as stored", "add-crc32c": "copied + crc32c",
        "transcode": "re-encoded one by one", "split": "cut from each decoded chunk"}


def format_bytes(n: float) -> str:
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{int(n)} B" if unit == "B" else f"{value:.1f} {unit}"


def format_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _row(label: str, source: str, target: str) -> str:
    return f"  {label:<{_LABEL}}{source:>{_COLUMN}}{target:>{_COLUMN}}".rstrip()


def _where(array: ArrayPlan) -> str:
    """``z=256`` for the plane of a 3D array (names from the dimension names)."""
    shape = array.source.shape
    names = array.target.dimension_names or (tuple("tczyx"[-len(shape):])
                                             if len(shape) <= 5 else ())
    lead = [f"{(names[i] if i < len(names) and names[i] else f'dim{i}')}={shape[i] // 2}"
            for i in range(len(shape) - 2)]
    return ", ".join(lead)


def _view_rows(label: str, costs: tuple[ViewCost, ViewCost]) -> list[str]:
    def size(cost: ViewCost, n: int) -> str:
        return ("~" if cost.estimated else "") + format_bytes(n)

    src, dst = costs
    return [_row(f"{label}: requests", str(src.requests), str(dst.requests)),
            _row("  bytes fetched", size(src, src.fetched), size(dst, dst.fetched)),
            _row("  bytes decoded", format_bytes(src.decoded), format_bytes(dst.decoded))]


def array_block(a: ArrayPlan) -> list[str]:
    src = a.source
    head = (f"{a.name}  ({'x'.join(map(str, src.shape))} {src.dtype}, "
            f"{format_bytes(a.nbytes)})")
    where = _where(a)
    lines = [head, _row("", "source", "destination"),
             _row("chunks in shards", describe_layout(src.chunks, src.shards),
                  describe_layout(a.target.chunk_shape, a.target.grid_shape)),
             _row("inner chunks", "", _HOW.get(a.passthrough, "re-encoded")),
             _row("objects", f"{a.source_objects:,}", f"{a.n_shards:,}"),
             _row("shard index bytes", format_bytes(a.source_index_bytes),
                  format_bytes(a.target_index_bytes))]
    lines += _view_rows(f"plane {where}".strip(), a.views["plane"])
    tile = a.views["tile"]
    if a.views["plane"] != tile:
        lines += _view_rows("tile 512x512", tile)
    lines.append(_row("bytes to write", "", "~" + format_bytes(a.bytes_to_write)))
    return lines


def plan_table(plan: ReshardPlan) -> str:
    state = {"new": "new",
             "resume": f"resuming an interrupted reshard ({plan.state.journaled:,} shards "
                       "journaled)",
             "complete": "already complete (nothing to write)"}[plan.state.kind]
    lines = [f"reshard {plan.source}", f"     to {plan.destination}  [{state}]",
             f"  codec: {plan.codec}; views are cold reads without read-ahead; ~ = estimated",
             ""]
    for a in plan.arrays:
        lines += [*array_block(a), ""]
    total = (f"total: {plan.n_shards:,} shards, {format_bytes(plan.nbytes)} of pixels, "
             f"~{format_bytes(plan.bytes_to_write)} to write")
    seconds = plan.estimated_seconds
    if seconds is not None and plan.sample is not None:
        s = plan.sample
        total += (f"; estimated time ~{format_seconds(seconds)} on this machine (sample: "
                  f"{format_bytes(s.pixels)} resharded in memory in {s.seconds:.2f} s, "
                  f"{format_bytes(s.rate)}/s)")
    lines.append(total)
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def summary_text(summary: ReshardSummary) -> str:
    s = summary
    lines = [f"resharded {s.source}", f"       to {s.destination} in "
             f"{format_seconds(s.seconds)}" + ("" if s.complete else "  [NOT complete]"),
             f"  shards: {s.written:,} written, {s.fill:,} all fill (nothing stored), "
             f"{s.resumed:,} already done (journal), {len(s.corrupt):,} skipped (corrupt "
             f"source) of {s.total:,}",
             f"  bytes written: {format_bytes(s.bytes_written)} for "
             f"{format_bytes(s.pixels)} of pixels"
             + (f" ({s.pixels / s.bytes_written:.2f}x)" if s.bytes_written else "")]
    if s.swept[0]:
        lines.append(f"  removed {s.swept[0]:,} partial file(s) ({format_bytes(s.swept[1])}) "
                     "left by the interrupted run")
    if s.verify != "none":
        lines.append(f"  verification ({s.verify}): {s.verified:,} region(s) equal to the "
                     "source")
    lines += _corrupt_lines(s.corrupt)
    return "\n".join(lines)


def _corrupt_lines(corrupt: Sequence[tuple[str, str, str]]) -> list[str]:
    if not corrupt:
        return []
    lines = ["  skipped because their source is corrupt (they read as fill value; the "
             "journal is kept, so a rerun after repairing the source fills them in):"]
    lines += [f"    {array or 'array'} {key}: {error}" for array, key, error in corrupt[:20]]
    if len(corrupt) > 20:
        lines.append(f"    ... and {len(corrupt) - 20} more")
    return lines
