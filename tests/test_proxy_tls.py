"""TLS termination over real sockets: SNI, default certificate, 421, ALPN, resumption, Mozilla intermediate."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from certs.selfsigned import make_ca_and_leaf
from tests.proxy_fixtures import raw_request


@pytest.fixture
def two_sites(tmp_path: Path, backend, edge):
    a = make_ca_and_leaf(["a.test"], tmp_path / "a")
    b = make_ca_and_leaf(["b.test"], tmp_path / "a")  # same CA, second leaf
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    shutil.copy(b.fullchain, b_dir / "fullchain.pem")
    shutil.copy(b.privkey, b_dir / "privkey.pem")
    # make_ca_and_leaf wrote b's leaf over a's files: issue a again for a.
    a = make_ca_and_leaf(["a.test"], tmp_path / "a")
    back = backend("blue")
    e = edge(
        {
            "listen": {"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
            "tls": {
                "certificates": [
                    {"cert": str(a.fullchain), "key": str(a.privkey)},
                    {"cert": str(b_dir / "fullchain.pem"), "key": str(b_dir / "privkey.pem")},
                ]
            },
            "apps": {"shop": {"colors": {"blue": {"upstreams": [back.url]}}}},
            "sites": [
                {"hosts": ["a.test"], "routes": [{"path": "/", "app": "shop"}]},
                {"hosts": ["b.test"], "routes": [{"path": "/", "app": "shop"}]},
            ],
        }
    )
    return e, a.ca_cert


def tls_get(
    port: int,
    ca: Path,
    sni: str | None,
    host: str,
    *,
    session: ssl.SSLSession | None = None,
    ctx: ssl.SSLContext | None = None,
):
    ctx = ctx or ssl.create_default_context(cafile=str(ca))
    if sni is None:
        ctx.check_hostname = False
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        cert = s.getpeercert()
        return data, cert, s.selected_alpn_protocol(), s.session, s.session_reused


def sans(cert) -> list[str]:
    return [v for k, v in cert["subjectAltName"] if k == "DNS"]


def test_the_certificate_is_chosen_by_sni_and_alpn_is_http11(two_sites):
    e, ca = two_sites
    data, cert, alpn, _, _ = tls_get(e.https_port, ca, "a.test", "a.test")
    assert data.startswith(b"HTTP/1.1 200")
    assert sans(cert) == ["a.test"]
    assert alpn == "http/1.1"
    data, cert, _, _, _ = tls_get(e.https_port, ca, "b.test", "b.test")
    assert sans(cert) == ["b.test"]
    assert data.startswith(b"HTTP/1.1 200")


def test_a_client_without_sni_gets_the_default_certificate(two_sites):
    e, ca = two_sites
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", e.https_port), timeout=5)) as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "a.test" in names.get_values_for_type(x509.DNSName)


def test_a_host_of_another_site_than_the_sni_name_gets_421(two_sites):
    e, ca = two_sites
    data, _, _, _, _ = tls_get(e.https_port, ca, "a.test", "b.test")
    assert data.startswith(b"HTTP/1.1 421")


def test_tls_sessions_are_resumed(two_sites):
    e, ca = two_sites
    ctx = ssl.create_default_context(cafile=str(ca))
    _, _, _, session, reused = tls_get(e.https_port, ca, "a.test", "a.test", ctx=ctx)
    assert not reused
    _, _, _, _, reused = tls_get(e.https_port, ca, "a.test", "a.test", session=session, ctx=ctx)
    assert reused


def test_the_http_listener_redirects_to_https_keeping_path_and_query(two_sites):
    e, _ = two_sites
    out = raw_request(
        e.http_port, b"GET /x?y=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 301")
    assert b"location: https://a.test:%d/x?y=1\r\n" % e.https_port in out


def test_the_https_listener_is_mozilla_intermediate_compliant(two_sites):
    e, ca = two_sites
    sslyze = Path(sys.executable).with_name("sslyze")
    proc = subprocess.run(
        [
            str(sslyze),
            "--mozilla_config=intermediate",
            "--certinfo_ca_file",
            str(ca),
            "--sni",
            "a.test",
            f"127.0.0.1:{e.https_port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "OK - Compliant" in proc.stdout


def test_a_certificate_close_to_expiry_is_warned_about_in_the_log(tmp_path, backend, edge, caplog):
    import logging
    import time

    tls = make_ca_and_leaf(["a.test"], tmp_path / "soon", days=5)
    back = backend("blue")
    with caplog.at_level(logging.WARNING, logger="edgeproxy.server"):
        edge(
            {
                "listen": {"http": None, "https": "127.0.0.1:0"},
                "tls": {
                    "certificates": [{"cert": str(tls.fullchain), "key": str(tls.privkey)}],
                    "expiry_warning_days": 21,
                },
                "sites": [{"hosts": ["a.test"], "routes": [{"path": "/", "upstream": back.url}]}],
            }
        )
        deadline = time.monotonic() + 5
        while not any("expires in" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no expiry warning logged"
            time.sleep(0.05)
    msg = next(r.getMessage() for r in caplog.records if "expires in" in r.getMessage())
    assert "a.test" in msg
    assert "certs renew" in msg
