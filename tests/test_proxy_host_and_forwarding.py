"""Host, and the headers that say who the client is, as the upstream receives them.

Real sockets: edgeproxy on port 0, an aiohttp backend whose `/headers` echoes
what it received, raw-socket clients (so the request is exactly what we write).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.proxy_fixtures import Backend, Edge, raw_request, site


def shop(
    backend: Callable[[str], Backend], edge: Callable[..., Edge], **extra: Any
) -> tuple[Edge, Backend]:
    b = backend("blue")
    conf: dict[str, Any] = {
        "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
        "sites": [site("shop")],
    }
    e = edge({**conf, **extra})
    return e, b


def echoed(out: bytes) -> dict[str, str]:
    """The headers the backend saw, from a raw `/headers` response."""
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    seen: dict[str, str] = json.loads(out.split(b"\r\n\r\n", 1)[1])
    return seen


def get_headers(port: int, head: bytes, *, source: str | None = None) -> dict[str, str]:
    return echoed(raw_request(port, head + b"Connection: close\r\n\r\n", source=source))


# -- item 4: Host -------------------------------------------------------------

BAD_HOSTS = [
    b"a.test:1@evil.example",
    b"a.test:abc",
    b"a.test:443/evil?",
    b"a.test/evil",
    b"evil.example@a.test",
    b"a.test?x",
    b"a.test#x",
    b"a.test x",
    b"a.test:1:2",
    b"a.test%2fevil",
    b"a.test,evil.example",
    b":443",
    b"[::1",
    b"[::1]x",
    b"[zz::1]",
    b"[::1%25eth0]",
    b"[]:80",
]


@pytest.mark.parametrize("host", BAD_HOSTS, ids=[h.decode() for h in BAD_HOSTS])
def test_a_host_that_is_not_host_and_digits_port_is_a_400_and_never_forwarded(backend, edge, host):
    e, b = shop(backend, edge)
    out = raw_request(e.http_port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b.seen == []


@pytest.mark.parametrize(
    "target",
    [b"http://a.test:abc/", b"http://a.test:1@evil.example/", b"http://a.test%40evil/x"],
)
def test_an_absolute_form_target_with_a_bad_authority_is_a_400(backend, edge, target):
    e, b = shop(backend, edge)
    out = raw_request(e.http_port, b"GET " + target + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b.seen == []


def test_an_absolute_form_target_replaces_the_clients_host_upstream(backend, edge):
    e, b = shop(backend, edge)
    seen = get_headers(
        e.http_port, b"GET http://a.test/headers?q=1 HTTP/1.1\r\nHost: evil.example\r\n"
    )
    assert seen["host"] == "a.test"
    assert seen["x-forwarded-host"] == "a.test"
    assert b.seen[0].path_qs == "/headers?q=1"


def test_an_absolute_form_target_with_a_port_is_forwarded_as_that_host_and_port(backend, edge):
    e, _ = shop(backend, edge)
    seen = get_headers(
        e.http_port, b"GET http://A.test:8443/headers HTTP/1.1\r\nHost: evil.example:80\r\n"
    )
    assert seen["host"] == "A.test:8443"
    assert seen["x-forwarded-host"] == "a.test:8443"


def test_a_host_with_an_empty_port_is_forwarded_without_the_colon(backend, edge):
    e, _ = shop(backend, edge)
    seen = get_headers(e.http_port, b"GET /headers HTTP/1.1\r\nHost: a.test:\r\n")
    assert seen["host"] == "a.test"
    assert seen["x-forwarded-host"] == "a.test"


def test_a_host_with_a_numeric_port_is_routed_and_forwarded_as_sent(backend, edge):
    e, _ = shop(backend, edge)
    seen = get_headers(e.http_port, b"GET /headers HTTP/1.1\r\nHost: a.test:8080\r\n")
    assert seen["host"] == "a.test:8080"
    assert seen["x-forwarded-host"] == "a.test:8080"


@pytest.mark.parametrize("host", [b"[::1]", b"[::1]:8080", b"127.0.0.1:80", b"no_site.test"])
def test_an_ip_literal_or_an_unknown_name_is_a_well_formed_host_that_no_site_takes(
    backend, edge, host
):
    e, b = shop(backend, edge)
    out = raw_request(e.http_port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404 "), out[:200]
    assert b.seen == []
