"""Long waits say what they wait for, how long so far and the deadline, every interval."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from switchctl.client import ControlClient
from switchctl.deploy.config import EnvFile, Hook, parse_deploy_config
from switchctl.deploy.containers import AppContainers, ReleaseSpec
from switchctl.deploy.execute import Executor
from switchctl.deploy.health import Probe, wait_until
from switchctl.deploy.plan import Step
from switchctl.deploy.progress import Heartbeat, Progress
from tests.conftest import ControlProxy

StartProxy = Callable[..., ControlProxy]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_health_wait_prints_a_heartbeat_every_interval_with_elapsed_and_deadline() -> None:
    t, out = FakeTime(), io.StringIO()
    progress = Progress(out=out, heartbeat=10)
    progress.step(6, "wait until green is healthy")
    beat = Heartbeat(progress, "shop-server-green to be healthy", 35, 10, clock=t.clock)
    try:
        wait_until(
            lambda: Probe(False, "GET /health -> 503"),
            "shop-server-green healthy",
            35,
            first=1,
            maximum=1,
            clock=t.clock,
            sleep=t.sleep,
            rng=lambda: 1.0,
            beat=beat,
        )
    except Exception:
        pass
    lines = out.getvalue().splitlines()
    assert lines[0] == "[ 6/0] wait until green is healthy ... "
    assert lines[1:] == [
        f"      waiting for shop-server-green to be healthy: {s}s elapsed, deadline 35s "
        "(GET /health -> 503)"
        for s in (10, 20, 30)
    ]


def test_with_json_the_heartbeat_is_a_waiting_event_on_stdout() -> None:
    t, out = FakeTime(), io.StringIO()
    beat = Heartbeat(
        Progress(json_lines=True, out=out), "edgeproxy's control socket", 30, 10, t.clock
    )
    for _ in range(25):
        t.sleep(1)
        beat("connection refused")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["what"], e["elapsed"], e["deadline"], e["detail"]) for e in events] == [
        ("waiting", "edgeproxy's control socket", 10.0, 30, "connection refused"),
        ("waiting", "edgeproxy's control socket", 20.0, 30, "connection refused"),
    ]


CFG = """
app: shop
image: shop:1
env_file: app.env
roles: {server: {traffic: true, ports: {blue: 9000, green: 9002}}}
edgeproxy: {unmanaged: true}
canary: {steps: [10, 100], dwell: 0.6, poll: 0.05}
"""


def test_the_canary_dwell_reports_heartbeats(control_proxy: StartProxy, tmp_path: Path) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    cfg = parse_deploy_config(CFG + f"state_dir: {tmp_path}\n")
    out = io.StringIO()
    progress = Progress(json_lines=True, out=out, heartbeat=0.1)
    release = ReleaseSpec("r1", "shop:1", None)
    ex = Executor(
        cfg,
        EnvFile(tmp_path, {}),
        None,
        ControlClient(proxy.socket),
        None,
        release,
        progress,  # type: ignore[arg-type]
    )
    ex._canary(Step("canary", color="green", arg=10))
    waits = [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == "waiting"]
    assert len(waits) >= 3
    assert {e["what"] for e in waits} == {"the 10% canary of green to dwell"}
    assert all(e["deadline"] is None for e in waits)  # on_thin_traffic: hold has no deadline
    assert waits[0]["detail"].startswith("gates pass so far: 0 requests")


def test_a_host_hook_reports_heartbeats_while_it_runs(tmp_path: Path) -> None:
    cfg = parse_deploy_config(CFG + f"state_dir: {tmp_path}\n")
    out = io.StringIO()
    progress = Progress(out=out, heartbeat=0.2)
    apps = AppContainers(cfg, EnvFile(tmp_path, {}), None, ReleaseSpec("r1", "shop:1", None))  # type: ignore[arg-type]
    hook = Hook(command=["sh", "-c", "sleep 1; echo migrated"], where="host", timeout=10)
    beat = progress.heartbeat("the pre-deploy hook to finish", hook.timeout)
    rc, tail = apps.run_hook(hook, "pre-deploy", "green", beat)
    assert (rc, tail) == (0, "migrated")
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert all(
        line.startswith("      waiting for the pre-deploy hook to finish: ")
        and "deadline 10s (pid " in line
        for line in lines
    )
