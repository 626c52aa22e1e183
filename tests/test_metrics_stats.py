"""The per-color figures: fine latency buckets, p99, and the sliding window."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.observability.stats import (
    BOUNDS,
    NBUCKETS,
    PROM_BOUNDS,
    Window,
    bucket,
    quantile,
)


def fill(latencies: list[float]) -> list[int]:
    hist = [0] * NBUCKETS
    for d in latencies:
        hist[bisect_left(BOUNDS, d)] += 1
    return hist


def test_the_prometheus_bounds_are_fine_bucket_bounds() -> None:
    assert set(PROM_BOUNDS) <= set(BOUNDS)
    assert sorted(BOUNDS) == BOUNDS


@given(st.one_of(st.floats(-1.0, 1000.0), st.sampled_from(BOUNDS)))
def test_a_latency_falls_in_the_bucket_bisect_would_choose(seconds: float) -> None:
    assert bucket(seconds) == bisect_left(BOUNDS, seconds)
    assert bucket(seconds) < NBUCKETS


@given(st.lists(st.floats(0.0002, 100.0), min_size=1, max_size=300))
def test_p99_is_the_true_p99_rounded_up_by_at_most_ten_percent(latencies: list[float]) -> None:
    exact = sorted(latencies)[max(0, -(-99 * len(latencies) // 100) - 1)]
    got = quantile(fill(latencies), len(latencies), 0.99)
    assert exact <= got <= exact * 1.1 + 1e-9


def test_p99_of_nothing_is_zero() -> None:
    assert quantile([0] * NBUCKETS, 0, 0.99) == 0.0


def add(w: Window, t: float, d: float, err: bool = False) -> None:
    if t >= w.end:
        w.rotate(t)
    w.cur.requests += 1
    w.cur.errors += err
    w.cur.hist[bisect_left(BOUNDS, d)] += 1


def test_a_window_forgets_requests_older_than_its_length() -> None:
    w = Window(10.0)
    for i in range(100):
        add(w, 100.0 + i * 0.1, 0.002, err=i < 50)  # 100.0 .. 109.9, the first half failed
    s = w.summary(109.95)
    assert (s.requests, s.errors) == (100, 50)
    s = w.summary(115.0)  # slices that ended before 105.0 are gone
    assert (s.requests, s.errors) == (50, 0)
    assert s.error_rate == 0.0
    assert w.summary(200.0).requests == 0


def test_a_cleared_window_starts_empty_and_counts_again() -> None:
    w = Window(10.0)
    add(w, 1.0, 0.5, err=True)
    w.clear()
    assert w.summary(1.5).requests == 0
    add(w, 2.0, 0.003)
    s = w.summary(2.0)
    assert (s.requests, s.errors) == (1, 0)
    assert 3.0 <= s.p99_ms <= 3.3
