"""Two dockerd daemons on this machine standing in for two app hosts.

Each `Dockerd` is a real `dockerd` with its own socket, data root, exec root
and pidfile, no bridge and no iptables rules (`--bridge=none --iptables=false`):
its containers use host networking, so the two "hosts" share 127.0.0.1 and
tell apart by port (`hosts[].port_offset` in the deploy config). Each gets the
busybox base imported (`docker import`, no registry) and the test app built on
it; the app's answer names its color, release and host (EDGEPROXY_HOST).

The daemons live as long as the fixture that started them: at teardown their
containers are removed, each daemon is stopped by its PID (SIGTERM, then
SIGKILL), what it left mounted is unmounted and its folders are deleted.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.docker_fixtures import APP_SH, build_images

APP = "edgeproxy-test/shop-hosts"
"""The test app, answering `COLOR RELEASE HOST` (the suite's app answers `COLOR RELEASE`)."""
HOSTS_APP_SH = APP_SH.replace(
    '"$EDGEPROXY_COLOR $RELEASE_ID"', '"$EDGEPROXY_COLOR $RELEASE_ID $EDGEPROXY_HOST"'
)
assert HOSTS_APP_SH.count("$EDGEPROXY_HOST") == 2, "tests/docker_fixtures.py's APP_SH changed"


@dataclass
class Dockerd:
    """One throwaway dockerd; `url` is what a deploy config's `hosts[].docker` names."""

    name: str
    root: Path
    popen: subprocess.Popen[bytes]
    _client: docker.DockerClient | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def client(self) -> docker.DockerClient:
        """One client for the daemon's lifetime (closed by `stop`)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=60)
        return self._client

    def log(self) -> str:
        return (self.root / "dockerd.log").read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the socket accepts (a plain connect: the SDK leaks the socket of a refused
        connection, which `filterwarnings = error` turns into a failure), then a ping."""
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise AssertionError(f"dockerd {self.name} exited:\n{self.log()}")
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(self.socket))
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd {self.name} did not answer:\n{self.log()}")
            time.sleep(0.2)
        self.client().ping()

    def build_app(self) -> None:
        """The busybox base (docker import) and the test app in each flavour."""
        build_images(self.client(), APP, HOSTS_APP_SH)

    def tag(self, flavour: str, ref: str) -> None:
        """`APP:ref` on this daemon is the app in `flavour` (what a deploy of --ref gets)."""
        self.client().images.get(f"{APP}:{flavour}").tag(APP, ref)

    def clean(self) -> None:
        """Remove every container (between tests sharing the daemon)."""
        for c in self.client().containers.list(all=True):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)

    def stop(self) -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            self.clean()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        # dockerd leaves its exec root's netns/default bind mount behind when it exits.
        for mount in reversed(mounts_under(self.root)):
            subprocess.run(["umount", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not self.root.exists(), f"could not remove {self.root}: {mounts_under(self.root)}"


def mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, in mount order (from /proc/self/mountinfo)."""
    prefix = f"{root}/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(prefix)]


def start_dockerd(name: str) -> Dockerd:
    # A short root: the daemon's socket and containerd's (under the exec root) are unix
    # sockets, whose paths may not exceed 107 bytes.
    root = Path(tempfile.mkdtemp(prefix=f"ep-{name}-", dir="/tmp"))
    (root / "daemon.json").write_text(json.dumps({}))  # not /etc/docker/daemon.json
    argv = [
        "dockerd",
        "--host",
        f"unix://{root / 'docker.sock'}",
        "--config-file",
        str(root / "daemon.json"),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "docker.pid"),
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
    ]
    with open(root / "dockerd.log", "wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Dockerd(name, root, popen)


@pytest.fixture(scope="module")
def two_dockerds() -> Iterator[tuple[Dockerd, Dockerd]]:
    """Two dockerd daemons with the test app imported into each; stopped by PID after."""
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (make system-deps)")
    started: list[Dockerd] = []
    try:
        for name in ("app1", "app2"):
            started.append(start_dockerd(name))
        for d in started:
            d.wait_ready()
            d.build_app()
        yield started[0], started[1]
    finally:
        for d in started:
            d.stop()


def free_ports_with_offset(n: int) -> tuple[list[int], int]:
    """n ports and an offset such that every port and port + offset is free (below the
    ephemeral range): the two stand-in hosts share 127.0.0.1."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    while True:
        base = rng.randrange(20000, max(low - 2000, 20001))
        offset = rng.randrange(100, 1000)
        ports = [base + 3 * i for i in range(n)]
        if all(_free(p) and _free(p + offset) for p in ports):
            return ports, offset


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True
