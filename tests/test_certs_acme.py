"""`certs issue` / `certs renew` / `certs install` against a real ACME server (pebble)."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certs.inspect import read_certificates
from tests.acme_fixtures import Pebble, require_acme_tools, run_pebble, serve_directory

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
