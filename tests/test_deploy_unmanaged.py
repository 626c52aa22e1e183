"""`edgeproxy.unmanaged: true`: edgeproxy started by hand or another supervisor; switchctl only
uses its control socket, and says what it cannot repair."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from switchctl.deploy.config import parse_deploy_config
from switchctl.deploy.plan import ProxyObs, plan
from switchctl.deploy.proxyctl import SocketOnlyRunner, runner_for
from tests.test_deploy_plan import INTENT, UP_BLUE, kinds, obs, running

UNMANAGED_UP = replace(UP_BLUE, managed=False)


def test_an_unmanaged_edgeproxy_that_answers_is_released_against_through_its_socket_only() -> None:
    p = plan(obs(running("blue"), proxy=UNMANAGED_UP), INTENT)
    assert not p.blockers
    assert "start_proxy" not in kinds(p)
    assert "restart_proxy" not in kinds(p)
    assert kinds(p)[:2] == ["check_proxy_config", "wait_proxy"]
    assert "promote" in kinds(p)


@pytest.mark.parametrize("status", ["down", "crash-looping"])
def test_an_unmanaged_edgeproxy_that_does_not_answer_blocks_saying_switchctl_cannot_start_it(
    status: str,
) -> None:
    px = ProxyObs(status=status, detail="nothing answers on /run/e.sock", managed=False)  # type: ignore[arg-type]
    p = plan(obs(running("blue"), proxy=px), INTENT)
    assert [b.problem for b in p.blockers] == [
        "edgeproxy does not answer on its control socket (nothing answers on /run/e.sock) "
        "and switchctl cannot start it (edgeproxy.unmanaged: true)"
    ]
    assert "start edgeproxy the way you run it" in p.blockers[0].action
    assert "start_proxy" not in kinds(p)


def test_an_unmanaged_edgeproxy_with_an_invalid_config_file_is_left_running_not_restarted() -> None:
    px = replace(UNMANAGED_UP, config_problems=("listen.http: bad",), source_ok=True)
    p = plan(obs(running("blue"), proxy=px), INTENT)
    assert "restart_proxy" not in kinds(p)
    assert "install_proxy_config" in kinds(p)
    assert any("cannot restart it" in f.action for f in p.findings)


def test_the_socket_only_runner_sees_a_listening_socket_and_refuses_to_start_or_restart(
    tmp_path: Path,
) -> None:
    cfg = parse_deploy_config(
        "app: shop\nimage: shop:1\nenv_file: app.env\n"
        "roles: {server: {traffic: true, ports: {blue: 9000, green: 9002}}}\n"
        f"edgeproxy: {{unmanaged: true, socket: {tmp_path / 'c.sock'}}}\n"
    )
    runner = runner_for(cfg.edgeproxy, None)  # type: ignore[arg-type]  # no docker needed
    assert isinstance(runner, SocketOnlyRunner)
    assert runner.state().status == "down"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "c.sock"))
        server.listen(1)
        assert runner.state().status is None
    with pytest.raises(RuntimeError, match=r"edgeproxy\.unmanaged: true"):
        runner.start()
    with pytest.raises(RuntimeError, match="start it the way you run it"):
        runner.restart()
