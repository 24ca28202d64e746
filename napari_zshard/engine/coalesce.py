"""Merge nearby byte ranges of one object into few requests."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CoalescePolicy:
    """Ranges closer than ``max_gap`` bytes merge, up to ``max_size`` bytes per request."""

    max_gap: int = 256 * 1024
    max_size: int = 64 * 1024 * 1024


@dataclass
class CoalescedRange:
    start: int
    end: int  # exclusive
    parts: list[tuple[Hashable, int, int]]  # (tag, offset within this range, nbytes)

    @property
    def length(self) -> int:
        return self.end - self.start


def coalesce_ranges(ranges: Iterable[tuple[Hashable, int, int]], policy: CoalescePolicy
                    ) -> list[CoalescedRange]:
    """Group ``(tag, offset, nbytes)`` ranges into coalesced requests, sorted by offset.

    Overlapping or repeated ranges (allowed by the sharding spec) share one request.
    """
    out: list[CoalescedRange] = []
    for tag, offset, nbytes in sorted(ranges, key=lambda r: r[1]):
        end = offset + nbytes
        cur = out[-1] if out else None
        if (cur is not None and offset - cur.end <= policy.max_gap
                and max(end, cur.end) - cur.start <= policy.max_size):
            cur.end = max(cur.end, end)
            cur.parts.append((tag, offset - cur.start, nbytes))
        else:
            out.append(CoalescedRange(offset, end, [(tag, 0, nbytes)]))
    return out
