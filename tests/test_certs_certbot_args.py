"""certs.acme: the certbot command lines `certs issue` and `certs renew` build and check."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from certs.acme import LETSENCRYPT_STAGING, CertbotDirs, issue_args, renew_args
from certs.cli import cli
from certs.errors import AcmeError


def test_issue_runs_certonly_webroot_non_interactively_with_every_domain(tmp_path: Path) -> None:
    args = issue_args(["a.example.test", "b.example.test"], tmp_path, email="ops@example.test")
    assert args == [
        "certonly", "--non-interactive", "--agree-tos", "--webroot", "-w", str(tmp_path),
        "-d", "a.example.test", "-d", "b.example.test",
        "--cert-name", "a.example.test", "--key-type", "ecdsa",
        "--email", "ops@example.test",
    ]  # fmt: skip


def test_issue_without_email_registers_without_one_and_staging_names_the_directory(
    tmp_path: Path,
) -> None:
    args = issue_args(["a.example.test"], tmp_path, staging=True, deploy_hook="certs install")
    assert "--register-unsafely-without-email" in args
    assert args[args.index("--server") + 1] == LETSENCRYPT_STAGING
    assert args[-2:] == ["--deploy-hook", "certs install"]


def test_issue_refuses_server_with_staging_and_a_missing_webroot(tmp_path: Path) -> None:
    with pytest.raises(AcmeError, match="give only one"):
        issue_args(["a.example.test"], tmp_path, server="https://acme.test/dir", staging=True)
    with pytest.raises(AcmeError, match=r"acme\.webroot names the same folder"):
        issue_args(["a.example.test"], tmp_path / "missing")


def test_renew_passes_force_and_no_random_sleep_only_when_asked() -> None:
    assert renew_args() == ["renew", "--non-interactive"]
    assert renew_args("shop", force=True, no_random_sleep=True, deploy_hook="h") == [
        "renew", "--non-interactive", "--cert-name", "shop", "--force-renewal",
        "--no-random-sleep-on-renew", "--deploy-hook", "h",
    ]  # fmt: skip


def test_config_dir_alone_keeps_work_and_logs_dirs_beside_it(tmp_path: Path) -> None:
    assert CertbotDirs(config_dir=tmp_path).args() == [
        "--config-dir", str(tmp_path),
        "--work-dir", str(tmp_path / "work"),
        "--logs-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    assert CertbotDirs().args() == []
    assert CertbotDirs().lineage("shop") == Path("/etc/letsencrypt/live/shop")


def test_cli_issue_reports_a_missing_certbot_binary_with_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["issue", "--domains", "a.example.test", "--webroot", str(tmp_path),
         "--certbot", "no-such-certbot"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "certbot is not installed ('no-such-certbot' not found on PATH)" in result.output
    assert "apt-get install certbot" in result.output


def test_cli_issue_takes_the_webroot_from_the_edgeproxy_config(tmp_path: Path) -> None:
    config = tmp_path / "edgeproxy.yml"
    config.write_text("acme: {webroot: missing-webroot}\n")
    result = CliRunner().invoke(
        cli, ["issue", "--domains", "a.example.test", "--config", str(config)]
    )
    assert result.exit_code == 1
    assert f"webroot {tmp_path / 'missing-webroot'} is not a directory" in result.output
