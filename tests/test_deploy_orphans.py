"""What a SIGKILLed deploy leaves behind, against a real dockerd: its one-off (migration)
container still running and its history entry stuck at `running`. `doctor` names both;
the next deploy stops the container before its own migration and closes the entry."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from switchctl.deploy.history import History
from tests import docker_fixtures
from tests.docker_fixtures import Stack

docker_client = docker_fixtures.docker_client  # the session's dockerd + test images
docker_stack = docker_fixtures.docker_stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def hook_containers(stack: Stack) -> list[Any]:
    return list(
        stack.client.containers.list(
            all=True, filters={"label": [f"edgeproxy.app={stack.app}", "edgeproxy.role=hook"]}
        )
    )


def kill_during_migration(stack: Stack) -> tuple[str, str]:
    """Start a deploy whose migration hangs, SIGKILL it there; (its release id, hook name)."""
    p = stack.deploy_popen("--ref", "good", "--json")
    assert p.stdout is not None
    for line in p.stdout:
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "deploy_start":
            release = str(event["release"])
        if event["event"] == "step_start" and event["kind"] == "pre_deploy":
            break
    deadline = time.monotonic() + 20
    while not [c for c in hook_containers(stack) if c.status == "running"]:
        assert time.monotonic() < deadline, "the migration container never started"
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    [hook] = hook_containers(stack)
    return release, hook.name


def test_a_deploy_killed_during_its_migration_leaves_an_orphan_that_doctor_names_and_the_next_deploy_removes(
    docker_stack: Stack,
) -> None:
    stack = docker_stack
    stack.start_db()
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config(hooks={"pre_deploy": {"command": "echo migrating; sleep 300"}})
    killed, hook = kill_during_migration(stack)
    history = History(stack.root / "switchctl" / stack.app / "releases.json")
    assert [(r.id, r.outcome) for r in history.load()] == [(killed, "running")]

    doc = stack.switchctl("doctor")
    assert doc.returncode == 1, doc.stdout + doc.stderr
    assert f"one-off container {hook} (running) of deploy {killed} is left" in doc.stdout
    assert f"release {killed} is recorded as running, but no deploy holds the lock" in doc.stdout
    assert (
        f"  {hook}: running (one-off container of deploy {killed}, left by a deploy" in doc.stdout
    )
    assert [c.status for c in hook_containers(stack)] == ["running"]  # doctor changes nothing

    stack.write_deploy_config(hooks={"pre_deploy": {"command": "echo migrated"}})
    run = stack.deploy("--ref", "good")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"stop and remove one-off containers a killed deploy left ({hook})" in run.stdout
    assert hook_containers(stack) == []
    first, second = history.load()
    assert (first.id, first.outcome) == (killed, "interrupted")
    assert first.message is not None and f"closed by release {second.id}" in first.message
    assert second.outcome == "success"
    clean = stack.switchctl("doctor")
    assert clean.returncode == 0, clean.stdout


def test_doctor_does_not_call_a_running_deploys_migration_an_orphan(docker_stack: Stack) -> None:
    stack = docker_stack
    stack.start_db()
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config(hooks={"pre_deploy": {"command": "sleep 300"}})
    p = stack.deploy_popen("--ref", "good", "--json")
    try:
        deadline = time.monotonic() + 30
        while not [c for c in hook_containers(stack) if c.status == "running"]:
            assert time.monotonic() < deadline, "the migration container never started"
            time.sleep(0.1)
        doc = stack.switchctl("doctor")
        [hook] = hook_containers(stack)
        assert f"  {hook.name}: running (one-off container of deploy " in doc.stdout
        assert "its deploy runs)" in doc.stdout
        assert "is left from a deploy that did not finish" not in doc.stdout, doc.stdout
        assert "recorded as running" not in doc.stdout, doc.stdout
        assert "a deploy is running now" in doc.stdout
    finally:
        p.send_signal(signal.SIGTERM)  # rolls back and removes its hook container
        p.wait(60)
        assert p.stdout is not None
        p.stdout.close()
    assert hook_containers(stack) == []
