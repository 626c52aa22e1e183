"""Panic routing: every upstream of the color fails its health check but still serves.

Real backends whose /health is broken while / keeps answering 200 (a wrong
health path, or a /health too slow under load): `when_all_down: route` (the
default) sends visitors to them anyway, `refuse` answers 503.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from switchctl.client import ControlClient
from tests.health_fixtures import (
    Events,
    app_config,
    flaky_fixture,  # noqa: F401 - provides `flaky`
)
from tests.proxy_fixtures import http_get, raw_request


def panic_routed(ctl: ControlClient, color: str) -> float:
    name = "edgeproxy_panic_routed_total"
    for line in ctl.metrics().splitlines():
        if line.startswith(f'{name}{{app="shop",color="{color}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} sample for {color}")


def panic_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "panic routing:" in r.getMessage()]


def test_visitors_get_200_when_every_upstream_of_the_active_color_fails_its_check_but_serves(
    flaky, edge, caplog: pytest.LogCaptureFixture, tmp_path: Path
):
    one, two = flaky("one", health=[500]), flaky("two", health=[404])
    access = tmp_path / "access.log"
    conf = app_config({"blue": [one.url, two.url]}, health={"unhealthy_threshold": 1})
    with caplog.at_level(logging.INFO, logger="edgeproxy"):
        e = edge({**conf, "access_log": {"path": str(access)}})
        ctl = ControlClient(e.socket_path)
        assert ctl.app("shop")["colors"]["blue"]["healthy"] is False
        bodies = Counter(http_get(e.http_port).body for _ in range(10))
        assert bodies == {b"one\n": 5, b"two\n": 5}  # round-robin over the unfit upstreams
        assert len(one.served) + len(two.served) == 10
        assert panic_routed(ctl, "blue") == 10
        assert ctl.app("shop")["colors"]["blue"]["panic_routed"] == 10
        assert len(panic_warnings(caplog)) == 1  # once per entry into panic, not per request
        assert "shop/blue: no upstream is fit for traffic" in panic_warnings(caplog)[0]

        events = Events(e)
        one.health = [200]
        assert events.next()[:2] == ("healthy", one.url)
        assert http_get(e.http_port).body == b"one\n"  # the fit one only, no more panic
        assert panic_routed(ctl, "blue") == 10
        assert "shop/blue: " + one.url + " is fit again; panic routing ends" in caplog.text
        one.health = [500]
        assert events.next()[:2] == ("unhealthy", one.url)
        assert http_get(e.http_port).status == 200
        assert len(panic_warnings(caplog)) == 2  # a new entry into panic is logged again
    e.run(e.server.shutdown())  # flushes the access log
    lines = [json.loads(line) for line in access.read_text().splitlines()]
    assert [line.get("panic") for line in lines] == [True] * 10 + [None, True]


def test_with_when_all_down_refuse_visitors_get_503_when_every_upstream_fails_its_check(
    flaky, edge
):
    one = flaky("one", health=[500])
    e = edge(app_config({"blue": [one.url]}, when_all_down="refuse"))
    ctl = ControlClient(e.socket_path)
    for _ in range(3):
        r = http_get(e.http_port)
        assert r.status == 503 and r.header("Retry-After") == "5"
    assert one.served == []
    assert panic_routed(ctl, "blue") == 0


def test_a_canary_with_nothing_fit_still_falls_back_to_a_fit_active_color_before_any_panic(
    flaky, edge
):
    blue, green = flaky("blue"), flaky("green", health=[500])
    e = edge(app_config({"blue": [blue.url], "green": [green.url]}))
    ctl = ControlClient(e.socket_path)
    ctl.set("shop", "green", 50, force=True)
    get = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    for i in range(20):
        assert raw_request(e.http_port, get, source=f"127.0.8.{i + 1}").endswith(b"blue\n")
    assert green.served == []
    assert panic_routed(ctl, "blue") == panic_routed(ctl, "green") == 0


def test_when_the_canary_and_the_active_color_are_both_down_visitors_are_panic_routed_to_the_active(
    flaky, edge
):
    blue, green = flaky("blue", health=[500]), flaky("green", health=[500])
    e = edge(app_config({"blue": [blue.url], "green": [green.url]}))
    ctl = ControlClient(e.socket_path)
    ctl.set("shop", "green", 50, force=True)
    get = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    for i in range(20):
        assert raw_request(e.http_port, get, source=f"127.0.8.{i + 1}").endswith(b"blue\n")
    assert len(blue.served) == 20 and green.served == []
    assert panic_routed(ctl, "blue") == 20
