"""Waiting with exponential backoff, jitter and a deadline (a pure loop on a fake clock)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchctl.deploy.health import Probe, WaitTimeout, delays, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def test_waits_grow_exponentially_up_to_the_cap_and_stop_when_the_check_passes() -> None:
    clock = Clock()
    answers = iter([False] * 6 + [True])
    probe = wait_until(
        lambda: Probe(next(answers), "GET /health"),
        "green healthy",
        deadline=100,
        first=1,
        maximum=8,
        clock=clock,
        sleep=clock.sleep,
        rng=lambda: 1.0,
    )
    assert probe.ok
    assert clock.sleeps == [1, 2, 4, 8, 8, 8]


def test_the_deadline_ends_the_wait_with_the_last_check_output() -> None:
    clock = Clock()
    with pytest.raises(WaitTimeout) as e:
        wait_until(
            lambda: Probe(False, "503 from /health"),
            "green healthy",
            deadline=10,
            first=1,
            maximum=4,
            clock=clock,
            sleep=clock.sleep,
            rng=lambda: 0.5,
        )
    assert clock.now == 10
    assert "not after 10.0s" in str(e.value)
    assert "last: 503 from /health" in str(e.value)


def test_a_fatal_probe_ends_the_wait_at_once() -> None:
    clock = Clock()
    with pytest.raises(WaitTimeout, match="gave up"):
        wait_until(
            lambda: Probe(False, "container exited (1)", fatal=True),
            "x",
            60,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == []


@given(st.floats(0.01, 2), st.floats(2, 30), st.integers(0, 40), st.floats(0, 1))
def test_jittered_delay_stays_between_half_and_all_of_the_capped_exponential(
    first: float, maximum: float, n: int, r: float
) -> None:
    base = min(maximum, first * 2.0**n)
    d = delays(first, maximum, lambda: r)(n)
    assert base / 2 <= d <= base
