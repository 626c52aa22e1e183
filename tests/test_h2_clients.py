"""Real HTTP/2 clients on every route kind of compose/medusa/edgeproxy.yml as shipped.

curl (`--http2`), nghttp (nghttp2-client), a Python `h2` client and headless
Chromium against the Medusa config with test certificates and a real backend
in every role (the `medusa` fixture of test_policies_e2e.py).
"""

from __future__ import annotations

import gzip
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.h2_fixtures import H2Client
from tests.proxy_fixtures import Edge
from tests.test_policies_e2e import (  # fixtures used by name below
    API,
    BIG_JSON,
    PORTAINER,
    Origin,
    backend_loop,  # noqa: F401
    edge,  # noqa: F401
    medusa,  # noqa: F401
    origin,  # noqa: F401
    tls_ca,  # noqa: F401
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("nghttp")),
    reason="needs curl and nghttp (Debian curl, nghttp2-client)",
)

Medusa = tuple[Edge, ssl.SSLContext, Path]


def ca_file(tmp_path: Path, ctx_pem: bytes) -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ctx_pem)
    return ca


def curl(
    e: Edge, ca: Path, url_path: str, *args: str, host: str = API, tls: bool = True
) -> tuple[str, int, bytes, dict[str, str]]:
    """(http_version, status, body, headers) of one curl request."""
    port = e.https_port if tls else e.http_port
    scheme = "https" if tls else "http"
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2" if tls else "--http1.1",
            "--cacert",
            str(ca),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "-D",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
            *args,
            f"{scheme}://{host}:{port}{url_path}",
        ],
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout
    head, _, rest = out.partition(b"\r\n\r\n")
    body, _, tail = rest.rpartition(b"\n")
    version, code = tail.decode().split()
    headers = {}
    for line in head.decode().split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return version, int(code), body, headers


@pytest.fixture
def ca(medusa: Medusa, tls_ca, tmp_path: Path) -> Path:  # noqa: F811
    return ca_file(tmp_path, tls_ca.cert_pem.bytes())


def test_curl_gets_h2_on_every_route_kind_of_the_medusa_config(
    medusa: Medusa,  # noqa: F811
    origin: Origin,  # noqa: F811
    ca: Path,
) -> None:
    e, _, webroot = medusa
    # The app (blue/green switch), with the template's security headers and HSTS.
    version, status, body, headers = curl(e, ca, "/store/products")
    assert (version, status, body) == ("2", 200, b"/store/products\n")
    assert headers["x-frame-options"] == "DENY"
    assert headers["strict-transport-security"].startswith("max-age=")
    # The static upstream with prefix strip (Meilisearch under /search/).
    version, status, body, _ = curl(e, ca, "/search/indexes/p/search")
    assert (version, status) == ("2", 200)
    assert json.loads(body)["path"] == "/indexes/p/search"
    # CORS preflight, answered by edgeproxy.
    version, status, _, headers = curl(
        e,
        ca,
        "/search/indexes/products/search",
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://shop.example.com",
        "-H",
        "Access-Control-Request-Method: POST",
    )
    assert (version, status) == ("2", 204)
    assert headers["access-control-allow-origin"] == "https://shop.example.com"
    assert origin.hits["/indexes/products/search"] == 0
    # gzip.
    version, status, body, headers = curl(e, ca, "/big.json", "-H", "Accept-Encoding: gzip")
    assert (version, status, headers["content-encoding"]) == ("2", 200, "gzip")
    assert gzip.decompress(body) == BIG_JSON
    # The admin UI's own site (its own certificate name).
    version, status, _, headers = curl(e, ca, "/", host=PORTAINER)
    assert (version, status, headers["x-frame-options"]) == ("2", 200, "SAMEORIGIN")
    # HTTP (no TLS, so HTTP/1.1): the redirect, and the ACME path before it.
    (webroot / ".well-known" / "acme-challenge" / "tok").write_text("tok.thumb")
    version, status, body, _ = curl(e, ca, "/.well-known/acme-challenge/tok", tls=False)
    assert (version, status, body) == ("1.1", 200, b"tok.thumb")
    version, status, _, headers = curl(e, ca, "/store/products", tls=False)
    assert (version, status) == ("1.1", 301)
    assert headers["location"] == f"https://{API}:{e.https_port}/store/products"


def test_the_rate_limit_answers_429_over_h2_after_the_burst(
    medusa: Medusa,  # noqa: F811
    ca: Path,
) -> None:
    e, _, _ = medusa
    with H2Client(e.https_port, ca, sni=API) as c:
        sids = [c.request(f"/store/p{i}", authority=API) for i in range(23)]
        statuses = sorted(r.status for r in c.wait(*sids))
        assert statuses == [200] * 21 + [429] * 2  # burst 20 (+ the first token)
        limited = [r for r in c.responses.values() if r.status == 429]
        assert all(1 <= int(r.headers["retry-after"]) <= 100 for r in limited)
        assert all(r.headers["x-frame-options"] == "DENY" for r in limited)


def test_an_authority_of_another_site_than_the_sni_name_gets_421(
    medusa: Medusa,  # noqa: F811
    ca: Path,
) -> None:
    e, _, _ = medusa
    with H2Client(e.https_port, ca, sni=API) as c:
        r = c.get("/", authority=PORTAINER)
        assert r.status == 421
        # The connection goes on for its own name (clients retry the 421 elsewhere).
        assert c.get("/health", authority=API).status == 200


def test_nghttp_shows_the_h2_frames_and_the_answer(
    medusa: Medusa,  # noqa: F811
    ca: Path,
) -> None:
    e, _, _ = medusa
    out = subprocess.run(
        ["nghttp", "-nv", "-H", f":authority: {API}", f"https://127.0.0.1:{e.https_port}/health"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert "recv SETTINGS frame" in out
    assert "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):128" in out
    assert ":status: 200" in out
    assert "recv GOAWAY" not in out


def test_a_python_h2_client_multiplexes_app_and_static_routes_on_one_connection(
    medusa: Medusa,  # noqa: F811
    ca: Path,
) -> None:
    e, _, _ = medusa
    with H2Client(e.https_port, ca, sni=API) as c:
        sids = [
            c.request("/health", authority=API),
            c.request("/search/indexes/a/search", authority=API),
            c.request("/assets/app.3f2a.js", authority=API),
            c.request("/big.json", authority=API, headers=[("accept-encoding", "gzip")]),
        ]
        health, search, asset, big = c.wait(*sids)
        assert health.status == search.status == asset.status == big.status == 200
        assert json.loads(search.body)["path"] == "/indexes/a/search"
        assert "immutable" in asset.headers["cache-control"]
        assert gzip.decompress(big.body) == BIG_JSON


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian chromium")
def test_headless_chromium_loads_a_page_and_its_scripts_over_h2(
    medusa: Medusa,  # noqa: F811
    ca: Path,
    tmp_path: Path,
) -> None:
    e, _, _ = medusa
    netlog = tmp_path / "netlog.json"
    url = f"https://{API}:{e.https_port}/store/page"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            f"--host-resolver-rules=MAP {API} 127.0.0.1",
            f"--log-net-log={netlog}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    log = json.loads(netlog.read_text() or "{}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    kinds = {names.get(ev["type"]) for ev in log["events"]}
    assert "HTTP2_SESSION" in kinds
    negotiated = [
        ev["params"].get("next_proto") or ev["params"].get("alpn")
        for ev in log["events"]
        if isinstance(ev.get("params"), dict)
        and ("next_proto" in ev["params"] or "alpn" in ev["params"])
    ]
    assert "h2" in negotiated
