"""HTTP/2 on the TLS listener: chosen by ALPN, on by default, off per listener or per site."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from switchctl.cli import cli
from switchctl.client import ControlClient
from tests.h2_fixtures import H2Client, h2_edge_config, site
from tests.proxy_fixtures import Backend, Edge
from tests.test_access_log import lines


def shop(back: Backend, **extra: Any) -> dict[str, Any]:
    return {
        "apps": {"shop": {"colors": {"blue": {"upstreams": [back.url]}}}},
        "sites": [site("shop", ("a.test",), **extra)],
    }


def test_a_client_offering_h2_gets_h2_and_the_app_answers_on_the_stream(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    e = edge(h2_edge_config(tls_files, **shop(back)))
    with H2Client(e.https_port, tls_files["ca"]) as c:
        assert c.alpn == "h2"
        r = c.get("/hello")
        assert (r.status, r.body, r.headers["x-backend"]) == (200, b"blue\n", "blue")
        assert r.headers["server"] == "edgeproxy"
        assert "x-request-id" in r.headers
        seen = back.seen[-1]
        assert seen.version == (1, 1)  # upstreams stay HTTP/1.1
        assert seen.headers["Host"] == "a.test"
        assert seen.headers["X-Forwarded-Proto"] == "https"
        assert seen.headers["X-Forwarded-For"] == "127.0.0.1"


def test_a_client_offering_only_http11_gets_todays_path(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    e = edge(h2_edge_config(tls_files, **shop(back)))
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"blue\n")


def test_a_client_without_alpn_gets_http11(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    e = edge(h2_edge_config(tls_files, **shop(back)))
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.selected_alpn_protocol() is None
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_http2_false_on_the_listener_offers_http11_only(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    conf = h2_edge_config(tls_files, **shop(back))
    conf["listen"]["http2"] = False
    e = edge(conf)
    with H2Client(e.https_port, tls_files["ca"], alpn=("h2", "http/1.1")) as c:
        assert c.alpn == "http/1.1"


def test_http2_false_on_a_site_offers_http11_to_its_names_only(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    conf = h2_edge_config(
        tls_files,
        apps={"shop": {"colors": {"blue": {"upstreams": [back.url]}}}},
        sites=[
            {**site("shop", ("a.test",)), "http2": False},
            site("shop", ("www.example.test",)),
        ],
    )
    e = edge(conf)
    off = H2Client(e.https_port, tls_files["ca"], sni="a.test", alpn=("h2", "http/1.1"))
    on = H2Client(e.https_port, tls_files["ca"], sni="www.example.test", alpn=("h2", "http/1.1"))
    try:
        assert (off.alpn, on.alpn) == ("http/1.1", "h2")
        r = on.get("/", authority="www.example.test")
        assert (r.status, r.body) == (200, b"blue\n")
    finally:
        off.close()
        on.close()


def test_metrics_count_http2_connections_apart_from_http11(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    e = edge(h2_edge_config(tls_files, **shop(back)))
    with H2Client(e.https_port, tls_files["ca"]) as c:
        assert c.get("/").status == 200
        samples = dict(
            line.rsplit(" ", 1)
            for line in ControlClient(e.socket_path).metrics().splitlines()
            if "_by_protocol" in line and not line.startswith("#")
        )
        by = 'edgeproxy_connections_{}{{protocol="{}"}}'
        assert float(samples[by.format("open_by_protocol", "h2")]) == 1
        assert float(samples[by.format("open_by_protocol", "http/1.1")]) == 0
        assert float(samples[by.format("by_protocol_total", "h2")]) == 1


def test_an_h2_stream_writes_the_same_access_log_line_with_proto_h2(
    edge: Callable[..., Edge],
    backend: Callable[[str], Backend],
    tls_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    back = backend("blue")
    log = tmp_path / "access.log"
    e = edge(h2_edge_config(tls_files, access_log={"path": str(log)}, **shop(back)))
    with H2Client(e.https_port, tls_files["ca"]) as c:
        r = c.get(
            "/echo",
            method="POST",
            body=b"x" * 100,
            headers=[("x-request-id", "rq-h2"), ("content-length", "100")],
        )
        assert r.status == 200
    (line,) = lines(e, log)
    line.pop("time")
    line.pop("duration_ms")
    assert line == {
        "request_id": "rq-h2",
        "client": "127.0.0.1",
        "host": "a.test",
        "method": "POST",
        "path": "/echo",
        "status": 200,
        "bytes_in": 100,
        "bytes_out": 100,
        "app": "shop",
        "color": "blue",
        "upstream": back.url,
        "tls": line["tls"],
        "proto": "h2",
        "error": None,
    }
    assert line["tls"] in ("TLSv1.2", "TLSv1.3")


def test_switchctl_status_shows_connections_per_protocol(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> None:
    back = backend("blue")
    e = edge(h2_edge_config(tls_files, **shop(back)))
    with H2Client(e.https_port, tls_files["ca"]) as c:
        assert c.get("/").status == 200
        result = CliRunner().invoke(cli, ["--socket", str(e.socket_path), "status"])
    assert result.exit_code == 0, result.output
    assert "client connections (open / since start):" in result.output
    assert "  h2: 1 / 1" in result.output
    assert "  http/1.1: 0 / 0" in result.output
