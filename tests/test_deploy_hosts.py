"""Colors on several app hosts: two dockerd daemons on this machine stand in for two hosts.

The deploy config lists both (`hosts`, each reached through its own unix
socket; the second shifts every port by `port_offset`), edgeproxy runs as a
process on this machine with each color's pool listing both hosts' upstreams,
and a client sends requests through it the whole time. The real `switchctl
deploy` CLI runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchctl.client import ControlClient
from switchctl.deploy.history import History
from tests.docker_fixtures import ROOT, Traffic
from tests.hosts_fixtures import APP, Dockerd, free_ports_with_offset, two_dockerds
from tests.process_fixtures import EdgeProcess, edge_process

__all__ = ["edge_process", "two_dockerds"]  # fixtures

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@dataclass
class TwoHosts:
    app1: Dockerd
    app2: Dockerd
    root: Path
    ports: dict[str, dict[str, int]]
    offset: int
    proxy: EdgeProcess
    deploy_config: Path
    app: str = "shop"

    @property
    def daemons(self) -> tuple[Dockerd, Dockerd]:
        return self.app1, self.app2

    def port(self, daemon: Dockerd, role: str, color: str) -> int:
        return self.ports[role][color] + (self.offset if daemon is self.app2 else 0)

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.switchctl("deploy", *args)

    def switchctl(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "switchctl", command, "-c", str(self.deploy_config), *args],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=ROOT,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def running(self, daemon: Dockerd) -> set[tuple[str, str]]:
        """(color, role) of the app containers running on one host."""
        return {
            (c.labels["edgeproxy.color"], c.labels["edgeproxy.role"])
            for c in daemon.client().containers.list(filters={"label": f"edgeproxy.app={self.app}"})
        }

    def view(self) -> Any:
        return ControlClient(self.proxy.control_socket).app(self.app)

    def traffic(self, path: str = "/") -> Traffic:
        return Traffic(f"http://127.0.0.1:{self.proxy.http_port}", "shop.test", path).start()

    def releases(self) -> list[tuple[str, str]]:
        rels = History(self.root / "switchctl" / self.app / "releases.json").load()
        return [(r.color, r.outcome) for r in rels]


def proxy_config(root: Path, app: str, ports: dict[str, dict[str, int]], offset: int) -> Any:
    colors = {
        c: {
            "upstreams": [
                f"http://127.0.0.1:{ports['server'][c]}",
                f"http://127.0.0.1:{ports['server'][c] + offset}",
            ]
        }
        for c in ("blue", "green")
    }
    return {
        "control": {"socket": str(root / "control.sock")},
        "state_file": str(root / "state.json"),
        "shutdown_grace": 1,
        "apps": {
            app: {
                "colors": colors,
                "health": {
                    "path": "/healthz",
                    "interval": 0.2,
                    "timeout": 2,
                    "healthy_threshold": 1,
                    "unhealthy_threshold": 3,
                },
                "drain_timeout": 5,
            }
        },
        "sites": [
            {"hosts": ["shop.test"], "https_redirect": False, "routes": [{"path": "/", "app": app}]}
        ],
    }


def deploy_config(h: TwoHosts, **overrides: Any) -> dict[str, Any]:
    env_file = h.root / "app.env"
    env_file.write_text("JWT_SECRET=s3cr3t\n")
    env_file.chmod(0o600)
    cfg: dict[str, Any] = {
        "app": h.app,
        "image": f"{APP}:{{ref}}",
        "pull": "missing",
        "env_file": str(env_file),
        "hosts": [
            {"name": "app1", "docker": h.app1.url},
            {"name": "app2", "docker": h.app2.url, "port_offset": h.offset},
        ],
        "roles": {
            "server": {"traffic": True, "ports": h.ports["server"], "health_path": "/healthz"},
            "worker": {"ports": h.ports["worker"], "health_path": "/healthz"},
        },
        "health": {"deadline": 6, "first_delay": 0.1, "max_delay": 0.5},
        "smoke": {
            "url": f"http://127.0.0.1:{h.proxy.http_port}",
            "checks": [{"path": "/cgi-bin/color", "host": "shop.test", "status": 200}],
        },
        "canary": {
            "steps": [10, 50, 100],
            "dwell": 0.6,
            "poll": 0.2,
            "gates": {"min_requests": 3, "p99_min_ms": 2000},
        },
        "drain_timeout": 3,
        "stop_timeout": 2,
        "edgeproxy": {
            "unmanaged": True,
            "socket": str(h.proxy.control_socket),
            "config": str(h.root / "edgeproxy0.yml"),
        },
        "state_dir": str(h.root / "switchctl"),
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def hosts(
    two_dockerds: tuple[Dockerd, Dockerd],
    edge_process: Callable[..., EdgeProcess],
    tmp_path: Path,
) -> Iterator[TwoHosts]:
    app1, app2 = two_dockerds
    (s_blue, s_green, w_blue, w_green), offset = free_ports_with_offset(4)
    ports = {
        "server": {"blue": s_blue, "green": s_green},
        "worker": {"blue": w_blue, "green": w_green},
    }
    proxy = edge_process(proxy_config(tmp_path, "shop", ports, offset))
    h = TwoHosts(app1, app2, tmp_path, ports, offset, proxy, tmp_path / "deploy.yml")
    h.deploy_config.write_text(yaml.safe_dump(deploy_config(h)))
    for d in h.daemons:
        d.tag("good", "v1")
    yield h
    for d in h.daemons:
        d.clean()


def ok(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 0, f"deploy failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    return run.stdout


def failed(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 1, f"expected a failed deploy:\n{run.stdout}\n{run.stderr}"
    return run.stderr


def first_release(h: TwoHosts) -> Traffic:
    """v1 live on blue on both hosts, with a client sending requests through edgeproxy."""
    out = ok(h.deploy("--ref", "v1"))
    assert "is live on blue" in out
    t = h.traffic()
    t.wait_ok()
    return t


def served_by(t: Traffic, color: str) -> set[str]:
    """The hosts whose `color` answered the client (each answer is `COLOR RELEASE HOST`)."""
    return {body.split()[2] for body in t.ok if body.split()[0] == color}


def wait_served(t: Traffic, color: str, hosts: set[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while served_by(t, color) != hosts:
        assert time.monotonic() < deadline, f"{color} served by {served_by(t, color)}: {t.ok}"
        time.sleep(0.05)


def test_a_release_with_canary_steps_starts_on_both_hosts_and_both_serve_each_color(
    hosts: TwoHosts,
) -> None:
    t = first_release(hosts)
    try:
        wait_served(t, "blue", {"app1", "app2"})
        for d in hosts.daemons:
            assert hosts.running(d) == {("blue", "server"), ("blue", "worker")}
            d.tag("good", "v2")
        out = ok(hosts.deploy("--ref", "v2"))
        # Each step names the host it acted on: start, wait (one host after the other), stop.
        for host in ("app1", "app2"):
            assert f"{host}: shop-server-green, " in out
            assert f"{host}: shop-server-blue" in out.split("stop blue's containers")[1]
        assert re.search(
            r"green is healthy .* ok .*every role healthy on app1 at [\d.]+s, app2 at [\d.]+s; "
            r"edgeproxy agrees on every host",
            out,
        ), out
        assert "send 10% of traffic to green" in out
        assert "send 50% of traffic to green" in out
        assert "is live on green" in out
        for d in hosts.daemons:
            assert hosts.running(d) == {("green", "server"), ("green", "worker")}
        view = hosts.view()
        assert (view["active"], view["candidate"], view["weight"]) == ("green", None, 0)
        wait_served(t, "green", {"app1", "app2"})
        assert t.failures == []
        assert hosts.releases() == [("blue", "success"), ("green", "success")]
    finally:
        t.stop()


def test_a_color_that_never_gets_healthy_on_one_host_rolls_back_on_both(
    hosts: TwoHosts,
) -> None:
    t = first_release(hosts)
    try:
        hosts.app1.tag("good", "v2")
        hosts.app2.tag("sick", "v2")  # the same release, broken on app2 only
        err = failed(hosts.deploy("--ref", "v2"))
        assert "wait until green is healthy" in err
        assert "shop-server-green on app2 healthy: not after" in err
        assert "shop-server-green on app1" not in err  # app1's green was healthy
        assert f"GET http://127.0.0.1:{hosts.port(hosts.app2, 'server', 'green')}/healthz" in err
        assert "blue still serves all traffic" in err
        assert "green's containers are stopped and kept on every host" in err
        for d in hosts.daemons:
            # green is stopped on both hosts (kept for `docker logs`), blue still runs.
            assert hosts.running(d) == {("blue", "server"), ("blue", "worker")}
        doctor = hosts.switchctl("doctor").stdout
        for host in ("app1", "app2"):
            assert f"shop-server-blue on {host}: running" in doctor
            assert f"shop-server-green on {host}: exited" in doctor
        view = hosts.view()
        assert (view["active"], view["weight"]) == ("blue", 0)
        assert served_by(t, "green") == set()
        served = t.total_ok
        while t.total_ok < served + 30:
            time.sleep(0.05)
        wait_served(t, "blue", {"app1", "app2"})
        assert t.failures == []
        assert hosts.releases() == [("blue", "success"), ("green", "rolled_back")]
    finally:
        t.stop()


def test_a_canary_whose_second_host_answers_500_fails_its_gate_and_rolls_back_on_both(
    hosts: TwoHosts,
) -> None:
    out = ok(hosts.deploy("--ref", "v1"))
    assert "is live on blue" in out
    cfg = deploy_config(
        hosts,
        canary={
            "steps": [50, 100],
            "dwell": 5,
            "poll": 0.2,
            "gates": {"min_requests": 3, "p99_min_ms": 2000},
        },
    )
    hosts.deploy_config.write_text(yaml.safe_dump(cfg))
    t = hosts.traffic("/cgi-bin/app")
    try:
        t.wait_ok()
        hosts.app1.tag("good", "v2")
        hosts.app2.tag("errors", "v2")  # healthy, but its app answers 500
        err = failed(hosts.deploy("--ref", "v2"))
        assert "send 50% of traffic to green and check the gates failed" in err
        assert "blue still serves all traffic" in err
        for d in hosts.daemons:
            assert hosts.running(d) == {("blue", "server"), ("blue", "worker")}
        assert hosts.view()["active"] == "blue"
        # The only failures are the canary's share from app2 before the gate tripped.
        assert all(f.startswith(("500 green", "503 ")) for f in t.failures), t.failures
        after = len(t.failures)
        served = t.total_ok
        while t.total_ok < served + 50:
            time.sleep(0.05)
        assert len(t.failures) == after
        assert hosts.releases()[-1] == ("green", "rolled_back")
    finally:
        t.stop()


def test_check_names_the_host_whose_dockerd_cannot_be_reached_and_reports_each_host(
    hosts: TwoHosts,
) -> None:
    ok(hosts.deploy("--check"))
    cfg = deploy_config(hosts)
    cfg["hosts"][1]["docker"] = f"unix://{hosts.root / 'nowhere.sock'}"
    hosts.deploy_config.write_text(yaml.safe_dump(cfg))
    run = hosts.deploy("--check", "--json")
    assert run.returncode == 2, run.stdout + run.stderr
    report = json.loads(run.stdout)
    by_name = {h["name"]: h for h in report["hosts"]}
    assert by_name["app1"]["ok"] is True
    assert by_name["app1"]["version"]
    assert by_name["app2"]["ok"] is False
    assert "nowhere.sock" in by_name["app2"]["error"]
    [problem] = report["problems"]
    assert problem.startswith("hosts[1] (app2): cannot reach dockerd at unix://")
    text = hosts.deploy("--check")
    assert text.returncode == 2
    assert "hosts[1] (app2): cannot reach dockerd" in text.stderr
