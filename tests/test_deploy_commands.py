"""The click commands that need no docker: --check, and errors before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from switchctl.deploy.commands import deploy_cmd, releases_group
from switchctl.deploy.history import History, Release

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
