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
    out = raw_request(
        e.http_port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 404 "), out[:200]
    assert b.seen == []


# -- item 5: the client address, X-Real-IP, Forwarded, X-Request-ID ----------

BEHIND_PROXIES = {"forwarding": {"trusted_proxies": ["127.0.0.0/8", "10.0.0.0/8"]}}


def test_behind_trusted_proxies_the_client_is_the_rightmost_forwarded_address_not_trusted(
    backend, edge
):
    e, _ = shop(backend, edge, **BEHIND_PROXIES)
    seen = get_headers(
        e.http_port,
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n"
        b"X-Forwarded-For: 198.51.100.1, 203.0.113.9, 10.0.0.2\r\n",
    )
    # 10.0.0.2 is a trusted hop; 198.51.100.1 is whatever the client wrote.
    assert seen["x-real-ip"] == "203.0.113.9"
    assert seen["x-forwarded-for"] == "198.51.100.1, 203.0.113.9, 10.0.0.2, 127.0.0.1"


@pytest.mark.parametrize(
    ("entry", "client"),
    [(b"203.0.113.9:4711", "203.0.113.9"), (b"[2001:db8::1]:80", "2001:db8::1")],
)
def test_a_forwarded_address_with_a_port_is_read_as_the_address(backend, edge, entry, client):
    e, _ = shop(backend, edge, **BEHIND_PROXIES)
    seen = get_headers(
        e.http_port, b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: " + entry + b"\r\n"
    )
    assert seen["x-real-ip"] == client


def test_a_forged_x_real_ip_behind_a_trusted_proxy_is_ignored_and_replaced(backend, edge):
    e, _ = shop(backend, edge, **BEHIND_PROXIES)
    seen = get_headers(
        e.http_port,
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n"
        b"X-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 203.0.113.9\r\n",
    )
    assert seen["x-real-ip"] == "203.0.113.9"
    assert "1.2.3.4" not in json.dumps(seen)


def test_a_forged_x_real_ip_cannot_pass_the_override_allowlist_to_pick_a_color(backend, edge):
    blue, green = backend("blue"), backend("green")
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    }
                }
            },
            "sites": [site("shop")],
            **BEHIND_PROXIES,
        }
    )
    head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Edgeproxy-Color: green\r\nConnection: close\r\n"
    # The override is honoured from loopback (allow_from's default)...
    assert raw_request(e.http_port, head + b"\r\n").endswith(b"\r\n\r\ngreen\n")
    # ... but a visitor behind the proxy claiming loopback in X-Real-IP is not loopback.
    forged = head + b"X-Real-IP: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
    assert raw_request(e.http_port, forged).endswith(b"\r\n\r\nblue\n")
    assert len(green.seen) == 1


def test_a_client_rotating_forged_x_real_ip_values_is_rate_limited_as_one_client(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop", rate_limit={"rate": 0.01, "burst": 0})],
            **BEHIND_PROXIES,
        }
    )
    statuses = [
        raw_request(
            e.http_port,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n"
            b"X-Real-IP: 198.51.100.%d\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n" % i,
        )[9:12]
        for i in range(3)
    ]
    assert statuses == [b"200", b"429", b"429"]


def test_the_access_log_records_the_client_address_found_behind_a_trusted_proxy(
    backend, edge, tmp_path
):
    from edgeproxy.app import Observability

    log = tmp_path / "access.log"
    e, _ = shop(backend, edge, access_log={"path": str(log)}, **BEHIND_PROXIES)
    get_headers(
        e.http_port,
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n"
        b"X-Real-IP: 1.2.3.4\r\nX-Forwarded-For: 203.0.113.9\r\n",
    )

    async def flush() -> None:
        obs = next(p for p in e.server.plugins if isinstance(p, Observability))
        assert obs.access_log is not None
        obs.access_log.flush()

    e.run(flush())
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["client"] == "203.0.113.9"


def test_x_real_ip_is_believed_from_a_trusted_peer_only_when_real_ip_header_names_it(backend, edge):
    e, _ = shop(
        backend,
        edge,
        forwarding={"trusted_proxies": ["127.0.0.2/32"], "real_ip_header": "X-Real-IP"},
    )
    head = (
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n"
        b"X-Real-IP: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\n"
    )
    trusted = get_headers(e.http_port, head, source="127.0.0.2")
    assert trusted["x-real-ip"] == "203.0.113.7"
    assert trusted["x-forwarded-for"] == "198.51.100.1, 127.0.0.2"
    untrusted = get_headers(e.http_port, head, source="127.0.0.3")
    assert untrusted["x-real-ip"] == "127.0.0.3"
    assert untrusted["x-forwarded-for"] == "127.0.0.3"


def test_a_clients_forwarded_header_never_reaches_the_upstream(backend, edge):
    e, _ = shop(backend, edge)
    seen = get_headers(
        e.http_port,
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\n"
        b"Forwarded: for=6.6.6.6;host=evil.example;proto=https\r\n",
    )
    assert "forwarded" not in seen
    assert "6.6.6.6" not in json.dumps(seen)


UNSAFE_REQUEST_IDS = [b'abc"<script>', b"a;b=c", b"a\\b", b"x" * 129, b"id with space"]


@pytest.mark.parametrize(
    "rid", UNSAFE_REQUEST_IDS, ids=["quote", "semicolon", "backslash", "129", "space"]
)
def test_an_unsafe_or_long_client_request_id_is_replaced(backend, edge, rid):
    e, _ = shop(backend, edge)
    out = raw_request(
        e.http_port,
        b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Request-ID: " + rid + b"\r\n"
        b"Connection: close\r\n\r\n",
    )
    seen = echoed(out)
    assert seen["x-request-id"] != rid.decode()
    assert b"x-request-id: " + seen["x-request-id"].encode() + b"\r\n" in out.lower()


def test_a_short_plain_client_request_id_is_kept(backend, edge):
    e, _ = shop(backend, edge)
    rid = b"4bf92f35-77b3-4da6-a3ce-929d0e0e4736:00f067aa0ba902b7+/="
    seen = get_headers(
        e.http_port, b"GET /headers HTTP/1.1\r\nHost: a.test\r\nX-Request-ID: " + rid + b"\r\n"
    )
    assert seen["x-request-id"] == rid.decode()
