"""`switchctl deploy --adopt`: the colors deploy.sh started become switchctl's, with no downtime."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from switchctl.client import ControlClient
from tests import docker_fixtures
from tests.docker_fixtures import APP, Stack, Traffic

docker_client = docker_fixtures.docker_client
docker_stack = docker_fixtures.docker_stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def run_unlabelled(stack: Stack, color: str) -> None:
    """A color as deploy.sh left it: named like `medusa-server-blue`, no switchctl labels."""
    for role in ("server", "worker"):
        stack.client.containers.run(
            f"{APP}:good",
            name=f"{stack.app}-{role}-{color}",
            detach=True,
            network_mode="host",
            init=True,
            environment={
                "PORT": str(stack.ports[role][color]),
                "EDGEPROXY_COLOR": color,
                "RELEASE_ID": "deploy.sh",
            },
            labels=stack.labels(),  # only the test's cleanup label
            restart_policy={"Name": "unless-stopped"},
        )


@pytest.fixture
def traffic(docker_stack: Stack) -> Iterator[Traffic]:
    docker_stack.start_db()
    run_unlabelled(docker_stack, "blue")
    docker_stack.create_proxy()
    docker_stack.write_deploy_config()
    t = docker_stack.traffic()
    t.wait_ok()
    yield t
    t.stop()


def test_adopted_containers_count_as_the_active_color_and_the_first_deploy_replaces_them(
    docker_stack: Stack, traffic: Traffic
) -> None:
    stack = docker_stack
    before = stack.deploy("--ref", "good", "--plan")
    assert "serving now: nothing" in before.stdout, before.stdout + before.stderr

    adopted = stack.deploy("--adopt", "--json")
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    found = json.loads(adopted.stdout)
    assert found["running"] == ["blue"]
    assert sorted((a["name"], a["color"], a["role"]) for a in found["adopted"]) == [
        (f"{stack.app}-server-blue", "blue", "server"),
        (f"{stack.app}-worker-blue", "blue", "worker"),
    ]
    planned = stack.deploy("--ref", "good", "--plan")
    assert "serving now: blue; the new release goes to green" in planned.stdout
    assert "send 10% of traffic to green" in planned.stdout  # a canary against blue

    out = stack.deploy("--ref", "good")
    assert out.returncode == 0, out.stdout + out.stderr
    view = ControlClient(stack.socket).app(stack.app)
    assert (view["active"], view["candidate"]) == ("green", None)
    names = {c.name for c in stack.client.containers.list(all=True)}
    assert f"{stack.app}-server-blue" not in names  # stopped and removed after the promote
    assert {c.labels["edgeproxy.color"] for c in stack.containers()} == {"green"}
    assert any(body.startswith("green") for body in traffic.ok)
    assert traffic.failures == []


def test_adopt_without_matching_containers_names_what_it_looked_for(docker_stack: Stack) -> None:
    docker_stack.write_deploy_config()
    out = docker_stack.deploy("--adopt", "--adopt-pattern", "nginx-era-{role}-{color}")
    assert out.returncode == 1
    assert "nginx-era-server-blue" in out.stderr
    assert "--adopt-pattern" in out.stderr
