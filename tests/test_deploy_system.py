"""Real deploys against a real dockerd, from every starting state a server can be in.

Each test builds a throwaway server (see tests/docker_fixtures.py), runs the
real `switchctl deploy` CLI as a subprocess, and keeps a client sending
requests through edgeproxy the whole time: after the first answer, no request
may fail (except the 5xx a bad canary itself answers before its gate trips).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from edgeproxy.switching.state import initial
from edgeproxy.switching.store import StateStore
from switchctl.client import ControlClient
from switchctl.deploy.history import History
from tests import docker_fixtures
from tests.docker_fixtures import ROOT, Stack, Traffic

docker_client = docker_fixtures.docker_client  # the session's dockerd + test images
docker_stack = docker_fixtures.docker_stack

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def stack(docker_stack: Stack) -> Stack:
    docker_stack.start_db()
    return docker_stack


def ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, f"deploy failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run.stdout


def running(stack: Stack) -> set[tuple[str, str]]:
    return {
        (c.labels["edgeproxy.color"], c.labels["edgeproxy.role"])
        for c in stack.containers()
        if c.status == "running"
    }


def assert_serving(stack: Stack, color: str, traffic: Traffic) -> None:
    """Only `color` runs, edgeproxy sends it everything, and the client got no failure."""
    view = ControlClient(stack.socket).app(stack.app)
    assert (view["active"], view["candidate"], view["weight"]) == (color, None, 0)
    assert running(stack) == {(color, "server"), (color, "worker")}
    time.sleep(0.3)
    assert any(body.startswith(color) for body in traffic.ok), traffic.ok
    assert traffic.failures == []


@pytest.fixture
def traffic(stack: Stack) -> Iterator[Traffic]:
    t = stack.traffic()
    yield t
    t.stop()


def test_fresh_server_then_two_more_releases_switch_colors_and_keep_the_database_connection(
    stack: Stack, traffic: Traffic
) -> None:
    db = stack.client.containers.get(stack.db_name)
    db_started = db.attrs["State"]["StartedAt"]
    conn = stack.db_connection()
    stack.create_proxy()
    stack.wait_socket()
    stack.write_deploy_config()
    out = ok(stack.deploy("--ref", "good"))
    assert "goes to blue" in out or "deploying to blue" in out
    traffic.wait_ok()
    assert_serving(stack, "blue", traffic)
    for color in ("green", "blue"):
        ok(stack.deploy("--ref", "good"))
        assert_serving(stack, color, traffic)
        conn.sendall(b"ping\n")
        assert conn.recv(16) == b"ping\n"
    db.reload()
    assert (db.id, db.attrs["State"]["StartedAt"]) == (
        stack.client.containers.get(stack.db_name).id,
        db_started,
    )
    conn.close()
    releases = History(stack.root / "switchctl" / stack.app / "releases.json").load()
    assert [(r.color, r.outcome) for r in releases] == [
        ("blue", "success"),
        ("green", "success"),
        ("blue", "success"),
    ]
    assert traffic.failures == []


def test_blue_running_with_the_proxy_down_deploys_green(stack: Stack, traffic: Traffic) -> None:
    stack.run_color("blue")
    stack.create_proxy(start=False)
    stack.write_deploy_config()
    planned = ok(stack.deploy("--ref", "good", "--plan"))
    assert "found: edgeproxy is down" in planned
    # The step number depends on what else is found (e.g. a base service to start).
    assert re.search(r"^\s*\d+\. start edgeproxy", planned, re.MULTILINE)
    assert (
        stack.client.containers.get(stack.proxy_name).status == "created"
    )  # --plan changed nothing
    out = ok(stack.deploy("--ref", "good"))
    assert "edgeproxy is down" in out
    assert_serving(stack, "green", traffic)


def test_a_proxy_crash_looping_on_a_bad_config_is_repaired_then_green_deployed(
    stack: Stack, traffic: Traffic
) -> None:
    stack.run_color("blue")
    stack.create_proxy(config_text="listen: {http: nowhere}\napps: {}\n")
    stack.write_deploy_config()
    deadline = time.monotonic() + 20
    while stack.client.containers.get(stack.proxy_name).attrs["RestartCount"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    out = ok(stack.deploy("--ref", "good"))
    assert "install the known-good edgeproxy config" in out
    assert_serving(stack, "green", traffic)
    assert list(stack.proxy_config.parent.glob("edgeproxy.yml.bad-*"))


def test_both_colors_running_with_no_canary_replace_the_inactive_one(
    stack: Stack, traffic: Traffic
) -> None:
    stack.run_color("blue")
    stack.run_color("green", release="stale")
    stack.create_proxy()
    stack.write_deploy_config()
    traffic.wait_ok()
    out = ok(stack.deploy("--ref", "good"))
    assert "both colors run" in out
    assert_serving(stack, "green", traffic)
    assert not any("stale" in body for body in list(traffic.ok)[-1:])


def test_state_file_says_green_but_blue_runs_then_blue_is_served_first_and_green_deployed(
    stack: Stack, traffic: Traffic
) -> None:
    StateStore(stack.state_file).save({stack.app: initial(stack.app, ("blue", "green"), "green")})
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config()
    out = ok(stack.deploy("--ref", "good"))
    assert "says green is active, but blue is what runs" in out
    assert_serving(stack, "green", traffic)


def test_a_stale_lock_from_a_killed_deploy_does_not_block_the_next_one(
    stack: Stack, traffic: Traffic
) -> None:
    lock = stack.root / "switchctl" / stack.app / "deploy.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from pathlib import Path; from switchctl.deploy.lock import DeployLock;"
            "DeployLock(Path(sys.argv[1]), 'switchctl deploy --ref old').acquire();"
            "print('held', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config()
    held = stack.deploy("--ref", "good")
    assert held.returncode == 3
    assert f"pid {holder.pid}" in held.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    out = ok(stack.deploy("--ref", "good"))
    assert f"a previous deploy did not finish: pid {holder.pid}" in out
    assert_serving(stack, "green", traffic)


def test_a_target_half_started_by_a_failed_deploy_is_replaced(
    stack: Stack, traffic: Traffic
) -> None:
    stack.run_color("blue")
    stack.run_color("green", flavour="sick", release="half")
    stack.client.containers.get(f"{stack.app}-worker-green").stop(timeout=1)
    stack.create_proxy()
    stack.write_deploy_config()
    traffic.wait_ok()
    out = ok(stack.deploy("--ref", "good"))
    assert "leftover containers" in out or "both colors run" in out
    assert_serving(stack, "green", traffic)
    assert all(c.labels["edgeproxy.release"] != "half" for c in stack.containers())


def test_a_stopped_base_service_is_started_without_being_recreated_and_hooks_run(
    stack: Stack, traffic: Traffic
) -> None:
    db = stack.client.containers.get(stack.db_name)
    db.stop(timeout=1)
    stack.run_color("blue")
    stack.create_proxy()
    marker = stack.root / "post-deploy.txt"
    stack.write_deploy_config(
        hooks={
            "pre_deploy": {"command": 'test -n "$JWT_SECRET" && echo migrated'},
            "post_deploy": {
                "command": f'echo "$RELEASE_ID $COLOR $JWT_SECRET" > {marker}',
                "where": "host",
            },
        }
    )
    out = ok(stack.deploy("--ref", "good"))
    release = History(stack.root / "switchctl" / stack.app / "releases.json").load()[-1]
    assert marker.read_text() == f"{release.id} green s3cr3t\n"
    assert "s3cr3t" not in out
    assert f"start base service {stack.db_name}" in out
    db.reload()
    assert db.status == "running"
    assert db.id == stack.client.containers.get(stack.db_name).id
    assert_serving(stack, "green", traffic)


class WebhookSink:
    """A Slack-compatible receiver: records each JSON POST."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def failed(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 1, f"expected a failed deploy:\n{run.stdout}\n{run.stderr}"
    return run.stderr


def assert_rolled_back_to_blue(stack: Stack, traffic: Traffic) -> None:
    view = ControlClient(stack.socket).app(stack.app)
    assert (view["active"], view["weight"]) == ("blue", 0)
    assert running(stack) == {("blue", "server"), ("blue", "worker")}
    rel = History(stack.root / "switchctl" / stack.app / "releases.json").load()[-1]
    assert rel.outcome == "rolled_back"


def test_a_target_that_never_gets_healthy_is_rolled_back_and_blue_keeps_serving(
    stack: Stack, traffic: Traffic
) -> None:
    stack.run_color("blue")
    stack.create_proxy()
    hook = WebhookSink()
    stack.write_deploy_config(health={"deadline": 3}, notify={"webhook": {"url": hook.url}})
    traffic.wait_ok()
    try:
        err = failed(stack.deploy("--ref", "sick"))
    finally:
        hook.close()
    [note] = hook.received
    assert note["event"] == "rollback"
    assert note["failed_step"] == "wait until green is healthy (backoff with jitter, deadline)"
    assert "wait until green is healthy" in err
    assert "GET http://127.0.0.1:" in err
    assert "blue still serves all traffic" in err
    assert_rolled_back_to_blue(stack, traffic)
    assert traffic.failures == []


def test_a_canary_that_fails_its_error_gate_is_rolled_back(stack: Stack) -> None:
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config(
        smoke={"checks": [{"path": "/cgi-bin/color", "host": "shop.test", "status": 200}]},
        canary={"steps": [50, 100], "dwell": 5, "poll": 0.2, "gates": {"min_requests": 3}},
    )
    t = stack.traffic("/cgi-bin/app")
    try:
        t.wait_ok()
        if "requests" not in ControlClient(stack.socket).app(stack.app)["colors"]["blue"]:
            pytest.skip("this edgeproxy build reports no per-color request stats in the AppView")
        err = failed(stack.deploy("--ref", "errors"))
        assert "send 50% of traffic to green and check the gates failed" in err
        assert "with 5xx" in err
        assert_rolled_back_to_blue(stack, t)
        # The only failures are the bad canary's share, before its gate tripped: its own
        # 500s, or 503s once edgeproxy's passive ejection took green's upstream out.
        assert all(f.startswith(("500 green", "503 ")) for f in t.failures), t.failures
        after = len(t.failures)
        served = t.total_ok
        while t.total_ok < served + 50:
            time.sleep(0.05)
        assert len(t.failures) == after
    finally:
        t.stop()


def test_a_failing_pre_deploy_hook_switches_nothing(stack: Stack, traffic: Traffic) -> None:
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config(
        hooks={
            "pre_deploy": {"command": "echo migrating; echo 'relation users missing' >&2; exit 3"}
        }
    )
    traffic.wait_ok()
    err = failed(stack.deploy("--ref", "good"))
    assert "exited with 3" in err
    assert "relation users missing" in err
    assert_rolled_back_to_blue(stack, traffic)
    assert traffic.failures == []


def test_a_failed_deploy_on_a_fresh_server_says_nothing_was_switched(
    stack: Stack, traffic: Traffic
) -> None:
    # `refuse`: with panic routing (the default) the sick color, which answers / but not its
    # health check, would serve visitors while the deploy waits for it.
    config = yaml.safe_load(stack.proxy_config_text())
    config["apps"][stack.app]["when_all_down"] = "refuse"
    stack.create_proxy(config_text=yaml.safe_dump(config))
    stack.write_deploy_config(health={"deadline": 2})
    err = failed(stack.deploy("--ref", "sick"))
    assert "nothing was switched" in err
    assert running(stack) == set()
    view = ControlClient(stack.socket).app(stack.app)
    assert (view["candidate"], view["weight"]) == (None, 0)
    assert traffic.total_ok == 0  # no color was ever healthy: every request failed, as it should
    assert traffic.failures_before_first_ok > 0


def deploy_held_in_canary(stack: Stack, traffic: Traffic) -> subprocess.Popen[str]:
    """Blue serving; a deploy of green started (--json) and now in its 30 s canary dwell."""
    stack.run_color("blue")
    stack.create_proxy()
    stack.write_deploy_config(canary={"steps": [25, 100], "dwell": 30, "poll": 0.2})
    traffic.wait_ok()
    p = stack.deploy_popen("--ref", "good", "--json")
    assert p.stdout is not None
    for line in p.stdout:
        event: dict[str, Any] = json.loads(line)
        if event["event"] == "step_start" and event["kind"] == "canary":
            break
    return p


def test_a_deploy_killed_during_the_canary_is_recovered_by_the_next_one(
    stack: Stack, traffic: Traffic
) -> None:
    p = deploy_held_in_canary(stack, traffic)
    assert p.stdout is not None
    time.sleep(1)
    view = ControlClient(stack.socket).app(stack.app)
    assert (view["candidate"], view["weight"]) == ("green", 25)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    stack.write_deploy_config()
    out = ok(stack.deploy("--ref", "good"))
    assert "a previous deploy did not finish" in out
    assert "green gets 25% of traffic as a canary" in out
    assert_serving(stack, "green", traffic)


def test_doctor_reports_inconsistencies_and_releases_rollback_redeploys_a_retained_image(
    stack: Stack, traffic: Traffic
) -> None:
    stack.create_proxy()
    stack.write_deploy_config()
    ok(stack.deploy("--ref", "good"))
    first = History(stack.root / "switchctl" / stack.app / "releases.json").load()[0]
    stack.run_color("green", release="stray")
    doc = stack.switchctl("doctor")
    assert doc.returncode == 1, doc.stdout + doc.stderr
    assert "both colors run" in doc.stdout
    ok(stack.switchctl("releases", "rollback", first.id))
    assert_serving(stack, "green", traffic)
    last = History(stack.root / "switchctl" / stack.app / "releases.json").load()[-1]
    assert last.rollback_of == first.id
    clean = stack.switchctl("doctor")
    assert clean.returncode == 0, clean.stdout
    assert "consistent: green serves" in clean.stdout


def test_a_deploy_terminated_during_the_canary_rolls_back_before_it_exits(
    stack: Stack, traffic: Traffic
) -> None:
    p = deploy_held_in_canary(stack, traffic)
    assert p.stdout is not None
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)  # what CI's cancel or a cut ssh session sends
    rest = [json.loads(line) for line in p.stdout if line.startswith("{")]
    assert p.wait(30) == 1
    p.stdout.close()
    failed_event = next(e for e in rest if e["event"] == "deploy_failed")
    assert failed_event["why"] == "switchctl received SIGTERM"
    assert "blue still serves all traffic" in failed_event["todo"]
    assert_rolled_back_to_blue(stack, traffic)
    assert traffic.failures == []
