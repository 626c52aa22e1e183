"""Active health checks against real backends that refuse, hang, answer 500 and flap.

Detection is asserted from counts (the backend's own log of probes at the moment
edgeproxy changed its verdict), backoff from the spacing of probes in that log.
"""

from __future__ import annotations

import json
import re
import time
from itertools import pairwise
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeproxy.health.monitor import HealthMonitor
from switchctl.cli import cli
from switchctl.client import ControlClient, ControlError
from tests.health_fixtures import (
    Events,
    app_config,
    flaky_fixture,  # noqa: F401 - provides `flaky`
    monitor,
)
from tests.proxy_fixtures import http_get


def test_an_upstream_answering_500_is_unhealthy_after_exactly_the_threshold_and_recovers_after_the_healthy_threshold(
    flaky, edge
):
    blue = flaky("blue")
    conf = app_config(
        {"blue": [blue.url]}, health={"unhealthy_threshold": 3}, when_all_down="refuse"
    )
    e = edge(conf)
    assert http_get(e.http_port).body == b"blue\n"
    events = Events(e, lambda u: (blue.answered(500), blue.answered(200)))
    blue.health = [500]
    event, url, (fails, _) = events.next()
    assert (event, url, fails) == ("unhealthy", blue.url, 3)
    r = http_get(e.http_port)
    assert r.status == 503 and r.header("Retry-After") == "5"
    served = len(blue.served)
    health = ControlClient(e.socket_path).health()["apps"]["shop"]["blue"]
    assert health["healthy"] is False
    # "(3 in a row)" or more: probes go on while we look.
    assert health["failing_checks"][0].startswith(f"{blue.url}: GET /health → 500 (expected 200")
    assert health["upstreams"][0]["check"] == "failing"
    oks_before = blue.answered(200)
    blue.health = [200]
    event, url, (_, oks) = events.next()
    assert (event, oks - oks_before) == ("healthy", 2)
    assert http_get(e.http_port).body == b"blue\n"
    assert len(blue.served) == served + 1  # nothing reached it while it was unhealthy


def test_a_hanging_upstream_fails_its_check_by_timeout_and_the_failing_check_says_so(flaky, edge):
    blue = flaky("blue")
    e = edge(app_config({"blue": [blue.url]}, health={"timeout": 0.2, "unhealthy_threshold": 2}))
    events = Events(e, lambda u: blue.answered(0))
    blue.health = [0]
    event, _, hung = events.next()
    assert (event, hung) == ("unhealthy", 2)
    healthy, failing = e.run(_health(monitor(e), "blue"))
    assert not healthy
    assert len(failing) == 1
    assert failing[0].startswith(f"{blue.url}: GET /health: no answer within 0.2s (2 in a row); ")


async def _health(m: HealthMonitor, color: str) -> tuple[bool, list[str]]:
    return m.health("shop", color)


def test_a_refusing_upstream_is_detected_and_readmitted_when_it_listens_again(
    flaky, edge, backend_loop
):
    blue = flaky("blue")
    conf = app_config(
        {"blue": [blue.url]}, health={"unhealthy_threshold": 3}, when_all_down="refuse"
    )
    e = edge(conf)
    events = Events(e, lambda u: (u.check.failures, u.check.detail))
    backend_loop.run(blue.refuse())
    event, _, (failures, detail) = events.next()
    assert (event, failures) == ("unhealthy", 3)
    assert "cannot connect (connection refused)" in detail
    assert http_get(e.http_port).status == 503
    backend_loop.run(blue.listen())
    assert events.next()[0] == "healthy"
    assert http_get(e.http_port).body == b"blue\n"


def test_a_dead_upstream_is_probed_every_interval_without_backing_off(flaky, edge):
    blue = flaky("blue", health=[500])
    edge(app_config({"blue": [blue.url]}, health={"interval": 0.05}))
    deadline = time.monotonic() + 15
    while len(blue.probes) < 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    times = [t for t, _ in blue.probes[:12]]
    gaps = [b - a for a, b in pairwise(times)]
    assert len(gaps) == 11, blue.probes
    # Doubling from 0.05 s would make the last gaps 0.8 s and more.
    assert max(gaps[5:]) < 0.05 * 6, gaps


def test_a_backend_that_failed_many_checks_and_starts_answering_is_seen_healthy_within_two_intervals(
    flaky, edge
):
    interval = 0.2
    blue = flaky("blue")
    e = edge(
        app_config({"blue": [blue.url]}, health={"interval": interval, "unhealthy_threshold": 1})
    )
    events = Events(e, lambda u: time.monotonic())
    blue.health = [500]
    assert events.next()[0] == "unhealthy"
    time.sleep(3.0)  # many failed checks (a doubling back-off would wait 3.2 s for the next one)
    failed = blue.answered(500)
    assert failed >= 3, blue.probes
    answering = time.monotonic()
    blue.health = [200]
    event, _, seen = events.next()
    assert event == "healthy"
    # healthy_threshold 2: the first passing check comes at most one interval after the
    # backend answers, the second one interval later; the rest is slack for a busy machine.
    assert seen - answering < 2 * interval + 1.0, (seen - answering, blue.probes[failed - 3 :])
    assert blue.answered(200) >= 2


def test_a_flapping_upstream_keeps_its_verdict_while_no_threshold_is_reached(flaky, edge):
    blue = flaky("blue")
    e = edge(
        app_config(
            {"blue": [blue.url]},
            health={"healthy_threshold": 2, "unhealthy_threshold": 3},
            when_all_down="refuse",
        )
    )
    events = Events(e)
    start = len(blue.probes)
    blue.health = [200, 500, 500]  # never 3 failures in a row
    while len(blue.probes) < start + 12:
        time.sleep(0.05)
    assert events.none_within(0.01)
    assert http_get(e.http_port).body == b"blue\n"
    blue.health = [500, 500, 500, 200]  # 3 in a row: down; one pass never brings it back
    assert events.next()[0] == "unhealthy"
    start = len(blue.probes)
    while len(blue.probes) < start + 8:
        time.sleep(0.05)
    assert events.none_within(0.01)
    assert http_get(e.http_port).status == 503


def test_a_switch_to_an_unhealthy_color_is_refused_naming_the_failing_check_unless_forced(
    flaky, edge
):
    blue, green = flaky("blue"), flaky("green", health=[503])
    e = edge(app_config({"blue": [blue.url], "green": [green.url]}, when_all_down="refuse"))
    ctl = ControlClient(e.socket_path)
    with pytest.raises(ControlError) as err:
        ctl.set("shop", "green", 10)
    assert err.value.status == 409
    assert f"green is unhealthy ({green.url}: GET /health → 503" in str(err.value)
    assert ctl.app("shop")["weights"] == {"blue": 100, "green": 0}
    view = ctl.set("shop", "green", 100, force=True)
    assert view["active"] == "green"
    # The active color has no healthy upstream: edgeproxy does not flip back on its own
    # (and with `when_all_down: refuse`, does not panic-route to green either).
    r = http_get(e.http_port)
    assert r.status == 503 and r.header("Retry-After") == "5"
    assert ctl.app("shop")["colors"]["green"]["healthy"] is False
    assert blue.served == [] and green.served == []


def test_a_restored_active_color_must_pass_its_check_before_it_gets_traffic(
    flaky, edge, tmp_path: Path
):
    blue, green = flaky("blue"), flaky("green", health=[500])
    state = tmp_path / "restored.json"
    # `refuse`: with panic routing (the default) the restored color would be served anyway.
    conf = app_config({"blue": [blue.url], "green": [green.url]}, when_all_down="refuse")
    e = edge({**conf, "state_file": str(state)})
    ControlClient(e.socket_path).set("shop", "green", 100, force=True)
    e.run(e.server.shutdown())
    saved = json.loads(state.read_text())
    assert saved["apps"]["shop"]["active"] == "green"
    e2 = edge({**conf, "state_file": str(state)})  # a restart: green is restored as active
    assert http_get(e2.http_port).status == 503
    assert green.served == []
    green.health = [200]
    deadline = time.monotonic() + 10
    while http_get(e2.http_port).status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_get(e2.http_port).body == b"green\n"


def test_switchctl_health_and_status_show_each_upstream_with_its_failing_check(flaky, edge):
    good, bad = flaky("good"), flaky("bad", health=[500])
    e = edge(app_config({"blue": [good.url, bad.url], "green": [good.url]}))
    runner = CliRunner()
    out = runner.invoke(cli, ["--socket", str(e.socket_path), "health"])
    assert out.exit_code == 0, out.output
    assert good.url in out.output and bad.url in out.output
    assert "GET /health → 500" in out.output
    out = runner.invoke(cli, ["--socket", str(e.socket_path), "--json", "status"])
    assert out.exit_code == 0, out.output
    blue = json.loads(out.output)["shop"]["colors"]["blue"]
    assert blue["healthy"] is True  # one of its two upstreams is fit
    ups = {u["url"]: u for u in blue["upstreams"]}
    assert ups[good.url]["healthy"] is True and ups[bad.url]["healthy"] is False
    assert ups[bad.url]["check"] == "failing" and "→ 500" in ups[bad.url]["failing"]
    out = runner.invoke(cli, ["--socket", str(e.socket_path), "status"])
    assert out.exit_code == 0, out.output
    assert bad.url in out.output


def test_a_check_sends_its_host_header_and_accepts_the_configured_status_range(flaky, edge):
    blue = flaky("blue", health=[302])
    e = edge(
        app_config(
            {"blue": [blue.url]},
            health={"host": "health.internal", "expected_status": "200-399"},
        )
    )
    assert http_get(e.http_port).body == b"blue\n"
    assert set(blue.probe_hosts) == {"health.internal"}
    blue.health = [404]
    events = Events(e)
    assert events.next()[0] == "unhealthy"
    healthy, failing = e.run(_health(monitor(e), "blue"))
    assert not healthy and "GET /health → 404 (expected 200-399)" in failing[0]


def test_asking_about_a_color_that_failed_for_long_finds_it_healthy_soon_after_it_answers(
    flaky, edge
):
    blue, green = flaky("blue"), flaky("green", health=[500])
    e = edge(
        app_config(
            {"blue": [blue.url], "green": [green.url]},
            health={"interval": 0.05, "healthy_threshold": 1},
        )
    )
    while len(green.probes) < 6:
        time.sleep(0.05)
    green.health = [200]
    ctl = ControlClient(e.socket_path)
    deadline = time.monotonic() + 30
    while not ctl.app("shop")["colors"]["green"]["healthy"]:  # a deploy waiting for green
        assert time.monotonic() < deadline
        time.sleep(0.05)
    passed = [t for t, status in green.probes if status == 200]
    last_failed = max(t for t, status in green.probes if status == 500)
    assert passed[0] - last_failed < 1.0  # a back-off after six failures would be 3.2 s
    assert ctl.set("shop", "green", 10)["weights"] == {"blue": 90, "green": 10}


def test_switchctl_set_refused_for_an_unhealthy_color_says_how_long_until_its_next_check(
    flaky, edge
):
    blue, green = flaky("blue"), flaky("green", health=[503])
    interval = 2.0
    e = edge(
        app_config(
            {"blue": [blue.url], "green": [green.url]},
            health={"interval": interval, "unhealthy_threshold": 1},
        )
    )
    out = CliRunner().invoke(
        cli, ["--socket", str(e.socket_path), "--app", "shop", "set", "green", "--weight", "10"]
    )
    assert out.exit_code == 1, out.output
    message = out.output
    assert f"green is unhealthy ({green.url}: GET /health → 503" in message
    found = re.search(r"next check in (\d+\.\d)s, healthy after 2 passing in a row", message)
    assert found is not None, message
    assert 0.0 <= float(found.group(1)) <= interval
    ctl = ControlClient(e.socket_path)
    assert ctl.app("shop")["weights"] == {"blue": 100, "green": 0}
    upstream = ctl.health()["apps"]["shop"]["green"]["upstreams"][0]
    assert 0.0 <= upstream["next_check"] - time.time() <= interval
