"""Smoke checks that prove what they tested.

First against a tiny real HTTPS server that plays edgeproxy (it records the SNI,
Host, method, headers and body it got, and answers with or without the
`X-Edgeproxy-Color` header), then with the shipped compose/medusa settings
through a real edgeproxy over TLS in front of Medusa-shaped backends.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from switchctl.deploy.config import Smoke, SmokeCheck
from switchctl.deploy.errors import DeployConfigError
from switchctl.deploy.smoke import SmokeClient, referenced, trust
from tests import medusa_fixtures
from tests.medusa_fixtures import API, Shop

shop = medusa_fixtures.shop  # the shipped compose/medusa configs through a real edgeproxy

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    sni: str | None
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeProxy:
    """An HTTPS server on 127.0.0.1 that answers like edgeproxy would (or would not)."""

    port: int
    answer: Callable[[Seen], Answer]
    leaf: trustme.LeafCert
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def fake_proxy(tmp_path: Path, tls_ca: trustme.CA) -> Iterator[Callable[..., FakeProxy]]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(answer: Callable[[Seen], Answer], ca: trustme.CA = tls_ca) -> FakeProxy:
        leaf = ca.issue_cert("api.shop.test")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        snis: dict[int, str | None] = {}

        def on_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            snis[id(sock)] = name

        ctx.sni_callback = on_sni  # type: ignore[assignment]
        proxy = FakeProxy(0, answer, leaf)

        class Handler(http.server.BaseHTTPRequestHandler):
            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    self.command,
                    self.path,
                    snis.get(id(self.connection)),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                proxy.seen.append(seen)
                status, headers, body = proxy.answer(seen)
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = handle_any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        proxy.port = server.server_address[1]
        return proxy

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return path


def client(
    proxy: FakeProxy, tmp_path: Path, ca: trustme.CA, *checks: SmokeCheck, **env: str
) -> SmokeClient:
    smoke = Smoke(
        url=f"https://127.0.0.1:{proxy.port}", ca_file=ca_file(tmp_path, ca), checks=list(checks)
    )
    return SmokeClient(smoke, env, trust(smoke, []), "/etc/shop/app.env")


def served_by(
    color: str | None, status: int = 200, body: bytes = b"ok"
) -> Callable[[Seen], Answer]:
    return lambda seen: (status, {"X-Edgeproxy-Color": color} if color else {}, body)


CHECK = SmokeCheck(path="/health", host="api.shop.test")


def test_a_check_passes_when_the_color_under_test_answered_and_says_so(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("green"))
    out = client(proxy, tmp_path, tls_ca, CHECK).run(CHECK, "green")
    assert (out.ok, out.status, out.served_by) == (True, 200, "green")


def test_a_check_answered_by_another_color_fails_and_names_the_color_that_answered(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("blue"))
    out = client(proxy, tmp_path, tls_ca, CHECK).run(CHECK, "green")
    assert not out.ok
    assert out.problem is not None
    assert "200 from blue" in out.problem
    assert "answered by blue, not green: the override was ignored" in out.problem


def test_a_check_without_the_color_header_fails_even_with_the_right_status_and_body(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by(None, body=b'{"regions": []}'))
    check = SmokeCheck(path="/store/regions", host="api.shop.test", contains="regions")
    out = client(proxy, tmp_path, tls_ca, check).run(check, "green")
    assert not out.ok
    assert out.problem is not None
    assert "no X-Edgeproxy-Color response header" in out.problem


def test_a_redirect_is_never_followed_and_fails_saying_where_it_pointed(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    redirect = {"Location": "https://api.shop.test/health", "X-Edgeproxy-Color": "green"}
    proxy = fake_proxy(lambda seen: (301, redirect, b""))
    out = client(proxy, tmp_path, tls_ca, CHECK).run(CHECK, "green")
    assert not out.ok
    assert out.problem is not None
    assert "answered 301 redirecting to https://api.shop.test/health" in out.problem
    assert len(proxy.seen) == 1
    expected = SmokeCheck(path="/health", host="api.shop.test", status=301)
    assert client(proxy, tmp_path, tls_ca, expected).run(expected, "green").ok


def test_the_check_sends_its_host_as_sni_and_host_and_its_method_headers_and_body_from_the_env_file(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("green", status=201))
    check = SmokeCheck(
        path="/store/carts",
        host="api.shop.test",
        method="post",
        headers={"x-publishable-api-key": "${MEDUSA_PUBLISHABLE_KEY}", "x-region": "${R:-eu}"},
        body='{"key": "${MEDUSA_PUBLISHABLE_KEY}"}',
        status=201,
    )
    c = client(proxy, tmp_path, tls_ca, check, MEDUSA_PUBLISHABLE_KEY="pk_secret_123")
    assert c.run(check, "green").ok
    [seen] = proxy.seen
    assert (seen.method, seen.path, seen.sni) == ("POST", "/store/carts", "api.shop.test")
    assert seen.headers["host"] == "api.shop.test"
    assert seen.headers["x-edgeproxy-color"] == "green"
    assert seen.headers["x-publishable-api-key"] == "pk_secret_123"
    assert seen.headers["x-region"] == "eu"
    assert seen.body == b'{"key": "pk_secret_123"}'


def test_a_failure_message_never_shows_a_secret_from_the_env_file(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("green", status=400))
    check = SmokeCheck(path="/store/regions", host="api.shop.test", headers={"k": "${KEY}"})
    out = client(proxy, tmp_path, tls_ca, check, KEY="pk_secret_123").run(check, "green")
    assert out.problem is not None
    assert "answered 400, expected 200" in out.problem
    assert "pk_secret_123" not in out.problem


def test_a_variable_missing_from_the_env_file_is_named_and_check_lists_it(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("green"))
    check = SmokeCheck(path="/", host="api.shop.test", headers={"k": "${MEDUSA_PUBLISHABLE_KEY}"})
    c = client(proxy, tmp_path, tls_ca, check)
    with pytest.raises(DeployConfigError) as e:
        c.run(check, "green")
    assert e.value.problems == [
        "smoke.checks[0].headers.k: ${MEDUSA_PUBLISHABLE_KEY} is not set in /etc/shop/app.env"
    ]
    assert referenced(c.smoke) == {"MEDUSA_PUBLISHABLE_KEY"}
    assert proxy.seen == []


def test_a_certificate_from_an_untrusted_ca_fails_the_check(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path, tls_ca: trustme.CA
) -> None:
    proxy = fake_proxy(served_by("green"), ca=trustme.CA())
    out = client(proxy, tmp_path, tls_ca, CHECK).run(CHECK, "green")
    assert out.problem is not None
    assert "edgeproxy's certificate is not trusted" in out.problem
    assert proxy.seen == []


def test_without_ca_file_the_certificate_edgeproxys_config_serves_is_trusted_and_only_it(
    fake_proxy: Callable[..., FakeProxy], tmp_path: Path
) -> None:
    ca = trustme.CA()  # in no trust store, and not given to switchctl
    proxy = fake_proxy(served_by("green"), ca=ca)
    cert = tmp_path / "fullchain.pem"
    conf = tmp_path / "edgeproxy.yml"
    conf.write_text(yaml.safe_dump({"tls": {"certificates": [{"cert": str(cert), "key": "k"}]}}))
    smoke = Smoke(url=f"https://127.0.0.1:{proxy.port}", checks=[CHECK])

    def run() -> str | None:
        return (
            SmokeClient(smoke, {}, trust(smoke, [tmp_path / "absent.yml", conf]))
            .run(CHECK, "green")
            .problem
        )

    cert.write_bytes(proxy.leaf.cert_chain_pems[0].bytes())
    assert run() is None
    cert.write_bytes(ca.issue_cert("api.shop.test").cert_chain_pems[0].bytes())
    problem = run()
    assert problem is not None and "edgeproxy's certificate is not trusted" in problem
    with pytest.raises(DeployConfigError, match="lists no certificate to trust"):
        trust(smoke, [tmp_path / "absent.yml"])


# --- the shipped compose/medusa settings through a real edgeproxy -------------------------------


def test_the_shipped_medusa_smoke_checks_pass_for_a_good_release(
    shop: Callable[..., Shop],
) -> None:
    s = shop()
    assert s.failures() == []
    assert s.green.seen[("GET", "/store/regions", 200)] == 1
    assert s.blue.store_requests() == 0


def test_the_shipped_medusa_smoke_checks_fail_for_a_release_that_answers_wrongly(
    shop: Callable[..., Shop],
) -> None:
    s = shop(green_broken=True)
    [problem] = s.failures()
    assert f"GET https://{API}/store/regions" in problem
    assert "-> 500 from green: answered 500, expected 200" in problem


def test_the_shipped_medusa_smoke_checks_fail_when_edgeproxy_ignores_the_override(
    shop: Callable[..., Shop],
) -> None:
    s = shop(override={"allow_from": ["192.0.2.0/24"]})  # loopback may not override here
    problems = s.failures()
    assert len(problems) == 2
    # blue answered; its own X-Edgeproxy-Color was dropped by edgeproxy, which names a
    # color only for an override it honoured, so the check cannot mistake blue for green.
    assert all("200 from an unnamed color: no X-Edgeproxy-Color" in p for p in problems)
    assert s.green.store_requests() == 0


def test_edgeproxy_itself_names_the_color_that_served_an_honoured_override(
    shop: Callable[..., Shop],
) -> None:
    s = shop(served_by=False)  # the apps send no X-Edgeproxy-Color of their own
    assert s.failures() == []
    assert s.green.store_requests() > 0


def test_the_old_http_smoke_url_gets_the_https_redirect_and_fails_instead_of_testing_blue(
    shop: Callable[..., Shop],
) -> None:
    s = shop()
    problems = s.failures(url=f"http://127.0.0.1:{s.edge.http_port}")
    assert len(problems) == 2
    assert all(f"answered 301 redirecting to https://{API}" in p for p in problems)
    assert s.blue.store_requests() == s.green.store_requests() == 0


def test_medusa_answers_400_without_the_publishable_key_so_the_shipped_check_sends_it(
    shop: Callable[..., Shop],
) -> None:
    s = shop()
    no_key = [c.model_copy(update={"headers": {}}) for c in s.deploy.smoke.checks]
    [problem] = s.failures(checks=no_key)
    assert "answered 400, expected 200" in problem
    assert s.green.seen[("GET", "/store/regions", 400)] == 1
    assert referenced(s.deploy.smoke) == {"MEDUSA_PUBLISHABLE_KEY"}
    assert "MEDUSA_PUBLISHABLE_KEY" in s.deploy.required_env
