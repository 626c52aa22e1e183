"""Passive ejection: failed requests take an upstream out for a growing cool-down."""

from __future__ import annotations

import socket

from switchctl.client import ControlClient
from tests.health_fixtures import (
    Events,
    app_config,
    flaky_fixture,  # noqa: F401 - provides `flaky`
)
from tests.proxy_fixtures import http_get


def ejection(n: int, base: float, max_seconds: float = 60.0) -> dict[str, float]:
    return {"consecutive_failures": n, "base_seconds": base, "max_seconds": max_seconds}


def test_consecutive_500s_eject_an_upstream_its_peer_serves_meanwhile_and_it_comes_back_for_longer_each_time(
    flaky, edge
):
    good, bad = flaky("good"), flaky("bad", traffic=[500])
    e = edge(
        app_config(
            {"blue": [good.url, bad.url]}, health={"interval": 5.0}, ejection=ejection(3, 1.5)
        )
    )

    events = Events(e, lambda u: (len(bad.served), u.eject.ejected_until, u.eject.multiplier))
    statuses = []
    while events.q.empty():
        statuses.append(http_get(e.http_port).status)
        assert len(statuses) < 20
    event, url, (served_at_ejection, _, multiplier) = events.next()
    assert (event, url, served_at_ejection, multiplier) == ("ejected", bad.url, 3, 1)
    assert statuses.count(500) == 3  # round robin: the good one answered the others
    # Ejected: every request goes to the good upstream; the view says why.
    for _ in range(10):
        assert http_get(e.http_port).body == b"good\n"
    assert len(bad.served) == 3
    ups = {
        u["url"]: u for u in ControlClient(e.socket_path).app("shop")["colors"]["blue"]["upstreams"]
    }
    assert ups[bad.url]["ejected"] is True and ups[bad.url]["ejections"] == 1
    assert "ejected after 3 failed requests in a row (answered 500)" in ups[bad.url]["failing"]
    assert events.next()[0] == "readmitted"
    # Back in rotation, it fails again and is ejected for twice as long.
    for _ in range(20):
        if not events.q.empty():
            break
        http_get(e.http_port)
    event, _, (served, _until, multiplier) = events.next()
    assert (event, served, multiplier) == ("ejected", 6, 2)


def test_connect_errors_eject_every_upstream_and_the_color_answers_503_with_retry_after(
    flaky, edge
):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens: connection refused
    url = f"http://127.0.0.1:{port}"
    e = edge(
        app_config(
            {"blue": [url]},
            health={"enabled": False},
            ejection=ejection(2, 30.0),
            when_all_down="refuse",
        )
    )
    events = Events(e)
    assert [http_get(e.http_port).status for _ in range(2)] == [502, 502]
    assert events.next()[:2] == ("ejected", url)
    r = http_get(e.http_port)
    assert r.status == 503 and r.header("Retry-After") == "5"
    view = ControlClient(e.socket_path).app("shop")["colors"]["blue"]
    assert view["healthy"] is False
    assert view["failing_checks"][0].startswith(
        f"{url}: ejected after 2 failed requests in a row (connect failed: "
    )
    assert view["upstreams"][0]["check"] == "disabled"


def test_with_panic_routing_a_color_whose_every_upstream_is_ejected_still_gets_requests_and_their_answers_decide(
    flaky, edge
):
    good = flaky("good", traffic=[500, 500, 200])
    e = edge(
        app_config({"blue": [good.url]}, health={"enabled": False}, ejection=ejection(2, 30.0))
    )
    events = Events(e)
    assert [http_get(e.http_port).status for _ in range(2)] == [500, 500]
    assert events.next()[:2] == ("ejected", good.url)
    # Ejected, the only upstream: panic routing (the default) still sends the request,
    # and the upstream's own answer decides.
    assert http_get(e.http_port).body == b"good\n"
    assert len(good.served) == 3
