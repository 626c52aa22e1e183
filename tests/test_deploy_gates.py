"""Canary gates and systemd state parsing: pure functions over edgeproxy's and systemd's output."""

from __future__ import annotations

from typing import Any, cast

from switchctl.client import AppView
from switchctl.deploy.config import Gates
from switchctl.deploy.execute import gate_verdict
from switchctl.deploy.proxyctl import parse_systemd_show


def view(green: dict[str, Any], blue_p99: float = 10.0) -> AppView:
    return cast(
        AppView,
        {
            "active": "blue",
            "colors": {
                "blue": {"requests": 1000, "errors_5xx": 0, "p99_ms": blue_p99},
                "green": green,
            },
        },
    )


GATES = Gates(max_error_rate=0.01, p99_factor=3.0, p99_min_ms=50, min_requests=20)


def test_a_canary_within_its_gates_passes() -> None:
    v = view({"requests": 150, "errors_5xx": 1, "p99_ms": 40.0})
    assert gate_verdict(v, "green", base_req=50, base_err=1, gates=GATES) is None


def test_errors_are_counted_since_the_step_began_not_since_the_color_started() -> None:
    v = view({"requests": 130, "errors_5xx": 12, "p99_ms": 5.0})
    assert gate_verdict(v, "green", base_req=100, base_err=10, gates=GATES) == (
        "green answered 2 of 30 requests with 5xx (6.7% > 1.0%)"
    )


def test_too_few_requests_cannot_fail_the_gate() -> None:
    v = view({"requests": 10, "errors_5xx": 10, "p99_ms": 900.0})
    assert gate_verdict(v, "green", base_req=0, base_err=0, gates=GATES) is None


def test_p99_fails_only_above_both_the_factor_and_the_floor() -> None:
    slow = view({"requests": 100, "errors_5xx": 0, "p99_ms": 45.0}, blue_p99=5.0)
    assert gate_verdict(slow, "green", 0, 0, GATES) is None  # 9x blue but under 50 ms
    slower = view({"requests": 100, "errors_5xx": 0, "p99_ms": 200.0}, blue_p99=40.0)
    assert gate_verdict(slower, "green", 0, 0, GATES) == (
        "green's p99 latency is 200ms, above 120ms (3.0x blue's)"
    )


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
