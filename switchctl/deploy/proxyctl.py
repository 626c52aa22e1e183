"""Running edgeproxy on this server: as a docker container, a systemd unit, or unmanaged.

Each answers the same questions (is it up, down or crash-looping, and why) and
takes the same actions (start, restart). Unmanaged (`edgeproxy.unmanaged`: started
by hand or by another supervisor) only knows whether the control socket answers,
and refuses to start or restart, saying so. Its config is checked with this host's
`edgeproxy check-config` (the same package as switchctl), so with a container
its config directory must be mounted at the same path inside.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors

from switchctl.deploy.config import Proxy
from switchctl.deploy.plan import ProxyStatus


@dataclass(frozen=True)
class ProcessState:
    status: ProxyStatus | None
    """None: the process runs; whether it answers is for the control socket to say."""
    detail: str = ""
    restarts: int = 0


class Runner(Protocol):
    def state(self) -> ProcessState: ...
    def start(self) -> None: ...
    def restart(self) -> None: ...
    def logs(self, lines: int = 15) -> str: ...


class ContainerRunner:
    def __init__(self, client: docker.DockerClient, name: str) -> None:
        self.client = client
        self.name = name

    def _get(self) -> Any:
        return self.client.containers.get(self.name)

    def state(self) -> ProcessState:
        try:
            c = self._get()
        except docker.errors.NotFound:
            return ProcessState("missing", f"no container named {self.name}")
        st = c.attrs["State"]
        restarts = int(c.attrs.get("RestartCount", 0))
        if st.get("Restarting") or st["Status"] == "restarting":
            detail = (
                f"container {self.name} restarted {restarts} times, last exit code {st['ExitCode']}"
            )
            return ProcessState("crash-looping", detail, restarts)
        if st["Status"] != "running":
            return ProcessState(
                "down", f"container {self.name} is {st['Status']} (exit code {st['ExitCode']})"
            )
        return ProcessState(None, f"container {self.name} running", restarts)

    def start(self) -> None:
        self._get().start()

    def restart(self) -> None:
        self._get().restart(timeout=10)

    def logs(self, lines: int = 15) -> str:
        try:
            out: bytes = self._get().logs(tail=lines)
        except docker.errors.NotFound:
            return ""
        return out.decode(errors="replace").rstrip()


class SystemdRunner:
    def __init__(self, unit: str) -> None:
        self.unit = unit

    def _show(self) -> dict[str, str]:
        out = subprocess.run(
            [
                "systemctl",
                "show",
                self.unit,
                "-p",
                "LoadState,ActiveState,SubState,NRestarts,ExecMainStatus,Result",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def state(self) -> ProcessState:
        return parse_systemd_show(self.unit, self._show())

    def start(self) -> None:
        subprocess.run(["systemctl", "start", self.unit], check=True, capture_output=True)

    def restart(self) -> None:
        subprocess.run(["systemctl", "reset-failed", self.unit], check=False, capture_output=True)
        subprocess.run(["systemctl", "restart", self.unit], check=True, capture_output=True)

    def logs(self, lines: int = 15) -> str:
        return subprocess.run(
            ["journalctl", "-u", self.unit, "-n", str(lines), "--no-pager", "-o", "cat"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.rstrip()


class SocketOnlyRunner:
    """edgeproxy started some other way: switchctl only sees whether its socket answers."""

    CANNOT = (
        "switchctl does not start or restart edgeproxy here (edgeproxy.unmanaged: true); "
        "start it the way you run it, then deploy again"
    )

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def state(self) -> ProcessState:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(str(self.socket_path))
        except OSError as e:
            return ProcessState("down", f"nothing answers on {self.socket_path} ({e.strerror})")
        finally:
            probe.close()
        return ProcessState(None, f"something listens on {self.socket_path}")

    def start(self) -> None:
        raise RuntimeError(self.CANNOT)

    def restart(self) -> None:
        raise RuntimeError(self.CANNOT)

    def logs(self, lines: int = 15) -> str:
        return ""


def parse_systemd_show(unit: str, props: dict[str, str]) -> ProcessState:
    """Read `systemctl show` properties: a unit in auto-restart, or failed after restarts, loops."""
    restarts = int(props.get("NRestarts", "0") or 0)
    if props.get("LoadState") in (None, "not-found"):
        return ProcessState("missing", f"systemd has no unit {unit}")
    active, sub = props.get("ActiveState", ""), props.get("SubState", "")
    code = props.get("ExecMainStatus", "?")
    if sub == "auto-restart" or (active == "failed" and restarts > 0):
        return ProcessState(
            "crash-looping", f"{unit} restarted {restarts} times, last exit status {code}", restarts
        )
    if active != "active":
        return ProcessState("down", f"{unit} is {active} ({sub}, exit status {code})", restarts)
    return ProcessState(None, f"{unit} active", restarts)


def runner_for(cfg: Proxy, client: docker.DockerClient) -> Runner:
    if cfg.container is not None:
        return ContainerRunner(client, cfg.container)
    if cfg.systemd_unit is not None:
        return SystemdRunner(cfg.systemd_unit)
    return SocketOnlyRunner(cfg.socket)


def check_config(path: Path) -> list[str]:
    """Problems `edgeproxy check-config` reports for `path` (empty: valid)."""
    if not path.exists():
        return [f"{path}: the file does not exist"]
    proc = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode == 0:
        return []
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    return lines or [f"edgeproxy check-config exited with {proc.returncode}"]


def install_config(source: Path, dest: Path) -> Path:
    """Copy `source` over `dest` atomically (new inode); the old file is kept beside it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = dest.with_name(f"{dest.name}.bad-{stamp}")
    tmp = dest.with_name(f".{dest.name}.switchctl-tmp")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    if dest.exists():
        os.link(dest, kept)
    os.replace(tmp, dest)
    return kept
