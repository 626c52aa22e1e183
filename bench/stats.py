"""Small, pure statistics helpers shared by the bench commands."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of the values; NaN when there are none."""
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return float("nan")
    rank = max(1, math.ceil(pct / 100.0 * len(vals)))
    return vals[min(rank, len(vals)) - 1]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, or None when either is missing, NaN or the divisor is 0."""
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


def binomial_ci95(successes: int, trials: int) -> tuple[float, float]:
    """Wilson score interval for a proportion (95 %), as fractions 0..1."""
    if trials == 0:
        return (float("nan"), float("nan"))
    z = 1.959963984540054
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def fmt_num(value: float | None, digits: int = 0) -> str:
    """12345.6 → `12,346`; None/NaN → `-`."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def fmt_k(value: float | None) -> str:
    """64321 → `64.3k`; None/NaN → `-`."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value / 1000:.1f}k" if abs(value) >= 1000 else f"{value:.0f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
