"""Per-color request figures: counters, a latency histogram, and a sliding window.

Hot path cost is a few list increments and one binary search (`bucket`) per finished request
(see `Metrics.observe`); everything else (p99, the window's error rate, the
Prometheus text) is computed when someone asks.

Latencies go into fine buckets (1.1 times apart, from 0.1 ms to 2 min, plus the
Prometheus bucket bounds), so a window's p99 is known to within 10% and the
Prometheus histogram is a sum of fine buckets at scrape time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

PROM_BOUNDS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


def _fine_bounds() -> list[float]:
    out = set(PROM_BOUNDS)
    v = 0.0001
    while v < 120.0:
        out.add(round(v, 7))
        v *= 1.1
    return sorted(out)


BOUNDS: Final = _fine_bounds()
"""Upper bounds (seconds) of the fine buckets; bucket len(BOUNDS) holds the rest."""
NBUCKETS: Final = len(BOUNDS) + 1
PROM_INDEX = [BOUNDS.index(b) for b in PROM_BOUNDS]


def bucket(seconds: float) -> int:
    """The fine bucket of a latency: `bisect.bisect_left(BOUNDS, seconds)`, written
    out so that, compiled, it is a native loop (the builtin is a generic call)."""
    bounds = BOUNDS
    lo = 0
    hi = len(bounds)
    while lo < hi:
        mid = (lo + hi) // 2
        if bounds[mid] < seconds:
            lo = mid + 1
        else:
            hi = mid
    return lo


def quantile(hist: list[int], total: int, q: float) -> float:
    """The upper bound (seconds) of the fine bucket holding quantile `q` (0 when empty)."""
    if total <= 0:
        return 0.0
    rank = max(1, math.ceil(q * total - 1e-9))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            return BOUNDS[min(i, len(BOUNDS) - 1)]
    return BOUNDS[-1]


class Slice:
    """One time slice of a window."""

    __slots__ = ("errors", "hist", "requests", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.requests = 0
        self.errors = 0
        self.hist = [0] * NBUCKETS


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    errors: int
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Window:
    """The last `seconds` of requests, in 20 slices (old slices fall off whole)."""

    __slots__ = ("cur", "end", "seconds", "slices", "width")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.width = seconds / 20
        self.slices: deque[Slice] = deque()
        self.cur = Slice(0.0)
        self.end = float("-inf")
        """When the current slice ends: `observe` rotates when a request finishes after it."""

    def rotate(self, t: float) -> None:
        start = (t // self.width) * self.width
        self.cur = Slice(start)
        self.slices.append(self.cur)
        self.end = start + self.width
        self._expire(t)

    def _expire(self, now: float) -> None:
        horizon = now - self.seconds
        slices = self.slices
        while slices and slices[0].start + self.width <= horizon:
            slices.popleft()

    def clear(self) -> None:
        self.slices.clear()
        self.cur = Slice(0.0)
        self.end = float("-inf")

    def summary(self, now: float) -> Summary:
        self._expire(now)
        requests = errors = 0
        hist = [0] * NBUCKETS
        for s in self.slices:
            requests += s.requests
            errors += s.errors
            h = s.hist
            for i, n in enumerate(h):
                if n:
                    hist[i] += n
        return Summary(requests, errors, round(quantile(hist, requests, 0.99) * 1000, 3))


class ColorStats:
    """Everything counted for one (app, color), or for requests outside any app."""

    __slots__ = ("codes", "errors", "hist", "sum", "window")

    def __init__(self, window_seconds: float) -> None:
        self.codes = [0] * 6
        """Requests by status class: index 1-5 for 1xx-5xx, 0 for no status."""
        self.errors = 0
        """5xx answers plus requests edgeproxy ended because the upstream failed."""
        self.hist = [0] * NBUCKETS
        self.sum = 0.0
        self.window = Window(window_seconds)

    @property
    def requests(self) -> int:
        return sum(self.codes)
