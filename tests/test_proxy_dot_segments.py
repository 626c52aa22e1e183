"""Dot-segments cannot carry a request past a route's policies (issue 12, item 6).

Routes match on the path with `.`/`..` (and `%2e` spellings) resolved, and the
upstream gets that resolved path; a `..` above the root is a 400. One real
edgeproxy, real aiohttp backends, raw-socket clients; each test takes a request
that names an unguarded route (`/big/`: no rate limit, no body limit, no
extra headers) and climbs out of it into a guarded one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy_fixtures import Backend, Edge, raw_request

# Ways of writing "leave /big/ again", each resolving to the same path.
UP = [b"/big/..", b"/big/%2e%2e", b"/big/%2E./x/..", b"/big/./.%2e"]
UP_IDS = ["dots", "encoded", "mixed-case-encoded", "dot-then-encoded"]


@pytest.fixture
def proxy(
    backend: Callable[[str], Backend], edge: Callable[..., Edge]
) -> tuple[Edge, Backend, Backend]:
    shop, admin = backend("shop"), backend("admin")

    def route(path: str, **policy: Any) -> dict[str, Any]:
        return {"path": path, "app": "shop", **policy}

    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [shop.url]}}}},
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": False,
                    "routes": [
                        route("/"),
                        route("/big/", max_body=0, no_rate_limit=True),
                        route("/limited/", rate_limit={"rate": 0.01, "burst": 0}),
                        route("/small/", max_body=10),
                        route(
                            "/secure/",
                            response_headers={"X-Frame-Options": "DENY"},
                            hide_headers=["X-Backend"],
                        ),
                        route("/cors/", cors={"allow_origins": ["https://shop.test"]}),
                        route("/assets/", static_cache={}),
                        {"path": "/admin/", "upstream": admin.url, "strip_prefix": True},
                    ],
                }
            ],
        }
    )
    return e, shop, admin


def send(e: Edge, method: bytes, target: bytes, extra: bytes = b"", body: bytes = b"") -> bytes:
    return raw_request(
        e.http_port,
        method
        + b" "
        + target
        + b" HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n"
        + extra
        + (b"Content-Length: %d\r\n" % len(body) if body else b"")
        + b"\r\n"
        + body,
    )


def head_of(out: bytes) -> bytes:
    return out.split(b"\r\n\r\n", 1)[0].lower()


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_does_not_escape_the_rate_limit_of_the_route_it_resolves_to(proxy, up):
    e, shop, _ = proxy
    assert send(e, b"GET", b"/limited/x").startswith(b"HTTP/1.1 200 ")
    assert send(e, b"GET", up + b"/limited/x").startswith(b"HTTP/1.1 429 ")
    assert len(shop.seen) == 1


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_does_not_escape_the_body_limit_of_the_route_it_resolves_to(proxy, up):
    e, shop, _ = proxy
    out = send(e, b"POST", up + b"/small/x", body=b"b" * 100)
    assert out.startswith(b"HTTP/1.1 413 "), out[:100]
    assert shop.seen == []


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_gets_the_response_headers_of_the_route_it_resolves_to(proxy, up):
    e, _, _ = proxy
    head = head_of(send(e, b"GET", up + b"/secure/x"))
    assert head.startswith(b"http/1.1 200 ")
    assert b"\r\nx-frame-options: deny" in head
    assert b"\r\nx-backend:" not in head  # hidden on /secure/, passed on /big/


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_gets_the_cors_policy_of_the_route_it_resolves_to(proxy, up):
    e, shop, _ = proxy
    out = send(
        e,
        b"OPTIONS",
        up + b"/cors/x",
        b"Origin: https://shop.test\r\nAccess-Control-Request-Method: PUT\r\n",
    )
    assert out.startswith(b"HTTP/1.1 204 "), out[:100]
    assert b"access-control-allow-origin: https://shop.test" in head_of(out)
    assert shop.seen == []  # the preflight was answered by edgeproxy


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_gets_the_static_cache_policy_of_the_route_it_resolves_to(proxy, up):
    e, _, _ = proxy
    head = head_of(send(e, b"GET", up + b"/assets/app.js"))
    assert b"cache-control: public, max-age=31536000, immutable" in head


@pytest.mark.parametrize("up", UP, ids=UP_IDS)
def test_a_dot_segment_path_goes_to_the_upstream_of_the_route_it_resolves_to(proxy, up):
    e, shop, admin = proxy
    assert send(e, b"GET", up + b"/admin/users?next=/../x").startswith(b"HTTP/1.1 200 ")
    assert shop.seen == []
    # strip_prefix applies to the resolved path; the query string is left alone.
    assert [r.raw_path for r in admin.seen] == ["/users?next=/../x"]


def test_the_upstream_gets_the_resolved_path(proxy):
    e, shop, _ = proxy
    out = send(e, b"GET", b"/big/./a/%2e%2e/b/./c/..?q=/./")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert [r.raw_path for r in shop.seen] == ["/big/b/?q=/./"]


def test_a_path_without_dot_segments_reaches_the_upstream_unchanged(proxy):
    e, shop, _ = proxy
    send(e, b"GET", b"/big/.well-known/x%2ejs/..x/a%2Fb/%2e%2e%2e")
    assert [r.raw_path for r in shop.seen] == ["/big/.well-known/x%2ejs/..x/a%2Fb/%2e%2e%2e"]


@pytest.mark.parametrize("target", [b"/..", b"/../big/x", b"/%2e%2e/x", b"/big/../../x"])
def test_a_path_that_climbs_above_the_root_is_a_400_and_never_forwarded(proxy, target):
    e, shop, admin = proxy
    out = send(e, b"GET", target)
    assert out.startswith(b"HTTP/1.1 400 "), out[:100]
    assert shop.seen == [] and admin.seen == []
