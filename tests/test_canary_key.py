"""`apps.NAME.canary_key`: what puts a visitor in a canary bucket (client address,
a named header, or a fresh bucket per request), end to end on real sockets."""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from edgeproxy.config import App
from switchctl.client import ControlClient
from tests.proxy_fixtures import Backend, Edge, site


def canary_at_10(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], **app: Any
) -> tuple[Edge, ControlClient]:
    blue, green = backend("blue"), backend("green")
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    **app,
                }
            },
            "sites": [site("shop")],
        }
    )
    ctl = ControlClient(e.socket_path)
    ctl.set("shop", "green", 10)
    return e, ctl


def server_side_calls(
    port: int, n: int, header: Callable[[int], dict[str, str]]
) -> tuple[Counter[str], int]:
    """`n` requests from one address (127.0.0.1) on one keep-alive connection, like a
    storefront server rendering pages for many shoppers: (colors, Set-Cookie count)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    colors: Counter[str] = Counter()
    cookies = 0
    for i in range(n):
        conn.request("GET", "/", headers={"Host": "a.test", **header(i)})
        r = conn.getresponse()
        colors[r.read().decode().strip()] += 1
        cookies += r.getheader("Set-Cookie") is not None
    conn.close()
    return colors, cookies


def test_by_default_one_address_puts_all_or_none_of_its_requests_on_the_candidate(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e, _ = canary_at_10(edge, backend)
    colors, _ = server_side_calls(e.http_port, 300, lambda i: {"X-Shopper-Id": f"s{i}"})
    assert len(colors) == 1  # the problem the key solves: one bucket for the whole server


def test_a_server_side_caller_from_one_address_with_a_per_shopper_header_splits_about_10_percent(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e, _ = canary_at_10(edge, backend, canary_key="header:X-Shopper-Id")
    colors, _ = server_side_calls(e.http_port, 2000, lambda i: {"X-Shopper-Id": f"shopper-{i}"})
    assert set(colors) == {"blue", "green"}
    share = colors["green"] / 2000 * 100
    assert 8.0 <= share <= 12.0, share


def test_a_shopper_keeps_its_color_across_requests_with_the_header_key(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e, _ = canary_at_10(edge, backend, canary_key="header:X-Shopper-Id")
    first, _ = server_side_calls(e.http_port, 200, lambda i: {"x-shopper-id": f"p{i}"})
    again, _ = server_side_calls(e.http_port, 200, lambda i: {"X-SHOPPER-ID": f"p{i}"})
    assert first == again
    assert first["green"] > 0


def test_without_the_header_the_client_address_is_the_key(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e, _ = canary_at_10(edge, backend, canary_key="header:X-Shopper-Id")
    colors, cookies = server_side_calls(e.http_port, 100, lambda i: {})
    assert len(colors) == 1
    assert cookies == 100  # a browser gets the sticky cookie as before


def test_a_per_request_key_splits_one_address_about_10_percent_and_sets_no_cookie(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    e, _ = canary_at_10(edge, backend, canary_key="request")
    colors, cookies = server_side_calls(e.http_port, 2000, lambda i: {})
    share = colors["green"] / 2000 * 100
    assert 8.0 <= share <= 12.0, share
    assert cookies == 0


@pytest.mark.parametrize("key", ["request", "header:X-Shopper-Id"])
def test_a_sticky_cookie_still_wins_over_the_configured_key(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], key: str
) -> None:
    e, _ = canary_at_10(edge, backend, canary_key=key)
    on_green = {"Cookie": "edgeproxy_canary=green.5", "X-Shopper-Id": "x"}
    on_blue = {"Cookie": "edgeproxy_canary=blue.9999", "X-Shopper-Id": "x"}
    assert server_side_calls(e.http_port, 50, lambda i: on_green)[0] == {"green": 50}
    assert server_side_calls(e.http_port, 50, lambda i: on_blue)[0] == {"blue": 50}


@pytest.mark.parametrize("bad", ["header:", "header:X Shopper", "cookie:x", "ip", ""])
def test_a_canary_key_that_is_not_one_of_the_three_forms_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="must be client_ip, request, or header:NAME"):
        App.model_validate(
            {"colors": {"blue": {"upstreams": ["http://127.0.0.1:1"]}}, "canary_key": bad}
        )
