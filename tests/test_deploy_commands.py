"""The click commands that need no docker: --check, and errors before anything starts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from switchctl.deploy import commands
from switchctl.deploy.commands import deploy_cmd, doctor_cmd, releases_group
from switchctl.deploy.history import History, Release
from switchctl.deploy.plan import Finding, Plan

CONFIG = """
app: shop
image: shop:{ref}
env_file: app.env
required_env: [JWT_SECRET]
roles:
  server: {traffic: true, ports: {blue: 9000, green: 9002}}
edgeproxy: {container: edgeproxy}
state_dir: state
"""


def setup(tmp_path: Path, env: str, mode: int = 0o600) -> Path:
    (tmp_path / "deploy.yml").write_text(CONFIG)
    (tmp_path / "app.env").write_text(env)
    os.chmod(tmp_path / "app.env", mode)
    return tmp_path / "deploy.yml"


def test_check_validates_the_config_and_the_env_file_without_printing_secrets(
    tmp_path: Path,
) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=hunter2\n")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 0, res.output
    assert "ok (app shop, roles server, 1 variables in" in res.output
    assert "hunter2" not in res.output


def test_a_missing_variable_exits_2_naming_it_and_the_file(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "OTHER=1\n")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 2
    assert f"JWT_SECRET is missing from {tmp_path / 'app.env'}" in res.output


def test_an_unknown_key_in_the_deploy_config_exits_2(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=x\n")
    cfg.write_text(CONFIG + "canary_steps: [10]\n")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--ref", "abc"])
    assert res.exit_code == 2
    assert "canary_steps: unknown key" in res.output


def test_releases_list_shows_history_and_rollback_refuses_an_unknown_release(
    tmp_path: Path,
) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=x\n")
    History(tmp_path / "state" / "shop" / "releases.json").record(
        Release(
            id="20261126T120000-abc",
            app="shop",
            image="shop:abc",
            color="blue",
            started_at=1.0,
            outcome="success",
            git_sha="abc",
        )
    )
    listed = CliRunner().invoke(releases_group, ["list", "-c", str(cfg)])
    assert listed.exit_code == 0
    assert "20261126T120000-abc" in listed.output
    assert "success  shop:abc  abc" in listed.output
    back = CliRunner().invoke(releases_group, ["rollback", "nope", "-c", str(cfg)])
    assert back.exit_code == 2
    assert "no successful release nope" in back.output


PROXY = """
apps:
  shop:
    colors:
      blue: {upstreams: ["http://127.0.0.1:9000"]}
      green: {upstreams: ["http://127.0.0.1:9002"]}
    health: {path: /health}
sites:
  - hosts: [shop.example.com]
    routes:
      - {path: /, app: shop}
      - {path: /search/, upstream: "http://127.0.0.1:7700"}
"""

CROSS = """
app: shop
image: shop:{ref}
env_file: app.env
roles:
  server: {traffic: true, ports: {blue: 9000, green: 9004}, health_path: /healthz}
edgeproxy: {container: edgeproxy, config: edgeproxy.yml}
smoke:
  checks:
    - {path: /health, host: shop.example.com}
    - {path: /, host: api.example.com}
    - {path: /search/x, host: shop.example.com}
state_dir: state
"""


def test_check_compares_the_deploy_config_with_edgeproxys_and_reports_every_disagreement(
    tmp_path: Path,
) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=x\n")
    cfg.write_text(CROSS)
    proxy = tmp_path / "edgeproxy.yml"
    proxy.write_text(PROXY)
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 2, res.output
    out = res.output
    assert (
        f"roles.server.ports.green: green listens on 9004, but {proxy} sends green's traffic "
        "to http://127.0.0.1:9002 (apps.shop.colors.green.upstreams)"
    ) in out
    assert (
        f"roles.server.health_path: /healthz, but {proxy} checks /health (apps.shop.health.path)"
    ) in out
    assert f"smoke.checks[1].host: no site of {proxy} serves api.example.com" in out
    assert "smoke.checks[2]: shop.example.com/search/x goes to route /search/ (not shop)" in out
    assert "roles.server.ports.blue" not in out
    assert "smoke.checks[0]" not in out


def test_check_names_an_app_that_edgeproxys_config_does_not_have(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=x\n")
    cfg.write_text(
        CONFIG.replace(
            "edgeproxy: {container: edgeproxy}",
            "edgeproxy: {container: edgeproxy, config: edgeproxy.yml}",
        )
    )
    (tmp_path / "edgeproxy.yml").write_text(
        PROXY.replace("  shop:", "  medusa:").replace("app: shop", "app: medusa")
    )
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 2
    assert f"app: 'shop' is not an app of {tmp_path / 'edgeproxy.yml'} (apps: medusa)" in res.output


def test_check_with_json_prints_one_report_for_scripts(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "JWT_SECRET=hunter2\n")
    good = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check", "--json"])
    assert good.exit_code == 0
    report = json.loads(good.stdout)
    assert (report["ok"], report["app"], report["variables"], report["problems"]) == (
        True,
        "shop",
        1,
        [],
    )
    assert "hunter2" not in good.output
    (tmp_path / "app.env").write_text("OTHER=1\n")
    bad = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check", "--json"])
    assert bad.exit_code == 2
    assert json.loads(bad.stdout)["problems"] == [
        f"JWT_SECRET is missing from {tmp_path / 'app.env'}"
    ]


def test_plan_exits_4_when_the_plan_is_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = Plan(live=None, target="blue", blockers=[Finding("shop is paused", "resume it")])
    monkeypatch.setattr(commands, "connect", lambda cfg: None)
    monkeypatch.setattr(commands, "deploy", lambda *a, **kw: (blocked, None))
    cfg = setup(tmp_path, "JWT_SECRET=x\n")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--plan"])
    assert res.exit_code == 4
    assert "BLOCKED: shop is paused" in res.output
    ok = Plan(live="blue", target="green")
    monkeypatch.setattr(commands, "deploy", lambda *a, **kw: (ok, None))
    assert CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--plan"]).exit_code == 0


@pytest.mark.parametrize("command", [deploy_cmd, doctor_cmd, releases_group])
def test_every_deploy_command_lists_its_exit_codes_in_help(command: click.Command) -> None:
    res = CliRunner().invoke(command, ["--help"])
    assert res.exit_code == 0
    codes = " ".join(res.output.split("Exit codes:")[1].split())
    assert all(f"{n} " in codes for n in (0, 1, 2))


MEDUSA = Path(__file__).resolve().parent.parent / "compose" / "medusa"


def shipped_medusa(tmp_path: Path, env: str, **smoke: Any) -> Path:
    """compose/medusa/deploy.yml as shipped, with a local env file and edgeproxy.yml."""
    cfg = yaml.safe_load((MEDUSA / "deploy.yml").read_text())
    cfg["env_file"] = str(tmp_path / "app.env")
    cfg["edgeproxy"]["config"] = str(MEDUSA / "edgeproxy.yml")
    cfg["state_dir"] = str(tmp_path / "state")
    cfg["smoke"].update(smoke)
    (tmp_path / "app.env").write_text(env)
    os.chmod(tmp_path / "app.env", 0o600)
    path = tmp_path / "deploy.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


MEDUSA_ENV = "".join(
    f"{k}=x\n"
    for k in [
        "DATABASE_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "COOKIE_SECRET",
        "STORE_CORS",
        "ADMIN_CORS",
        "AUTH_CORS",
        "MEILISEARCH_HOST",
        "MEILISEARCH_API_KEY",
    ]
)


def test_the_shipped_medusa_deploy_config_passes_deploy_check_with_the_publishable_key(
    tmp_path: Path,
) -> None:
    cfg = shipped_medusa(tmp_path, MEDUSA_ENV + "MEDUSA_PUBLISHABLE_KEY=pk_01abc\n")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 0, res.output
    assert "agrees with" in res.output and "pk_01abc" not in res.output
    missing = shipped_medusa(tmp_path, MEDUSA_ENV)
    res = CliRunner().invoke(deploy_cmd, ["-c", str(missing), "--check"])
    assert res.exit_code == 2
    assert f"MEDUSA_PUBLISHABLE_KEY is missing from {tmp_path / 'app.env'}" in res.output


def test_deploy_check_refuses_a_plain_http_smoke_url_where_the_site_redirects_to_https(
    tmp_path: Path,
) -> None:
    env = MEDUSA_ENV + "MEDUSA_PUBLISHABLE_KEY=pk\n"
    cfg = shipped_medusa(tmp_path, env, url="http://127.0.0.1:80")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 2
    assert "smoke.url: http://127.0.0.1:80 is plain HTTP, where" in res.output
    assert "smoke checks never follow a redirect" in res.output
    public = shipped_medusa(tmp_path, env, url="https://203.0.113.7:8443")
    res = CliRunner().invoke(deploy_cmd, ["-c", str(public), "--check"])
    assert "smoke.url: port 8443, but" in res.output
    assert "smoke.url: 203.0.113.7 is not a loopback address" in res.output


def test_deploy_check_names_a_smoke_header_variable_the_env_file_lacks(tmp_path: Path) -> None:
    env = MEDUSA_ENV + "MEDUSA_PUBLISHABLE_KEY=pk\n"
    cfg = shipped_medusa(
        tmp_path,
        env,
        checks=[
            {
                "path": "/store/regions",
                "host": "api.shop.example.com",
                "headers": {"x-publishable-api-key": "${STORE_KEY}"},
            }
        ],
    )
    res = CliRunner().invoke(deploy_cmd, ["-c", str(cfg), "--check"])
    assert res.exit_code == 2
    assert "smoke.checks: ${STORE_KEY} is used in a header or body but is not set in" in res.output
