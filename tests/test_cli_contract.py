"""What the three CLIs promise: `-h` and exit codes on every command, `--version`, exit codes
honoured by status/health, and hints that name how edgeproxy runs here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from certs.cli import cli as certs_cli
from edgeproxy import __version__
from edgeproxy.cli import cli as edgeproxy_cli
from switchctl.cli import _load_plugins
from switchctl.cli import cli as switchctl_cli
from tests.conftest import ControlProxy

StartProxy = Callable[..., ControlProxy]
_load_plugins()  # deploy, doctor, releases are part of `switchctl`


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from command_paths(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


CLIS = {"edgeproxy": edgeproxy_cli, "switchctl": switchctl_cli, "certs": certs_cli}
ALL = [
    pytest.param(cli, path, id=" ".join((name, *path)))
    for name, cli in CLIS.items()
    for path in command_paths(cli)
]


@pytest.mark.parametrize(("cli", "path"), ALL)
def test_every_command_of_the_three_clis_takes_h_and_lists_its_exit_codes(
    cli: click.Group, path: tuple[str, ...]
) -> None:
    res = CliRunner().invoke(cli, [*path, "-h"])
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    codes = " ".join(res.output.split("Exit codes:")[-1].split())
    assert "Exit codes:" in res.output
    assert "0 " in codes
    assert "2 " in codes


@pytest.mark.parametrize("name", list(CLIS))
def test_each_cli_prints_its_version(name: str) -> None:
    res = CliRunner().invoke(CLIS[name], ["--version"])
    assert res.exit_code == 0
    assert res.output == f"{name}, version {__version__}\n"


def test_status_and_health_exit_4_when_every_color_of_an_app_is_unhealthy(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    sock = str(proxy.socket)
    proxy.unhealthy["green"] = ["GET /health: 503"]
    assert CliRunner().invoke(switchctl_cli, ["--socket", sock, "status"]).exit_code == 0
    assert CliRunner().invoke(switchctl_cli, ["--socket", sock, "health"]).exit_code == 0
    proxy.unhealthy["blue"] = ["GET /health: connection refused"]
    for args in (["status"], ["health"], ["health", "--json"], ["status", "--json"]):
        res = CliRunner().invoke(switchctl_cli, ["--socket", sock, *args])
        assert res.exit_code == 4, args
        assert "nothing can serve shop: every color is unhealthy" in res.stderr


def deploy_config(tmp_path: Path, how: str, socket: Path) -> Path:
    path = tmp_path / "deploy.yml"
    path.write_text(
        "app: shop\nimage: shop:{ref}\nenv_file: app.env\n"
        "roles: {server: {traffic: true, ports: {blue: 9000, green: 9002}}}\n"
        f"edgeproxy: {{{how}, socket: {socket}}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("how", "expected", "not_expected"),
    [
        ("container: edge1", "`docker logs edge1`", "systemctl"),
        ("systemd_unit: edge1.service", "`systemctl status edge1.service`", "docker"),
        ("unmanaged: true", "switchctl does not start it here", "systemctl"),
    ],
)
def test_the_unreachable_socket_hint_follows_how_the_deploy_config_runs_edgeproxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, expected: str, not_expected: str
) -> None:
    sock = tmp_path / "none.sock"
    monkeypatch.setenv("SWITCHCTL_DEPLOY_CONFIG", str(deploy_config(tmp_path, how, sock)))
    res = CliRunner().invoke(switchctl_cli, ["--socket", str(sock), "status"])
    assert res.exit_code == 3
    assert expected in res.stderr
    assert not_expected not in res.stderr
    assert f"ls -l {sock}" in res.stderr


def test_without_a_deploy_config_the_unreachable_hint_names_docker_and_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHCTL_DEPLOY_CONFIG", str(tmp_path / "missing.yml"))
    res = CliRunner().invoke(switchctl_cli, ["--socket", str(tmp_path / "x.sock"), "status"])
    assert res.exit_code == 3
    assert "`docker logs edgeproxy`" in res.stderr
    assert "`systemctl status edgeproxy`" in res.stderr
