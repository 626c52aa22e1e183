"""Obtain and renew certificates with certbot in webroot mode.

certbot writes the HTTP-01 token under `WEBROOT/.well-known/acme-challenge/` and
edgeproxy serves that folder on its HTTP listener (`acme.webroot`), so nothing
else has to listen on port 80. Any ACME directory works through `--server`
(Let's Encrypt production by default, `--staging` for Let's Encrypt staging,
pebble in tests).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from certs.errors import AcmeError

LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
DEFAULT_CONFIG_DIR = Path("/etc/letsencrypt")


@dataclass(frozen=True)
class CertbotDirs:
    """Where certbot keeps accounts and lineages, its scratch files and its logs."""

    config_dir: Path | None = None
    work_dir: Path | None = None
    logs_dir: Path | None = None

    def args(self) -> list[str]:
        out: list[str] = []
        if self.config_dir is not None:
            # Without explicit work/logs dirs certbot would still need /var/lib and /var/log.
            out += ["--config-dir", str(self.config_dir)]
            out += ["--work-dir", str(self.work_dir or self.config_dir / "work")]
            out += ["--logs-dir", str(self.logs_dir or self.config_dir / "logs")]
        else:
            if self.work_dir is not None:
                out += ["--work-dir", str(self.work_dir)]
            if self.logs_dir is not None:
                out += ["--logs-dir", str(self.logs_dir)]
        return out

    def lineage(self, cert_name: str) -> Path:
        return (self.config_dir or DEFAULT_CONFIG_DIR) / "live" / cert_name


@dataclass(frozen=True)
class Certbot:
    """How to run certbot: the binary, its directories and the ACME server's CA bundle."""

    dirs: CertbotDirs = field(default_factory=CertbotDirs)
    binary: str = "certbot"
    ca_bundle: Path | None = None
    """Trust this CA for the ACME server's HTTPS (pebble's self-signed listener)."""

    def executable(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise AcmeError(
                f"certbot is not installed ({self.binary!r} not found on PATH); "
                "install it with `apt-get install certbot` or pass --certbot PATH"
            )
        return found

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.ca_bundle is not None:
            env["REQUESTS_CA_BUNDLE"] = str(self.ca_bundle)
        return env

    def run(self, args: Sequence[str], echo: bool = True) -> None:
        argv = [self.executable(), *args, *self.dirs.args()]
        if echo:
            print(f"certs: running {shlex.join(argv)}", flush=True)
        rc = subprocess.run(argv, env=self.env(), check=False).returncode
        if rc != 0:
            logs = self.dirs.logs_dir or (
                self.dirs.config_dir / "logs" if self.dirs.config_dir else "/var/log/letsencrypt"
            )
            raise AcmeError(
                f"certbot exited with status {rc}; its messages are above and its log is in "
                f"{logs}/letsencrypt.log (see docs/certificates.md, 'When issuance fails')"
            )


def issue_args(
    domains: list[str],
    webroot: Path,
    email: str | None = None,
    server: str | None = None,
    staging: bool = False,
    deploy_hook: str | None = None,
    cert_name: str | None = None,
    key_type: str = "ecdsa",
) -> list[str]:
    """certbot's arguments for `certonly --webroot` (validated here, before certbot runs)."""
    if not domains:
        raise AcmeError("give at least one domain (--domains shop.example.com,www.example.com)")
    if server and staging:
        raise AcmeError("--server and --staging both name the ACME directory; give only one")
    if not webroot.is_dir():
        raise AcmeError(
            f"webroot {webroot} is not a directory; create it and make sure edgeproxy's "
            "acme.webroot names the same folder"
        )
    args = ["certonly", "--non-interactive", "--agree-tos", "--webroot", "-w", str(webroot)]
    for domain in domains:
        args += ["-d", domain]
    args += ["--cert-name", cert_name or domains[0], "--key-type", key_type]
    args += ["--email", email] if email else ["--register-unsafely-without-email"]
    if server or staging:
        args += ["--server", server or LETSENCRYPT_STAGING]
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    return args


def renew_args(
    cert_name: str | None = None,
    force: bool = False,
    no_random_sleep: bool = False,
    deploy_hook: str | None = None,
) -> list[str]:
    args = ["renew", "--non-interactive"]
    if cert_name:
        args += ["--cert-name", cert_name]
    if force:
        args.append("--force-renewal")
    if no_random_sleep:
        args.append("--no-random-sleep-on-renew")
    if deploy_hook:
        args += ["--deploy-hook", deploy_hook]
    return args
