"""`certs install --lineage … --adopt-renewal`: a lineage certbot renewed for nginx renews
through edgeproxy's webroot and installs with `certs install` (real certbot, real pebble)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from certs.inspect import read_certificates
from certs.renewal import rewrite
from tests.test_certs_acme import DOMAIN, AcmeSetup, acme_static, certs_cli

pytestmark = [pytest.mark.acme, pytest.mark.slow]
__all__ = ["acme_static"]


def as_nginx_left_it(conf: Path, marker: Path) -> None:
    """The renewal config of a lineage renewed by certbot's nginx plugin with a reload hook."""
    text = conf.read_text()
    text = re.sub(r"(?m)^authenticator = .*$", "authenticator = nginx\ninstaller = nginx", text)
    text = re.sub(r"(?m)^webroot_path = .*\n", "", text)
    text = re.sub(r"(?s)\[\[webroot_map\]\].*", "", text)
    text += f"renew_hook = touch {shlex.quote(str(marker))}\n"
    conf.write_text(text)


def test_an_nginx_lineage_is_installed_and_its_next_renewal_goes_through_edgeproxys_webroot(
    acme_static: AcmeSetup, tmp_path: Path
) -> None:
    setup = acme_static
    nginx_reloaded = tmp_path / "nginx-reloaded"
    issued = certs_cli(
        "issue", "--domains", DOMAIN, "--webroot", str(setup.webroot),
        "--server", setup.pebble.directory, *setup.certbot_args(),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stdout + issued.stderr
    lineage = setup.certbot_dir / "live" / DOMAIN
    conf = setup.certbot_dir / "renewal" / f"{DOMAIN}.conf"
    as_nginx_left_it(conf, nginx_reloaded)
    first = read_certificates(lineage / "fullchain.pem")[0]

    dest = tmp_path / "edgeproxy-certs"
    taken = certs_cli(
        "install", "--lineage", str(lineage), "--adopt-renewal", "--webroot", str(setup.webroot),
        "--dest", str(dest), "--no-reload",
    )  # fmt: skip
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert (
        read_certificates(dest / DOMAIN / "fullchain.pem")[0].serial_number == first.serial_number
    )
    text = conf.read_text()
    assert not re.search(r"(?m)^(authenticator|installer) = nginx|nginx-reloaded", text)
    assert "authenticator = webroot" in text
    assert f"webroot_path = {setup.webroot}," in text
    assert list(conf.parent.glob(f"{DOMAIN}.conf.pre-edgeproxy-*"))

    renewed = certs_cli(
        "renew", "--force-renewal", "--no-random-sleep-on-renew", *setup.certbot_args()
    )
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    second = read_certificates(dest / DOMAIN / "fullchain.pem")[0]
    assert second.serial_number != first.serial_number  # the stored hook installed it
    assert not nginx_reloaded.exists()


def test_the_rewrite_keeps_the_account_and_server_and_replaces_every_nginx_setting() -> None:
    before = (
        "version = 2.1.0\narchive_dir = /etc/letsencrypt/archive/a.test\n\n"
        "[renewalparams]\naccount = abc\nauthenticator = nginx\ninstaller = nginx\n"
        "server = https://acme.test/dir\npost_hook = docker exec nginx nginx -s reload\n"
        "[[webroot_map]]\nold.test = /srv/nginx-root\n"
    )
    after = rewrite(before, Path("/var/www/certbot"), ["a.test", "b.test"], "certs install")
    assert after == (
        "version = 2.1.0\narchive_dir = /etc/letsencrypt/archive/a.test\n\n"
        "[renewalparams]\naccount = abc\nserver = https://acme.test/dir\n"
        "authenticator = webroot\nwebroot_path = /var/www/certbot,\nrenew_hook = certs install\n"
        "[[webroot_map]]\na.test = /var/www/certbot\nb.test = /var/www/certbot\n"
    )
