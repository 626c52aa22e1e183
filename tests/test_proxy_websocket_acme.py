"""WebSocket tunnels and the ACME webroot on the HTTP listener, over real sockets."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from websockets.sync.client import connect

from tests.proxy_fixtures import http_get, raw_request, site


def test_a_websocket_echo_works_through_the_proxy(backend, edge):
    b = backend("blue")
    e = edge(
        {"apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}}, "sites": [site("shop")]}
    )
    sock = socket.create_connection(("127.0.0.1", e.http_port))
    with connect(f"ws://a.test:{e.http_port}/ws", sock=sock, max_size=None) as ws:
        for i in range(20):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=5) == f"blue: hello {i}"
        big = os.urandom(1 << 20)
        ws.send(big)
        assert ws.recv(timeout=10) == big
    assert e.server.ctx.tracker.counts("shop", "blue") == (0, 0)


def test_a_websocket_upgrade_is_refused_where_the_route_disables_it(backend, edge):
    b = backend("blue")
    e = edge(
        {
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [site("shop", websocket=False)],
        }
    )
    out = raw_request(
        e.http_port,
        b"GET /ws HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert not out.startswith(b"HTTP/1.1 101")


def acme_edge(tmp_path: Path, backend, edge):
    webroot = tmp_path / "webroot"
    challenge = webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    (challenge / "tok_EN-123").write_text("tok_EN-123.thumbprint")
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", challenge / "escape")
    b = backend("blue")
    e = edge(
        {
            "acme": {"webroot": str(webroot)},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}},
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": True,
                    "routes": [{"path": "/", "app": "shop"}],
                }
            ],
        }
    )
    return e, b


def test_acme_challenges_are_served_from_the_webroot_even_on_a_redirecting_site(
    tmp_path, backend, edge
):
    e, b = acme_edge(tmp_path, backend, edge)
    r = http_get(e.http_port, "/.well-known/acme-challenge/tok_EN-123", host="a.test:80")
    assert r.status == 200
    assert r.body == b"tok_EN-123.thumbprint"
    assert http_get(e.http_port, "/other").status == 301
    assert b.seen == []


def test_acme_paths_cannot_traverse_or_follow_symlinks_out_of_the_webroot(tmp_path, backend, edge):
    e, _ = acme_edge(tmp_path, backend, edge)
    for path in (
        "/.well-known/acme-challenge/escape",
        "/.well-known/acme-challenge/%2e%2e%2fsecret.txt",
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/",
    ):
        r = http_get(e.http_port, path)
        assert r.status == 404, path
        assert b"secret" not in r.body
    # Dot-segments are resolved before anything else: this is the path /secret.txt,
    # not an ACME one, so it gets the site's redirect to HTTPS, never the file.
    r = http_get(e.http_port, "/.well-known/acme-challenge/../../secret.txt")
    assert (r.status, r.header("Location")) == (301, "https://a.test/secret.txt")
