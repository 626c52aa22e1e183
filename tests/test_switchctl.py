"""switchctl against a real control socket: output, validation, exit codes 0/1/2/3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner, Result

from switchctl.cli import cli, format_status
from switchctl.client import AppView, ControlClient
from tests.conftest import ControlProxy

StartProxy = Callable[..., ControlProxy]


def switchctl(proxy: ControlProxy | Path, *args: str) -> Result:
    sock = proxy.socket if isinstance(proxy, ControlProxy) else proxy
    return CliRunner().invoke(cli, ["--socket", str(sock), *args], catch_exceptions=False)


def run_switchctl(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point in a subprocess (`python -m switchctl`)."""
    env = {**os.environ, "EDGEPROXY_SOCKET": str(sock)}
    return subprocess.run(
        [sys.executable, "-m", "switchctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_exit_codes_are_0_ok_1_refused_2_usage_and_3_unreachable(
    control_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    ok = run_switchctl(proxy.socket, "set", "green", "--weight", "10")
    assert (ok.returncode, ok.stdout.strip()) == (
        0,
        "shop: blue 90% · green 10% (generation 1)",
    )
    refused = run_switchctl(proxy.socket, "rollback")
    assert refused.returncode == 1
    assert "cannot roll back shop: no previous color" in refused.stderr
    usage = run_switchctl(proxy.socket, "set", "green", "--weight", "101")
    assert usage.returncode == 2
    assert "101 is not in the range 0<=x<=100" in usage.stderr
    missing = tmp_path / "nothing.sock"
    unreachable = run_switchctl(missing, "status")
    assert unreachable.returncode == 3
    assert f"ls -l {missing}" in unreachable.stderr
    assert "systemctl status edgeproxy" in unreachable.stderr
    assert ControlClient(proxy.socket).app("shop")["generation"] == 1


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(cli, ["drain", "--help"])
    assert result.exit_code == 0
    assert "3 proxy unreachable" in result.output


def test_bad_arguments_are_rejected_before_anything_is_sent(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    for args in (
        ["set", "Green"],
        ["drain", "green", "--timeout", "0"],
        ["set", "green", "--weight", "-1"],
    ):
        assert switchctl(proxy, *args).exit_code == 2
    assert ControlClient(proxy.socket).app("shop")["generation"] == 0


def test_app_is_required_when_the_proxy_has_several_and_the_error_lists_them(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"), blog=("a", "b"))
    result = switchctl(proxy, "pause")
    assert result.exit_code == 2
    assert "--app is required: the proxy has 2 apps (blog, shop)" in result.output
    assert switchctl(proxy, "pause", "--app", "blog").exit_code == 0
    assert switchctl(proxy, "--app", "shop", "pause").exit_code == 0
    apps = ControlClient(proxy.socket).apps()
    assert (apps["blog"]["paused"], apps["shop"]["paused"]) == (True, True)


def test_a_release_by_hand_set_promote_drain_and_rollback(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    assert switchctl(proxy, "set", "green", "--weight", "25").output == (
        "shop: blue 75% · green 25% (generation 1)\n"
    )
    assert switchctl(proxy, "promote").output == "shop: green 100% (generation 2)\n"
    drained = switchctl(proxy, "drain", "blue", "--timeout", "30", "--wait", "--poll", "0.01")
    assert drained.exit_code == 0
    assert drained.output.endswith("shop/blue drained\n")
    rolled = switchctl(proxy, "rollback", "--json")
    assert json.loads(rolled.output)["active"] == "blue"


def test_drain_wait_shows_in_flight_requests_until_they_are_gone(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    ControlClient(proxy.socket).set("shop", "green", 100)
    proxy.inflight["blue"] = (4, 2)
    polls = 0

    def sleep_then_finish(seconds: float) -> None:  # the requests end after a few polls
        nonlocal polls
        polls += 1
        if polls == 3:
            proxy.inflight["blue"] = (0, 0)
        time.sleep(seconds)

    with pytest.MonkeyPatch.context() as mp:
        clock = SimpleNamespace(sleep=sleep_then_finish, time=time.time, monotonic=time.monotonic)
        mp.setattr("switchctl.cli.time", clock)
        result = switchctl(proxy, "drain", "blue", "--wait", "--poll", "0.05")
    assert result.exit_code == 0
    assert "draining shop/blue: 4 in flight, 2 tunnels" in result.output
    assert result.output.endswith("shop/blue drained\n")


def test_an_unhealthy_target_is_refused_with_exit_1_unless_forced(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.unhealthy["green"] = ["GET /health: connection refused"]
    refused = switchctl(proxy, "set", "green")
    assert refused.exit_code == 1
    assert "green is unhealthy (GET /health: connection refused)" in refused.output
    assert switchctl(proxy, "set", "green", "--force").exit_code == 0


def test_refusals_in_json_mode_print_the_error_as_json(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    result = CliRunner().invoke(cli, ["--socket", str(proxy.socket), "promote", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "error": "cannot promote shop: no candidate color (start one with "
        "`switchctl set COLOR --weight N`)",
        "status": 409,
    }


def test_status_shows_a_table_per_app_and_color(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.inflight["blue"] = (3, 1)
    proxy.unhealthy["green"] = ["GET /health: 503"]
    switchctl(proxy, "set", "green", "--weight", "0", "--force")
    switchctl(proxy, "pause")
    out = switchctl(proxy, "status").output.splitlines()
    assert out[0].split() == ["APP", "ACTIVE", "CANDIDATE", "DRAINING", "PAUSED", "GEN"]
    assert out[1].split() == ["shop", "blue", "green", "0%", "-", "yes", "2"]
    blue = next(line for line in out if line.strip().startswith("blue"))
    assert blue.split() == ["blue", "100%", "3", "1", "healthy", "-", "-"]
    green = next(line for line in out if line.strip().startswith("green"))
    assert "UNHEALTHY (GET /health: 503)" in green
    as_json = json.loads(switchctl(proxy, "status", "--json").output)
    assert as_json["shop"]["paused"] is True


def test_status_shows_error_rate_and_p99_when_the_proxy_reports_them() -> None:
    view: AppView = {
        "app": "shop",
        "active": "blue",
        "candidate": "green",
        "weight": 10,
        "weights": {"blue": 90, "green": 10},
        "previous": None,
        "draining": {},
        "paused": False,
        "generation": 3,
        "changed_at": 0.0,
        "guard": {"reason": "error rate 5.00% > 1.00%", "at": 0.0},
        "colors": {"green": {"in_flight": 1, "healthy": True, "error_rate": 0.05, "p99_ms": 12.25}},
    }
    text = format_status({"shop": view})
    assert "shop: guard backed out the canary: error rate 5.00% > 1.00%" in text
    green = next(line for line in text.splitlines() if line.strip().startswith("green"))
    assert green.split() == ["green", "10%", "1", "-", "healthy", "5.00%", "12.2ms"]


def test_watch_refreshes_the_given_number_of_times(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    result = switchctl(proxy, "watch", "--interval", "0.05", "--count", "3", "--json")
    frames = [json.loads(line) for line in result.output.splitlines()]
    assert len(frames) == 3
    assert frames[0]["view"]["weights"] == {"blue": 100, "green": 0}
    text = switchctl(proxy, "watch", "--interval", "0.05", "--count", "2").output
    assert text.count("shop: blue 100% (generation 0)") == 2


def test_health_and_certs_reload(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.unhealthy["green"] = ["connect: refused"]
    lines = switchctl(proxy, "health").output.splitlines()
    assert lines[2].split() == ["shop", "green", "UNHEALTHY", "connect:", "refused"]
    assert switchctl(proxy, "certs", "reload").output == "reloaded 0 certificate(s)\n"


def test_the_cli_group_accepts_commands_registered_by_other_modules() -> None:
    @click.command("hello-plugin")
    def hello() -> None:
        click.echo("hi")

    cli.add_command(hello)
    try:
        assert CliRunner().invoke(cli, ["hello-plugin"]).output == "hi\n"
    finally:
        cli.commands.pop("hello-plugin")


def test_status_and_metrics_show_what_of_the_saved_state_was_set_aside_at_boot(
    control_proxy: StartProxy, tmp_path: Path
) -> None:
    state = tmp_path / "lib" / "state.json"
    state.parent.mkdir()
    shop = {"colors": ["blue", "green"], "active": "green", "generation": 3}
    state.write_text(
        json.dumps({"version": 1, "apps": {"shop": {**shop, "candidate": "purple", "weight": 10}}})
    )
    proxy = control_proxy(shop=("blue", "green"), blog=("a", "b"))
    out = switchctl(proxy, "status").output
    assert "shop:\n  SAVED STATE SET ASIDE AT BOOT; the file as it was: " in out
    assert "state.json.rejected-" in out
    assert (
        "    - candidate 'purple' (weight 10) set aside: it is not one of its colors "
        "['blue', 'green'] other than the active one\n"
    ) in out
    assert "blog:\n  COLOR" in out  # nothing set aside for blog
    as_json = json.loads(switchctl(proxy, "status", "--json").output)
    assert (as_json["shop"]["active"], as_json["shop"]["generation"]) == ("green", 3)
    assert len(as_json["shop"]["set_aside"]) == 1
    metrics = ControlClient(proxy.socket).metrics()
    assert 'edgeproxy_state_records_rejected{app="shop"} 1\n' in metrics
    assert 'edgeproxy_state_records_rejected{app="blog"} 0\n' in metrics
