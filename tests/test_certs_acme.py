"""`certs issue` / `certs renew` / `certs install` against a real ACME server (pebble)."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs.inspect import read_certificates
from certs.selfsigned import make_ca_and_leaf
from tests.acme_fixtures import (
    EdgeproxyProcess,
    Pebble,
    require_acme_tools,
    run_edgeproxy,
    run_pebble,
    serve_directory,
)

pytestmark = [pytest.mark.acme, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "shop.example.test"


def certs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m certs ARGS` as an operator (or certbot's hook) would."""
    return subprocess.run(
        [sys.executable, "-m", "certs", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )


def hook(*args: str) -> str:
    """A deploy-hook command line running this checkout's `certs`."""
    return shlex.join([sys.executable, "-m", "certs", *args])


def verify_chain(fullchain: Path, root_pem: bytes, name: str) -> x509.Certificate:
    """Path-validate the leaf for `name` up to pebble's root, as a TLS client would."""
    leaf, *intermediates = read_certificates(fullchain)
    roots = x509.load_pem_x509_certificates(root_pem)
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, intermediates)
    return leaf


@dataclass
class AcmeSetup:
    pebble: Pebble
    webroot: Path
    certbot_dir: Path

    def certbot_args(self) -> list[str]:
        return ["--config-dir", str(self.certbot_dir), "--ca-bundle", str(self.pebble.ca_bundle)]


@pytest.fixture
def acme_static(tmp_path: Path) -> Iterator[AcmeSetup]:
    """pebble whose HTTP-01 validator reaches a plain static server over the webroot."""
    require_acme_tools()
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    with serve_directory(webroot) as http_port, run_pebble(tmp_path / "pebble", http_port) as p:
        yield AcmeSetup(pebble=p, webroot=webroot, certbot_dir=tmp_path / "letsencrypt")


def test_issue_then_forced_renewal_with_deploy_hook_installs_a_new_serial(
    acme_static: AcmeSetup, tmp_path: Path
) -> None:
    setup = acme_static
    issued = certs_cli(
        "issue", "--domains", DOMAIN, "--webroot", str(setup.webroot),
        "--server", setup.pebble.directory, *setup.certbot_args(),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    assert f"certs: requesting a certificate for {DOMAIN}" in issued.stdout
    lineage = setup.certbot_dir / "live" / DOMAIN
    assert f"certs: issued; lineage {lineage}" in issued.stdout
    assert "chain order:  ok" in issued.stdout
    assert "-----BEGIN" not in issued.stdout + issued.stderr

    root = setup.pebble.root_pem()
    first = verify_chain(lineage / "fullchain.pem", root, DOMAIN)
    assert first.not_valid_after_utc - first.not_valid_before_utc <= dt.timedelta(days=90)

    dest = tmp_path / "edgeproxy-certs"
    installed = certs_cli("install", "--lineage", str(lineage), "--dest", str(dest), "--no-reload")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    served = dest / DOMAIN / "fullchain.pem"
    assert read_certificates(served)[0].serial_number == first.serial_number

    renewed = certs_cli(
        "renew", "--force-renewal", "--no-random-sleep-on-renew", *setup.certbot_args(),
        "--deploy-hook", hook("install", "--dest", str(dest), "--no-reload"),
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = verify_chain(served, root, DOMAIN)
    assert second.serial_number != first.serial_number
    assert read_certificates(lineage / "fullchain.pem")[0].serial_number == second.serial_number
    versions = sorted(p.name for p in (dest / DOMAIN / "versions").iterdir())
    assert len(versions) == 2


def test_issue_fails_with_a_pointer_to_the_logs_when_the_webroot_is_not_served(
    acme_static: AcmeSetup, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-served"
    elsewhere.mkdir()
    result = certs_cli(
        "issue", "--domains", DOMAIN, "--webroot", str(elsewhere),
        "--server", acme_static.pebble.directory, *acme_static.certbot_args(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "certs: certbot exited with status 1" in result.stderr
    assert f"{acme_static.certbot_dir / 'logs'}/letsencrypt.log" in result.stderr


# --- end to end through edgeproxy ------------------------------------------------------------

SSLYZE = Path(sys.executable).parent / "sslyze"


class KeepAliveClient:
    """One TLS connection (SNI = DOMAIN) reused for several HTTP/1.1 requests."""

    def __init__(self, port: int, cafile: Path) -> None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = ctx.wrap_socket(raw, server_hostname=DOMAIN)

    @property
    def serial(self) -> int:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    def get(self, path: str = "/") -> tuple[int, bytes]:
        self.tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode())
        resp = http.client.HTTPResponse(self.tls)
        resp.begin()
        body = resp.read()
        assert not resp.will_close, "edgeproxy closed a keep-alive connection"
        return resp.status, body

    def close(self) -> None:
        self.tls.close()


def served_serial(port: int, cafile: Path) -> int:
    """The serial of the certificate a fresh, verifying TLS client gets for DOMAIN."""
    client = KeepAliveClient(port, cafile)
    try:
        assert client.get()[0] == 200
        return client.serial
    finally:
        client.close()


@dataclass
class EdgeSetup(AcmeSetup):
    edge: EdgeproxyProcess
    dest: Path
    selfsigned_ca: Path

    def install_hook(self) -> str:
        return hook("install", "--dest", str(self.dest), "--socket", str(self.edge.socket))


@pytest.fixture
def acme_edge(tmp_path: Path) -> Iterator[EdgeSetup]:
    """edgeproxy (subprocess) with a self-signed start certificate, a webroot and a backend,
    and pebble validating through edgeproxy's HTTP listener."""
    require_acme_tools()
    dest = tmp_path / "edgeproxy-certs"
    start = make_ca_and_leaf([DOMAIN], dest / DOMAIN)
    webroot, site_root = tmp_path / "webroot", tmp_path / "site"
    webroot.mkdir()
    site_root.mkdir()
    (site_root / "index.html").write_text("hello from the backend\n")
    sock = tmp_path / "run" / "control.sock"
    config = tmp_path / "edgeproxy.yml"
    with serve_directory(site_root) as backend_port:
        config.write_text(
            json.dumps(
                {
                    "listen": {"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
                    "control": {"socket": str(sock)},
                    "state_file": str(tmp_path / "state.json"),
                    "shutdown_grace": 2,
                    "tls": {
                        "certificates": [{"cert": str(start.fullchain), "key": str(start.privkey)}],
                        "reload_poll_seconds": 0,
                    },
                    "acme": {"webroot": str(webroot)},
                    "sites": [
                        {
                            "hosts": [DOMAIN],
                            "routes": [
                                {"path": "/", "upstream": f"http://127.0.0.1:{backend_port}"}
                            ],
                        }
                    ],
                }
            )
        )
        with (
            run_edgeproxy(config, sock) as edge,
            run_pebble(tmp_path / "pebble", edge.http_port) as pebble,
        ):
            yield EdgeSetup(
                pebble=pebble,
                webroot=webroot,
                certbot_dir=tmp_path / "letsencrypt",
                edge=edge,
                dest=dest,
                selfsigned_ca=start.ca_cert,
            )


def test_certificate_issued_through_edgeproxy_is_swapped_in_renewed_and_guarded(
    acme_edge: EdgeSetup, tmp_path: Path
) -> None:
    setup, edge = acme_edge, acme_edge.edge
    before = KeepAliveClient(edge.https_port, setup.selfsigned_ca)
    assert before.get() == (200, b"hello from the backend\n")
    start_serial = before.serial

    # 1. certbot's HTTP-01 token is served by edgeproxy's HTTP listener.
    issued = certs_cli(
        "issue", "--domains", DOMAIN, "--webroot", str(setup.webroot),
        "--server", setup.pebble.directory, *setup.certbot_args(),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr + edge.log.read_text()[-2000:]
    lineage = setup.certbot_dir / "live" / DOMAIN

    # 2. certs install swaps it in and edgeproxy reloads over the control socket.
    installed = certs_cli(
        "install", "--lineage", str(lineage), "--dest", str(setup.dest),
        "--socket", str(edge.socket),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "certs: edgeproxy reloaded its certificates:" in installed.stdout
    root_pem = setup.pebble.root_pem()
    root_file = tmp_path / "pebble-root.pem"
    root_file.write_bytes(root_pem)
    issued_serial = verify_chain(lineage / "fullchain.pem", root_pem, DOMAIN).serial_number
    assert served_serial(edge.https_port, root_file) == issued_serial

    # 3. The keep-alive connection opened before the swap keeps working, on its old cert.
    assert before.get() == (200, b"hello from the backend\n")
    assert before.serial == start_serial
    before.close()

    # 4. A forced renewal runs the deploy hook: install + reload → a new serial is served.
    renewed = certs_cli(
        "renew", "--force-renewal", "--no-random-sleep-on-renew", *setup.certbot_args(),
        "--deploy-hook", setup.install_hook(),
    )  # fmt: skip
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    renewed_serial = served_serial(edge.https_port, root_file)
    assert renewed_serial not in (issued_serial, start_serial)
    assert read_certificates(lineage / "fullchain.pem")[0].serial_number == renewed_serial

    # 5. A broken pair (the renewed chain with the start key) is refused; nothing changes.
    current = os.readlink(setup.dest / DOMAIN / "current")
    stranger = make_ca_and_leaf([DOMAIN], tmp_path / "stranger")
    broken = certs_cli(
        "install", "--cert", str(lineage / "fullchain.pem"), "--key", str(stranger.privkey),
        "--dest", str(setup.dest), "--name", DOMAIN, "--socket", str(edge.socket),
    )  # fmt: skip
    assert broken.returncode == 1
    assert "the private key does not match the certificate" in broken.stderr
    assert os.readlink(setup.dest / DOMAIN / "current") == current
    assert served_serial(edge.https_port, root_file) == renewed_serial

    # 6. The pebble-issued certificate as served passes Mozilla's intermediate profile.
    if not SSLYZE.exists():
        pytest.skip("sslyze is not installed in the venv; the rest of the test passed")
    scan = subprocess.run(
        [
            str(SSLYZE), "--mozilla_config=intermediate", "--certinfo_ca_file", str(root_file),
            "--sni", DOMAIN, f"127.0.0.1:{edge.https_port}",
        ],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert scan.returncode == 0, scan.stdout[-4000:]
