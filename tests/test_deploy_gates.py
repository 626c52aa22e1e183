"""Canary gates and systemd state parsing: pure functions over edgeproxy's and systemd's output."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, cast

from hypothesis import assume, given
from hypothesis import strategies as st

from switchctl.client import AppView
from switchctl.deploy.config import Gates
from switchctl.deploy.gates import Evidence, binomial_tail, gate_verdict, step_evidence
from switchctl.deploy.proxyctl import parse_systemd_show


def view(green: dict[str, Any], blue: dict[str, Any] | None = None) -> AppView:
    return cast(
        AppView,
        {
            "active": "blue",
            "colors": {
                "blue": blue or {"requests": 1000, "errors_5xx": 0, "p99_ms": 10.0},
                "green": green,
            },
        },
    )


START = view({"requests": 0, "errors_5xx": 0}, {"requests": 0, "errors_5xx": 0})
GATES = Gates(max_error_rate=0.01, p99_factor=3.0, p99_min_ms=50, min_requests=20)


def ev(
    requests: int, errors: int, active_requests: int = 0, active_errors: int = 0, p99: float = 5
) -> Evidence:
    return Evidence("green", "blue", requests, errors, active_requests, active_errors, p99, 10.0)


def test_a_canary_within_its_gates_passes() -> None:
    now = view({"requests": 150, "errors_5xx": 1, "p99_ms": 40.0})
    start = view({"requests": 50, "errors_5xx": 1})
    assert gate_verdict(step_evidence(start, now, "green"), GATES) is None


def test_errors_and_requests_are_counted_since_the_step_began_for_both_colors() -> None:
    start = view({"requests": 100, "errors_5xx": 10}, {"requests": 500, "errors_5xx": 5})
    now = view(
        {"requests": 130, "errors_5xx": 12, "p99_ms": 7.0},
        {"requests": 770, "errors_5xx": 6, "p99_ms": 9.0},
    )
    assert step_evidence(start, now, "green") == Evidence("green", "blue", 30, 2, 270, 1, 7.0, 9.0)


def test_a_release_failing_every_request_fails_the_gate_at_its_second_request() -> None:
    assert gate_verdict(ev(1, 1), GATES) is None  # p = 0.01: not below the significance
    assert gate_verdict(ev(2, 2), GATES) == (
        "green answered 2 of 2 requests with 5xx (100.0%), above the 1.0% allowed "
        "(one-sided binomial test p=0.0001 < 0.01; blue: 0 of 0)"
    )


def test_a_canary_answering_half_its_requests_with_5xx_is_caught_well_below_min_requests() -> None:
    assert gate_verdict(ev(6, 3, active_requests=54), GATES) is not None


def test_a_failure_both_colors_share_is_not_blamed_on_the_release() -> None:
    assert gate_verdict(ev(10, 3, active_requests=90, active_errors=27), GATES) is None
    assert gate_verdict(ev(10, 9, active_requests=90, active_errors=9), GATES) is not None


def test_p99_judges_only_with_min_requests_and_above_both_the_factor_and_the_floor() -> None:
    assert gate_verdict(ev(19, 0, p99=900), GATES) is None
    assert gate_verdict(ev(100, 0, p99=45), GATES) is None  # 4.5x blue but under 50 ms
    assert gate_verdict(ev(100, 0, p99=200), GATES) == (
        "green's p99 latency is 200ms, above 50ms (3.0x blue's)"
    )


def exact_tail(k: int, n: int, p0: Fraction) -> Fraction:
    return sum(
        (math.comb(n, i) * p0**i * (1 - p0) ** (n - i) for i in range(k, n + 1)), Fraction(0)
    )


rates = st.fractions(
    min_value=Fraction(1, 1000), max_value=Fraction(999, 1000), max_denominator=1000
)


@given(n=st.integers(0, 60), data=st.data(), p0=rates)
def test_the_binomial_tail_matches_exact_rational_arithmetic(
    n: int, data: st.DataObject, p0: Fraction
) -> None:
    k = data.draw(st.integers(0, n))
    assert math.isclose(
        binomial_tail(k, n, float(p0)), float(exact_tail(k, n, p0)), rel_tol=1e-9, abs_tol=1e-300
    )


@given(n=st.integers(1, 3000), data=st.data(), p0=st.floats(0.0005, 0.3))
def test_more_errors_in_the_same_requests_never_turn_a_failed_gate_into_a_pass(
    n: int, data: st.DataObject, p0: float
) -> None:
    k = data.draw(st.integers(0, n - 1))
    assert binomial_tail(k + 1, n, p0) <= binomial_tail(k, n, p0)
    gates = Gates(max_error_rate=p0, min_requests=0)
    if gate_verdict(ev(n, k), gates) is not None:
        assert gate_verdict(ev(n, k + 1), gates) is not None


@given(n=st.integers(1, 5000), data=st.data(), p0=st.floats(0.0005, 0.3))
def test_an_error_share_at_or_below_the_allowed_rate_never_fails_the_gate(
    n: int, data: st.DataObject, p0: float
) -> None:
    k = data.draw(st.integers(0, math.floor(n * p0)))
    assert gate_verdict(ev(n, k), Gates(max_error_rate=p0, min_requests=0)) is None


@given(p0=st.floats(0.001, 0.2), alpha=st.floats(0.001, 0.1))
def test_a_release_failing_every_request_is_caught_once_p0_to_the_n_drops_below_alpha(
    p0: float, alpha: float
) -> None:
    exponent = math.log(alpha) / math.log(p0)
    assume(abs(exponent - round(exponent)) > 1e-6)  # not on the float boundary p0**n == alpha
    needed = math.floor(exponent) + 1  # the smallest n with p0**n < alpha
    gates = Gates(max_error_rate=p0, significance=alpha, min_requests=10_000)
    assert gate_verdict(ev(needed + 1, needed + 1), gates) is not None
    if needed > 1:
        assert gate_verdict(ev(needed - 1, needed - 1), gates) is None


def test_systemd_auto_restart_is_a_crash_loop_and_inactive_is_down() -> None:
    looping = parse_systemd_show(
        "edgeproxy.service",
        {
            "LoadState": "loaded",
            "ActiveState": "activating",
            "SubState": "auto-restart",
            "NRestarts": "7",
            "ExecMainStatus": "2",
        },
    )
    assert looping.status == "crash-looping"
    assert looping.detail == "edgeproxy.service restarted 7 times, last exit status 2"
    down = parse_systemd_show(
        "edgeproxy.service",
        {
            "LoadState": "loaded",
            "ActiveState": "inactive",
            "SubState": "dead",
            "NRestarts": "0",
            "ExecMainStatus": "0",
        },
    )
    assert down.status == "down"
    assert parse_systemd_show("x.service", {"LoadState": "not-found"}).status == "missing"
    running = parse_systemd_show(
        "edgeproxy.service", {"LoadState": "loaded", "ActiveState": "active", "SubState": "running"}
    )
    assert running.status is None
