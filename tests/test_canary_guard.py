"""The canary guard: a candidate doing worse than the active color loses its traffic."""

from __future__ import annotations

import http.client
import json
import time

from click.testing import CliRunner

from edgeproxy.config import CanaryGuard as GuardConfig
from edgeproxy.observability.guard import verdict
from edgeproxy.observability.stats import Summary
from switchctl.cli import cli
from switchctl.client import ControlClient
from tests.health_fixtures import (
    app_config,
    flaky_fixture,  # noqa: F401 - provides `flaky`
)

CFG = GuardConfig()  # min 100 requests, above 1% and 2x the active's, p99 3x and >= 50ms


def test_a_candidate_below_the_minimum_request_count_is_never_judged() -> None:
    assert verdict(CFG, "green", Summary(99, 99, 5000.0), "blue", Summary(1000, 0, 1.0)) is None


def test_an_error_rate_above_the_floor_and_the_factor_trips_the_guard_with_a_reason() -> None:
    reason = verdict(CFG, "green", Summary(200, 10, 2.0), "blue", Summary(600, 0, 2.0))
    assert reason == (
        "green failed 10 of 200 requests (5.00%) in the last 60s, above 1.00% and 2x blue's 0.00%"
    )


def test_an_error_rate_no_worse_than_the_factor_times_the_active_rate_passes() -> None:
    # 5% is above the 1% floor, but the active color fails 4% too: not the release's fault.
    assert verdict(CFG, "green", Summary(200, 10, 2.0), "blue", Summary(600, 24, 2.0)) is None
    # 1% exactly is not above the floor.
    assert verdict(CFG, "green", Summary(200, 2, 2.0), "blue", Summary(600, 0, 2.0)) is None


def test_a_p99_above_both_the_factor_and_the_floor_trips_the_guard() -> None:
    assert verdict(CFG, "green", Summary(200, 0, 40.0), "blue", Summary(600, 0, 5.0)) is None
    reason = verdict(CFG, "green", Summary(200, 0, 80.0), "blue", Summary(600, 0, 5.0))
    assert reason is not None and reason.startswith("green's p99 latency 80ms over 200 requests")
    assert verdict(CFG, "green", Summary(200, 0, 80.0), "blue", Summary(600, 0, 30.0)) is None


def request(conn: http.client.HTTPConnection, i: int) -> str:
    # Distinct client addresses (trusted X-Forwarded-For) spread requests over the buckets.
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    conn.request("GET", "/", headers={"Host": "a.test", "X-Forwarded-For": ip})
    return conn.getresponse().read().decode().strip()


def test_a_canary_at_25_percent_failing_5_percent_is_backed_out_and_every_later_request_goes_to_the_active_color(
    flaky, edge
):
    blue = flaky("blue")
    green = flaky("green", traffic=[500] + [200] * 19)  # 5% of its requests fail
    conf = app_config({"blue": [blue.url], "green": [green.url]}, health={"interval": 1.0})
    e = edge({**conf, "forwarding": {"trusted_proxies": ["127.0.0.0/8"]}})
    ctl = ControlClient(e.socket_path)
    ctl.set("shop", "green", 25)
    conn = http.client.HTTPConnection("127.0.0.1", e.http_port, timeout=10)
    sent = 0
    while ctl.app("shop")["guard"] is None:
        for _ in range(50):
            request(conn, sent)
            sent += 1
        assert sent < 20_000, "the guard never tripped"
    assert len(green.served) >= 100  # judged on at least min_requests
    assert 0.15 < len(green.served) / sent < 0.35
    view = ctl.app("shop")
    assert view["weights"] == {"blue": 100, "green": 0}
    assert view["candidate"] == "green" and view["weight"] == 0
    out = CliRunner().invoke(cli, ["--socket", str(e.socket_path), "--json", "status"])
    assert out.exit_code == 0, out.output
    guard = json.loads(out.output)["shop"]["guard"]
    assert guard["reason"].startswith("green failed ")
    assert "above 1.00% and 2x blue's 0.00%" in guard["reason"]
    served = len(green.served)
    answers = {request(conn, sent + i) for i in range(300)}
    assert answers == {"blue"}
    assert len(green.served) == served
    # Giving the candidate traffic again starts its window afresh: no instant re-trip.
    ctl.set("shop", "green", 25)
    time.sleep(1.5)  # more than one guard period (1 s with the 60 s window)
    view = ctl.app("shop")
    assert view["guard"] is None and view["weight"] == 25
    conn.close()
