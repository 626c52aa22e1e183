"""`apps.NAME.first_release: hold`: on a server where an app was never released,
visitors get a 503 maintenance answer until the first deploy has smoke-tested a
color (tester override) and released it at weight 100."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.errors import SwitchError
from edgeproxy.switching import state as sw
from switchctl.cli import format_status, format_weights
from switchctl.client import ControlClient, ControlError
from switchctl.deploy.plan import Intent, ProxyObs, plan
from tests import medusa_fixtures
from tests.medusa_fixtures import API, Shop
from tests.proxy_fixtures import Backend, Edge, http_get, site

shop = medusa_fixtures.shop  # the shipped compose/medusa configs through a real edgeproxy
COLORS = ("blue", "green")


def held(edge: Callable[..., Edge], backend: Callable[[str], Backend], **app: Any) -> Edge:
    blue, green = backend("blue"), backend("green")
    return edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    "first_release": "hold",
                    **app,
                }
            },
            "sites": [site("shop")],
        }
    )


def test_visitors_get_a_503_maintenance_answer_with_retry_after_before_the_first_release(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e = held(edge, backend)
    for _ in range(3):
        r = http_get(e.http_port, "/")
        assert r.status == 503
        assert r.header("Retry-After") == "30"
        assert b"not released yet" in r.body


def test_a_tester_override_reaches_the_named_color_before_the_first_release(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e = held(edge, backend)
    r = http_get(e.http_port, "/", **{"X-Edgeproxy-Color": "green"})
    assert (r.status, r.body, r.header("X-Edgeproxy-Color")) == (200, b"green\n", "green")
    r = http_get(e.http_port, "/", **{"X-Edgeproxy-Color": "purple"})
    assert r.status == 503 and b"override asks for purple" in r.body


def test_a_canary_step_on_a_never_released_app_is_refused_and_weight_100_releases_it(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e = held(edge, backend)
    ctl = ControlClient(e.socket_path)
    assert ctl.app("shop")["released"] is False
    with pytest.raises(ControlError, match="was never released"):
        ctl.set("shop", "green", 10)
    assert http_get(e.http_port, "/").status == 503
    view = ctl.set("shop", "green", 100)
    assert (view["released"], view["active"], view["previous"]) == (True, "green", None)
    assert {http_get(e.http_port, "/").body for _ in range(5)} == {b"green\n"}
    saved = json.loads(Path(e.config.state_file).read_text())
    assert saved["apps"]["shop"]["released"] is True


def test_panic_routing_never_sends_visitors_to_a_color_not_released(
    edge: Callable[..., Edge], tmp_path: Path
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {"blue": {"upstreams": [dead]}, "green": {"upstreams": [dead]}},
                    "first_release": "hold",
                    "when_all_down": "route",
                }
            },
            "sites": [site("shop")],
        }
    )
    r = http_get(e.http_port, "/")
    assert r.status == 503 and b"not released yet" in r.body


def test_a_fresh_app_without_hold_serves_its_default_color_at_once(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e = held(edge, backend, first_release="serve")
    assert http_get(e.http_port, "/").body == b"blue\n"
    assert ControlClient(e.socket_path).app("shop")["released"] is True


def test_a_saved_state_keeps_serving_whatever_first_release_says(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tmp_path: Path
) -> None:
    old = {  # written before `released` existed
        "version": 1,
        "apps": {"shop": {"colors": ["blue", "green"], "active": "green", "generation": 4}},
    }
    state_file = tmp_path / "old-state.json"
    state_file.write_text(json.dumps(old))
    blue, green = backend("blue"), backend("green")
    e = edge(
        {
            "state_file": str(state_file),
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    "first_release": "hold",
                }
            },
            "sites": [site("shop")],
        }
    )
    assert http_get(e.http_port, "/").body == b"green\n"


# --- the pure state ---------------------------------------------------------------------


def test_an_app_not_released_gives_no_color_any_weight_and_round_trips_through_the_file() -> None:
    s = sw.initial("shop", COLORS, "blue", released=False)
    assert sw.weights(s) == {"blue": 0, "green": 0}
    assert "not-released" in s.summary()
    assert sw.from_json(sw.to_json({"shop": s}))["shop"] == s
    restored = sw.restore(sw.to_json({"shop": s}))
    assert restored.states["shop"] == s and restored.set_aside == {}


@given(st.sampled_from(COLORS), st.integers(0, 99))
def test_only_weight_100_releases_a_never_released_app(color: str, weight: int) -> None:
    s = sw.initial("shop", COLORS, "blue", released=False)
    with pytest.raises(SwitchError, match=f"switchctl set {color} --weight 100"):
        sw.set_color(s, color, weight, 1.0)
    out = sw.set_color(s, color, 100, 1.0)
    assert (out.released, out.active, out.candidate, out.previous) == (True, color, None, None)
    assert sum(sw.weights(out).values()) == 100


def test_a_saved_not_released_record_with_a_previous_color_is_restored_as_released() -> None:
    text = json.dumps(
        {
            "version": 1,
            "apps": {
                "shop": {
                    "colors": ["blue", "green"],
                    "active": "blue",
                    "previous": "green",
                    "released": False,
                }
            },
        }
    )
    restored = sw.restore(text)
    assert restored.states["shop"].released is True
    assert any("released" in n for n in restored.set_aside["shop"])


# --- switchctl ----------------------------------------------------------------------------


def test_a_first_deploy_on_a_held_app_smoke_tests_then_goes_live_even_with_blue_running() -> None:
    px = ProxyObs(status="up", active="blue", healthy={"blue": True}, released=False)
    from tests.test_deploy_plan import obs, running

    p = plan(obs(running("blue"), proxy=px), Intent(has_pre_deploy=False, has_post_deploy=False))
    kinds = [s.kind for s in p.steps]
    assert (p.live, p.target) == (None, "blue")
    assert kinds.index("smoke") < kinds.index("go_live")
    assert "canary" not in kinds and "promote" not in kinds
    assert "retire" in kinds  # the unfinished first deploy's containers are replaced
    released = plan(obs(running("blue"), proxy=replace(px, released=True)), Intent(False, False))
    assert released.live == "blue"


def test_switchctl_status_says_the_app_is_not_released_yet() -> None:
    view: Any = {
        "app": "shop",
        "active": "blue",
        "candidate": None,
        "weight": 0,
        "weights": {"blue": 0, "green": 0},
        "previous": None,
        "draining": {},
        "paused": False,
        "released": False,
        "generation": 0,
        "changed_at": 0.0,
        "guard": None,
        "colors": {},
    }
    assert "not released yet" in format_status({"shop": view}, now=0.0)
    assert "not released yet" in format_weights(view)


def test_the_shipped_medusa_config_holds_visitors_while_the_first_deploys_smoke_checks_pass(
    shop: Callable[..., Shop],
) -> None:
    s = shop(first_release="hold")  # as shipped in compose/medusa/edgeproxy.yml
    visitor = http_get(s.edge.http_port, "/store/products", host=API)
    assert visitor.status in (301, 308)  # the shipped config redirects http: check over TLS
    assert s.failures("blue") == []  # deploy.yml's smoke checks, through the override
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", s.edge.https_port, context=ctx, timeout=10)
    conn.request("GET", "/store/products", headers={"Host": API})
    r = conn.getresponse()
    assert (r.status, r.getheader("Retry-After")) == (503, "30")
    r.read()
    ControlClient(s.edge.socket_path).set("medusa", "blue", 100)  # what go_live does
    conn.request("GET", "/health", headers={"Host": API})
    r = conn.getresponse()
    assert r.status == 200
    conn.close()


@given(st.booleans(), st.booleans(), st.sampled_from(COLORS), st.integers(0, 100), st.booleans())
def test_the_fast_path_flag_is_exactly_released_not_paused_and_no_candidate(
    released: bool, paused: bool, color: str, weight: int, set_first: bool
) -> None:
    s = sw.initial("shop", COLORS, "blue", released=released)
    if set_first and (weight == 100 or (released and color != "blue")):
        s = sw.set_color(s, color, weight, 1.0)
    if paused:
        s = sw.pause(s, 2.0)
    assert s.plain == (s.released and not s.paused and s.candidate is None)
    assert sw.from_json(sw.to_json({"shop": s}))["shop"].plain == s.plain
