"""Ratios with bootstrap intervals and the matrix tables (bench_matrix.py).

A ratio is napari-zshard's median over tensorstore's median of interleaved runs of one cell; its
interval is a percentile bootstrap: both sides' runs are resampled with replacement, the ratio of
the resampled medians taken, and the 2.5th and 97.5th percentiles reported. A cell passes when
the interval's upper bound is within the target, so noise cannot make a slow cell pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP = 2000
_RNG = np.random.default_rng(16)


def _boot_medians(runs: list[float]) -> np.ndarray:
    values = np.asarray(runs, dtype=float)
    draws = _RNG.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    return np.median(values[draws], axis=1)


@dataclass
class Ratio:
    """``value`` = median(a) / median(b); ``low``/``high`` the 95% bootstrap interval."""

    value: float
    low: float
    high: float
    target: float | None = None  # pass when high <= target

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.high <= self.target

    def cell(self) -> str:
        if math.isnan(self.value):
            return "-"
        mark = {None: "", True: "", False: "!"}[self.passed]
        return f"{self.value:.2f}[{self.high:.2f}]{mark}"


def ratio(a: list[float], b: list[float], target: float | None = None) -> Ratio:
    if not a or not b:
        return Ratio(math.nan, math.nan, math.nan, target)
    boot = _boot_medians(a) / _boot_medians(b)
    return Ratio(float(np.median(a) / np.median(b)), float(np.percentile(boot, 2.5)),
                 float(np.percentile(boot, 97.5)), target)


def median_of_ratios(pairs: list[tuple[list[float], list[float]]],
                     target: float | None = None) -> Ratio:
    """The median over depths of the per-depth ratios, with the interval of that median
    (every depth's runs resampled in each bootstrap draw)."""
    pairs = [(a, b) for a, b in pairs if a and b]
    if not pairs:
        return Ratio(math.nan, math.nan, math.nan, target)
    point = float(np.median([np.median(a) / np.median(b) for a, b in pairs]))
    boot = np.median(np.stack([_boot_medians(a) / _boot_medians(b) for a, b in pairs]), axis=0)
    return Ratio(point, float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5)),
                 target)


def geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and not math.isnan(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def print_grid(title: str, rows: dict[str, dict[str, Ratio]], columns: list[str],
               legend: str, width: int = 13) -> None:
    """One row per cell, one column per measurement, and the geometric mean per column."""
    print(f"\n== {title} ==")
    print(legend)
    label_w = max([len(r) for r in rows] + [20])
    print(f"{'cell':<{label_w}} " + " ".join(f"{c:>{width}}" for c in columns))
    for label, cells in rows.items():
        print(f"{label:<{label_w}} " + " ".join(
            f"{cells[c].cell() if c in cells else '':>{width}}" for c in columns))
    means = [geomean([cells[c].value for cells in rows.values() if c in cells])
             for c in columns]
    print(f"{'geometric mean':<{label_w}} " + " ".join(
        f"{'' if math.isnan(m) else f'{m:.2f}':>{width}}" for m in means))


def worst(rows: dict[str, dict[str, Ratio]], n: int = 10) -> list[tuple[str, str, Ratio]]:
    """The cells furthest above (or least below) their targets, by upper bound / target."""
    scored = [(label, col, r) for label, cells in rows.items() for col, r in cells.items()
              if r.target is not None and not math.isnan(r.high)]
    scored.sort(key=lambda item: item[2].high / item[2].target, reverse=True)
    return scored[:n]
