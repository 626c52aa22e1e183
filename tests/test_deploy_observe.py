"""observe() against a real dockerd: labelled containers, base services, edgeproxy's process."""

from __future__ import annotations

import time

import pytest

from switchctl.client import ControlClient
from switchctl.deploy.config import load_deploy_config
from switchctl.deploy.observe import observe
from switchctl.deploy.plan import Intent, plan
from switchctl.deploy.proxyctl import ContainerRunner, check_config, install_config
from tests import docker_fixtures
from tests.docker_fixtures import Stack

docker_client = docker_fixtures.docker_client  # the session's dockerd + test images
docker_stack = docker_fixtures.docker_stack

pytestmark = pytest.mark.docker


@pytest.fixture
def stack(docker_stack: Stack) -> Stack:
    return docker_stack


def test_observe_sees_labelled_colors_a_stopped_base_service_and_a_proxy_that_is_down(
    stack: Stack,
) -> None:
    stack.run_color("blue", release="r1")
    db = stack.start_db()
    db.stop(timeout=1)
    stack.create_proxy(start=False)
    cfg = load_deploy_config(stack.write_deploy_config())
    runner = ContainerRunner(stack.client, stack.proxy_name)
    obs = observe(cfg, stack.client, runner, ControlClient(stack.socket))
    assert {(c.name, c.role, c.color, c.release, c.state) for c in obs.containers} == {
        (f"{stack.app}-server-blue", "server", "blue", "r1", "running"),
        (f"{stack.app}-worker-blue", "worker", "blue", "r1", "running"),
    }
    assert [(b.name, b.state) for b in obs.base] == [(stack.db_name, "exited")]
    assert obs.proxy.status == "down"
    p = plan(obs, Intent())
    assert [s.kind for s in p.steps[:4]] == [
        "start_base",
        "check_proxy_config",
        "start_proxy",
        "wait_proxy",
    ]
    assert (p.live, p.target) == ("blue", "green")


def test_a_proxy_left_with_a_bad_config_is_seen_crash_looping_and_the_good_config_fixes_the_check(
    stack: Stack,
) -> None:
    stack.create_proxy(config_text="listen: {http: not-an-address}\n")
    cfg = load_deploy_config(stack.write_deploy_config())
    runner = ContainerRunner(stack.client, stack.proxy_name)
    deadline = time.monotonic() + 20
    while runner.state().status != "crash-looping":
        assert time.monotonic() < deadline, runner.state()
        time.sleep(0.2)
    obs = observe(cfg, stack.client, runner, ControlClient(stack.socket))
    assert obs.proxy.status == "crash-looping"
    assert any("listen.http" in p for p in obs.proxy.config_problems)
    assert obs.proxy.source_ok
    assert "last log lines" in obs.proxy.detail
    kept = install_config(stack.good_config, stack.proxy_config)
    assert check_config(stack.proxy_config) == []
    assert "not-an-address" in kept.read_text()
