"""The nginx-template policies end to end: real edgeproxy, real aiohttp backend, real sockets.

One edgeproxy (production wiring, uvloop thread, port 0) in front of one aiohttp
backend that counts every request it gets, so each test can say both what the
client saw and whether the backend was (not) called.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import WSMsgType, web
from websockets.sync.client import connect as ws_connect

from tests.proxy_fixtures import (  # fixtures used by name below
    Edge,
    LoopThread,
    backend_loop,  # noqa: F401
    edge,  # noqa: F401
    tls_ca,  # noqa: F401
    tls_files,  # noqa: F401
)

SHOP = "https://shop.test"
SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}
BIG_JSON = json.dumps([{"id": i, "title": f"product {i}"} for i in range(1000)]).encode()
SMALL_JSON = b'{"ok": true}'


@dataclass
class Origin:
    """The backend: what it answers per path, and how often each path was asked for."""

    port: int = 0
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def origin_app(o: Origin) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        path = request.path
        o.hits[path] += 1
        if path == "/big.json":
            return web.Response(body=BIG_JSON, content_type="application/json")
        if path == "/small.json":
            return web.Response(body=SMALL_JSON, content_type="application/json")
        if path == "/stream.json":  # chunked: no Content-Length
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(BIG_JSON), 1000):
                await resp.write(BIG_JSON[i : i + 1000])
            await resp.write_eof()
            return resp
        if path == "/express":
            return web.Response(
                text="hi",
                headers={"X-Powered-By": "Express", "X-Frame-Options": "ALLOWALL"},
            )
        if path == "/assets/app.3f2a.js":
            return web.Response(
                text="console.log(1)",
                content_type="application/javascript",
                headers={"Cache-Control": "no-cache"},
            )
        if path.startswith("/indexes/"):  # Meilisearch, seen through /search/
            return web.json_response(
                {"hits": [], "path": path}, headers={"Access-Control-Allow-Origin": "*"}
            )
        return web.Response(text=f"{path}\n")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        o.hits[request.path] += 1
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"echo: {msg.data}")
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.fixture
def origin(backend_loop: LoopThread) -> Iterator[Origin]:  # noqa: F811
    o = Origin()

    async def boot() -> web.AppRunner:
        runner = web.AppRunner(origin_app(o), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        o.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return runner

    runner = backend_loop.run(boot())
    yield o
    backend_loop.run(runner.cleanup())


def dead_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def medusa_like(o: Origin) -> dict[str, Any]:
    """The shape of compose/medusa/edgeproxy.yml, with the backend in every role."""
    return {
        "sites": [
            {
                "hosts": ["api.test"],
                "https_redirect": False,
                "response_headers": SECURITY,
                "hide_headers": ["X-Powered-By"],
                # One request every 100 s: a slow test run cannot refill a token.
                "rate_limit": {"rate": 0.01, "burst": 4},
                "gzip": {"min_length": 1024},
                "static_cache": {},
                "routes": [
                    {"path": "/", "upstream": o.url},
                    {"path": "/health", "upstream": o.url, "no_rate_limit": True},
                    {"path": "/upload", "upstream": o.url, "max_body": "1k"},
                    {"path": "/down/", "upstream": f"http://127.0.0.1:{dead_port()}"},
                    {
                        "path": "/search/",
                        "upstream": o.url,
                        "strip_prefix": True,
                        "rate_limit": {"rate": 0.01, "burst": 50},
                        "cors": {"allow_origins": [SHOP], "max_age": 600},
                    },
                ],
            },
            {
                "hosts": ["127.0.0.1"],  # the admin UI; WebSocket clients send Host: 127.0.0.1
                "https_redirect": False,
                "response_headers": {**SECURITY, "X-Frame-Options": "SAMEORIGIN"},
                "websocket": True,
                "routes": [{"path": "/", "upstream": o.url}],
            },
        ]
    }


@pytest.fixture
def proxy(edge: Callable[..., Edge], origin: Origin) -> Edge:  # noqa: F811
    return edge(medusa_like(origin))


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def request(
    port: int,
    method: str,
    path: str,
    *,
    host: str = "api.test",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers={"Host": host, **(headers or {})})
    r = c.getresponse()
    reply = Reply(r.status, r.headers, r.read())
    if conn is None:
        c.close()
    return reply


def assert_security_headers(r: Reply, frame: str = "DENY") -> None:
    assert r.headers["X-Frame-Options"] == frame
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert len(r.headers.get_all("X-Frame-Options") or []) == 1


def test_rate_limit_answers_429_with_retry_after_exactly_after_burst_plus_one(
    proxy: Edge, origin: Origin
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=10)
    replies = [request(proxy.http_port, "GET", f"/r{i}", conn=conn) for i in range(8)]
    conn.close()
    assert [r.status for r in replies] == [200] * 5 + [429] * 3
    for r in replies[5:]:
        assert 1 <= int(r.headers["Retry-After"]) <= 100
        assert_security_headers(r)
    assert sum(origin.hits[f"/r{i}"] for i in range(8)) == 5
    # /health has no limit, even for a client that is limited everywhere else.
    assert {request(proxy.http_port, "GET", "/health").status for _ in range(30)} == {200}
    assert origin.hits["/health"] == 30


def test_search_route_has_its_own_larger_burst(proxy: Edge, origin: Origin) -> None:
    for _ in range(5):
        request(proxy.http_port, "GET", "/")
    assert request(proxy.http_port, "GET", "/").status == 429
    statuses = [request(proxy.http_port, "GET", "/search/indexes/p").status for _ in range(53)]
    assert statuses == [200] * 51 + [429] * 2
    assert origin.hits["/indexes/p"] == 51


def test_large_json_is_gzipped_when_accepted_and_decompresses_to_the_original(
    proxy: Edge,
) -> None:
    for path in ("/big.json", "/stream.json"):
        r = request(proxy.http_port, "GET", path, headers={"Accept-Encoding": "gzip, br"})
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in r.headers["Vary"]
        assert r.headers["Content-Length"] is None
        assert gzip.decompress(r.body) == BIG_JSON
        assert len(r.body) < len(BIG_JSON)


def test_small_or_unaccepted_bodies_stay_plain(proxy: Edge) -> None:
    small = request(proxy.http_port, "GET", "/small.json", headers={"Accept-Encoding": "gzip"})
    assert small.headers["Content-Encoding"] is None
    assert small.body == SMALL_JSON
    refused = request(proxy.http_port, "GET", "/big.json", headers={"Accept-Encoding": "gzip;q=0"})
    assert refused.headers["Content-Encoding"] is None
    assert refused.body == BIG_JSON
    assert refused.headers["Vary"] == "Accept-Encoding"


def test_cors_preflight_is_answered_without_reaching_the_backend(
    proxy: Edge, origin: Origin
) -> None:
    pre = {"Origin": SHOP, "Access-Control-Request-Method": "POST"}
    r = request(proxy.http_port, "OPTIONS", "/search/indexes/products/search", headers=pre)
    assert r.status == 204
    assert r.headers["Access-Control-Allow-Origin"] == SHOP
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "X-Meili-API-Key" in r.headers["Access-Control-Allow-Headers"]
    assert r.headers["Access-Control-Max-Age"] == "600"
    assert_security_headers(r)
    evil = request(
        proxy.http_port,
        "OPTIONS",
        "/search/indexes/products/search",
        headers={**pre, "Origin": "https://evil.test"},
    )
    assert evil.status == 403
    assert evil.headers["Access-Control-Allow-Origin"] is None
    assert origin.hits["/indexes/products/search"] == 0


def test_cors_actual_response_echoes_allowed_origin_and_hides_the_upstreams(
    proxy: Edge, origin: Origin
) -> None:
    r = request(proxy.http_port, "GET", "/search/indexes/p/search", headers={"Origin": SHOP})
    assert r.status == 200
    assert r.headers.get_all("Access-Control-Allow-Origin") == [SHOP]
    assert "Origin" in (r.headers["Vary"] or "")
    assert json.loads(r.body)["path"] == "/indexes/p/search"  # prefix stripped
    other = request(
        proxy.http_port, "GET", "/search/indexes/p/search", headers={"Origin": "https://evil.test"}
    )
    assert other.headers["Access-Control-Allow-Origin"] is None  # Meilisearch's * is hidden
    assert origin.hits["/indexes/p/search"] == 2


def test_security_headers_are_on_404_413_and_502_from_edgeproxy_itself(proxy: Edge) -> None:
    too_big = request(proxy.http_port, "POST", "/upload", body=b"x" * 2000)
    assert too_big.status == 413
    assert_security_headers(too_big)
    down = request(proxy.http_port, "GET", "/down/x")
    assert down.status == 502
    assert_security_headers(down)


def test_security_headers_are_on_404_for_a_path_no_route_takes(
    edge: Callable[..., Edge],  # noqa: F811
    origin: Origin,
) -> None:
    conf = medusa_like(origin)
    conf["sites"][0]["routes"] = [r for r in conf["sites"][0]["routes"] if r["path"] != "/"]
    e = edge(conf)
    r = request(e.http_port, "GET", "/nothing-here")
    assert r.status == 404
    assert_security_headers(r)


def test_upstream_headers_are_hidden_or_replaced(proxy: Edge) -> None:
    r = request(proxy.http_port, "GET", "/express")
    assert r.headers["X-Powered-By"] is None
    assert r.headers.get_all("X-Frame-Options") == ["DENY"]
    assert r.body == b"hi"


def test_static_assets_get_immutable_year_long_caching(proxy: Edge) -> None:
    r = request(proxy.http_port, "GET", "/assets/app.3f2a.js?v=1")
    assert r.status == 200
    assert r.headers.get_all("Cache-Control") == ["public, max-age=31536000, immutable"]
    assert r.headers["Expires"] is not None
    plain = request(proxy.http_port, "GET", "/health")
    assert plain.headers["Cache-Control"] is None


def test_websocket_tunnels_through_the_admin_ui_route(proxy: Edge, origin: Origin) -> None:
    with ws_connect(f"ws://127.0.0.1:{proxy.http_port}/ws", open_timeout=10) as ws:
        for i in range(3):
            ws.send(f"ping {i}")
            assert ws.recv(timeout=10) == f"echo: ping {i}"
    assert origin.hits["/ws"] == 1
    page = request(proxy.http_port, "GET", "/", host="127.0.0.1")
    assert_security_headers(page, frame="SAMEORIGIN")


def test_hsts_is_sent_on_the_tls_listener_only(
    edge: Callable[..., Edge],  # noqa: F811
    origin: Origin,
    tls_files: dict[str, Path],  # noqa: F811
) -> None:
    hsts = "max-age=31536000; includeSubDomains"
    e = edge(
        {
            "listen": {"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
            "tls": {
                "certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]
            },
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": False,
                    "hsts": hsts,
                    "routes": [{"path": "/", "upstream": origin.url}],
                }
            ],
        }
    )
    ctx = ssl.create_default_context(cafile=str(tls_files["ca"]))
    conn = http.client.HTTPSConnection("127.0.0.1", e.https_port, context=ctx, timeout=10)
    secure = request(e.https_port, "GET", "/", host="a.test", conn=conn)
    conn.close()
    assert secure.headers["Strict-Transport-Security"] == hsts
    plain = request(e.http_port, "GET", "/", host="a.test")
    assert plain.status == 200
    assert plain.headers["Strict-Transport-Security"] is None


MEDUSA = Path(__file__).resolve().parent.parent / "compose" / "medusa" / "edgeproxy.yml"
API, PORTAINER, STATUS = (
    "api.shop.example.com",
    "portainer.shop.example.com",
    "status.shop.example.com",
)


class PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with SNI and Host naming a real site (no DNS needed)."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


@pytest.fixture
def medusa(
    edge: Callable[..., Edge],  # noqa: F811
    origin: Origin,
    tls_ca: trustme.CA,  # noqa: F811
    tmp_path: Path,
) -> tuple[Edge, ssl.SSLContext, Path]:
    """compose/medusa/edgeproxy.yml as shipped, with test ports, certificates and backends."""
    conf = yaml.safe_load(MEDUSA.read_text())
    leaf = tls_ca.issue_cert(API, PORTAINER, STATUS)
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    webroot = tmp_path / "webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    conf["listen"] = {"http": "127.0.0.1:0", "https": "127.0.0.1:0"}
    conf["tls"]["certificates"] = [{"cert": str(cert), "key": str(key)}]
    conf["acme"]["webroot"] = str(webroot)
    del conf["control"], conf["state_file"]  # the fixture's temporary ones
    app = conf["apps"]["medusa"]
    for color in app["colors"].values():
        color["upstreams"] = [origin.url]
    app["health"]["enabled"] = False  # health checking is tested elsewhere
    app["first_release"] = "serve"  # a server released before (hold: test_first_release.py)
    # Keep the shipped burst, but refill one token per 100 s instead of 10 per
    # second, so that a slow run cannot turn an expected 429 into a 200.
    conf["sites"][0]["rate_limit"]["rate"] = 0.01
    for site in conf["sites"]:
        for route in site["routes"]:
            if "upstream" in route:
                route["upstream"] = origin.url
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=tls_ca.cert_pem.bytes().decode())
    return edge(conf), ctx, webroot


def test_the_medusa_config_redirects_http_but_serves_acme_challenges(
    medusa: tuple[Edge, ssl.SSLContext, Path],
) -> None:
    e, _, webroot = medusa
    (webroot / ".well-known" / "acme-challenge" / "tok3n_-x").write_text("tok3n_-x.thumb")
    r = request(e.http_port, "GET", "/store/products?limit=1", host=API)
    assert r.status == 301
    assert r.headers["Location"].startswith(f"https://{API}")
    assert r.headers["Location"].endswith("/store/products?limit=1")
    acme = request(e.http_port, "GET", "/.well-known/acme-challenge/tok3n_-x", host=STATUS)
    assert (acme.status, acme.body) == (200, b"tok3n_-x.thumb")


def test_the_medusa_config_applies_the_nginx_template_policies_over_tls(
    medusa: tuple[Edge, ssl.SSLContext, Path], origin: Origin
) -> None:
    e, ctx, _ = medusa
    api = PinnedHTTPS(API, e.https_port, context=ctx, timeout=10)
    health = [request(e.https_port, "GET", "/health", host=API, conn=api) for _ in range(30)]
    assert {r.status for r in health} == {200}
    page = [request(e.https_port, "GET", f"/store/p{i}", host=API, conn=api) for i in range(23)]
    assert [r.status for r in page] == [200] * 21 + [429] * 2  # burst=20
    assert_security_headers(page[0])
    assert_security_headers(page[-1])
    assert page[-1].headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    pre = request(
        e.https_port,
        "OPTIONS",
        "/search/indexes/products/search",
        host=API,
        headers={"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"},
        conn=api,
    )
    assert pre.status == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
    assert origin.hits["/indexes/products/search"] == 0
    search = request(e.https_port, "GET", "/search/indexes/p/search", host=API, conn=api)
    assert search.status == 200  # its own bucket (burst 50), untouched by the API's
    assert json.loads(search.body)["path"] == "/indexes/p/search"
    api.close()
    admin = PinnedHTTPS(PORTAINER, e.https_port, context=ctx, timeout=10)
    ui = request(e.https_port, "GET", "/", host=PORTAINER, conn=admin)
    admin.close()
    assert_security_headers(ui, frame="SAMEORIGIN")


def test_the_medusa_config_tunnels_websockets_to_uptime_kuma_over_tls(
    medusa: tuple[Edge, ssl.SSLContext, Path], origin: Origin
) -> None:
    e, ctx, _ = medusa
    sock = socket.create_connection(("127.0.0.1", e.https_port), timeout=10)
    with ws_connect(f"wss://{STATUS}/ws", sock=sock, ssl=ctx, open_timeout=10) as ws:
        ws.send("socket.io?")
        assert ws.recv(timeout=10) == "echo: socket.io?"
    assert origin.hits["/ws"] == 1
