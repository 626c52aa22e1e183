"""GET /metrics: exact counters for the requests a test sent, and a well-formed exposition."""

from __future__ import annotations

import re
import socket
import ssl
import time
import urllib.request
from collections import Counter

import pytest

from edgeproxy.app import ControlPlane
from edgeproxy.observability.listener import metrics_address
from edgeproxy.observability.stats import PROM_BOUNDS
from switchctl.client import ControlClient
from tests.proxy_fixtures import client_tls_context, http_get, site

SAMPLE = re.compile(r"^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|\+Inf|NaN)$")
LABEL = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Parse the text format strictly: every sample belongs to one declared family, once."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} declared twice"
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no # TYPE"
        key = (name, frozenset(LABEL.findall(labels or "")))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(value)
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_the_scrape_counts_exactly_the_requests_sent_by_class_with_a_consistent_histogram(
    backend, edge
):
    blue = backend("blue")
    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]}}}},
            "sites": [site("shop")],
        }
    )
    sent = Counter()
    for path, n in (("/", 6), ("/status/404", 2), ("/status/302", 1), ("/status/503", 1)):
        for _ in range(n):
            sent[http_get(e.http_port, path).status // 100] += 1
    assert sent == {2: 6, 4: 2, 3: 1, 5: 1}
    assert http_get(e.http_port, host="unknown.test").status == 404
    m = parse(ControlClient(e.socket_path).metrics())
    shop = {"app": "shop", "color": "blue"}
    for cls, n in sent.items():
        assert get(m, "edgeproxy_requests_total", **shop, code=f"{cls}xx") == n
    assert ("edgeproxy_requests_total", frozenset({**shop, "code": "1xx"}.items())) not in m
    assert get(m, "edgeproxy_requests_total", app="", color="", code="4xx") == 1
    assert get(m, "edgeproxy_request_errors_total", **shop) == 1
    assert get(m, "edgeproxy_request_duration_seconds_count", **shop) == 10
    buckets = [
        get(m, "edgeproxy_request_duration_seconds_bucket", **shop, le=repr(b)) for b in PROM_BOUNDS
    ]
    assert buckets == sorted(buckets)
    assert get(m, "edgeproxy_request_duration_seconds_bucket", **shop, le="+Inf") == 10
    assert get(m, "edgeproxy_requests_in_flight", **shop) == 0
    up = {**shop, "upstream": blue.url}
    assert get(m, "edgeproxy_upstream_healthy", **up) == 1
    assert get(m, "edgeproxy_upstream_check_passing", **up) == 1
    assert get(m, "edgeproxy_upstream_checks_total", **up, result="pass") >= 1
    assert get(m, "edgeproxy_upstream_connect_errors_total", **up) == 0
    assert get(m, "edgeproxy_upstream_ejections_total", **up) == 0
    assert get(m, "edgeproxy_color_healthy", **shop) == 1
    assert get(m, "edgeproxy_connections_total", listener="http") == 11
    assert get(m, "edgeproxy_connections_open", listener="http") == 0
    assert get(m, "edgeproxy_switch_generation", app="shop") == 0
    assert get(m, "edgeproxy_switch_changed_at_seconds", app="shop") > 0
    assert get(m, "edgeproxy_canary_guard_tripped", app="shop") == 0


def test_connect_errors_are_counted_per_upstream(edge):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {"blue": {"upstreams": [url]}},
                    "health": {"enabled": False},
                    "ejection": {"consecutive_failures": 10},
                }
            },
            "sites": [site("shop")],
        }
    )
    assert {http_get(e.http_port).status for _ in range(3)} == {502}
    m = parse(ControlClient(e.socket_path).metrics())
    up = {"app": "shop", "color": "blue", "upstream": url}
    assert get(m, "edgeproxy_upstream_connect_errors_total", **up) == 3
    assert get(m, "edgeproxy_upstream_check_passing", **up) == -1
    assert get(m, "edgeproxy_requests_total", app="shop", color="blue", code="5xx") == 3
    assert get(m, "edgeproxy_request_errors_total", app="shop", color="blue") == 3


def test_tls_handshakes_failures_open_connections_and_certificate_expiry_are_exposed(
    backend, edge, tls_files
):
    blue = backend("blue")
    e = edge(
        {
            "listen": {"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
            "tls": {
                "certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]
            },
            "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]}}}},
            "sites": [site("shop")],
        }
    )
    good = client_tls_context(tls_files["ca"])
    opened = []
    for _ in range(2):
        raw = socket.create_connection(("127.0.0.1", e.https_port))
        opened.append(good.wrap_socket(raw, server_hostname="a.test"))
    untrusting = ssl.create_default_context()  # does not know the test CA: handshake fails
    with (
        socket.create_connection(("127.0.0.1", e.https_port)) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.wrap_socket(raw, server_hostname="a.test")
    opened[0].close()
    opened[1].sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert opened[1].recv(4096).startswith(b"HTTP/1.1 200")
    ctl = ControlClient(e.socket_path)
    deadline = time.monotonic() + 10
    m = parse(ctl.metrics())
    while get(m, "edgeproxy_connections_open", listener="https") != 1:
        assert time.monotonic() < deadline, "the closed TLS connection is still counted"
        time.sleep(0.02)
        m = parse(ctl.metrics())
    assert get(m, "edgeproxy_tls_handshakes_total", listener="https") == 3
    assert get(m, "edgeproxy_tls_handshake_failures_total", listener="https") == 1
    assert get(m, "edgeproxy_connections_total", listener="https") == 2
    assert get(m, "edgeproxy_connections_open", listener="https") == 1
    cert = e.server.certs.certs[0]
    expiry = get(
        m, "edgeproxy_certificate_expiry_seconds", cert=str(cert.cert_path), subject=cert.subject
    )
    assert expiry == cert.not_after.timestamp()
    opened[1].close()


def test_the_optional_metrics_listener_serves_the_same_metrics_over_tcp(backend, edge, tmp_path):
    blue = backend("blue")
    e = edge(
        {
            "control": {"socket": str(tmp_path / "m.sock"), "metrics_listen": "127.0.0.1:0"},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]}}}},
            "sites": [site("shop")],
        }
    )
    for _ in range(4):
        http_get(e.http_port)
    port = control_plane(e).runners[1].addresses[0][1]
    over_tcp = parse(scrape_tcp(port))
    over_socket = parse(ControlClient(e.socket_path).metrics())
    assert over_tcp.keys() == over_socket.keys()
    shop = {"app": "shop", "color": "blue", "code": "2xx"}
    assert get(over_tcp, "edgeproxy_requests_total", **shop) == 4


def test_a_metrics_listener_given_only_a_port_binds_loopback() -> None:
    assert metrics_address(":9100") == ("127.0.0.1", 9100)
    assert metrics_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert metrics_address("[::1]:9100") == ("::1", 9100)


def scrape_tcp(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def control_plane(e) -> ControlPlane:
    return next(p for p in e.server.plugins if isinstance(p, ControlPlane))
