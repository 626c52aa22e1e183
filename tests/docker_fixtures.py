"""Real-dockerd building blocks for the deploy system tests (no registry, no internet).

- `build_images`: a busybox base imported from Debian's busybox-static, then a
  test app built on it in three flavours: `good` (healthy, answers 200 with its
  color and release), `sick` (never healthy), `errors` (healthy, but the app
  path answers 500). Built once per session (about 2 s).
- `Stack`: one throwaway "server": an edgeproxy container (the host's Python and
  this checkout bind-mounted into the busybox image, so no image build is
  needed and docker's restart policy gives real crash loops), a "database"
  base container (a TCP echo service) and a deploy config. Everything it
  creates carries the label `edgeproxy.test=<id>` and is removed at teardown.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import random
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BUSYBOX = "edgeproxy-test/busybox:1"
TEST_LABEL = "edgeproxy.test"

APP_SH = r"""#!/bin/sh
# The test app: serves its color and release on 127.0.0.1:$PORT.
mkdir -p /www/cgi-bin
echo "$EDGEPROXY_COLOR $RELEASE_ID" > /www/index.html
[ "$MODE" = sick ] || echo ok > /www/healthz
status=200
[ "$MODE" = errors ] && status=500
body="$EDGEPROXY_COLOR $RELEASE_ID"
printf '#!/bin/sh\nprintf "Status: %s\\r\\nContent-Type: text/plain\\r\\nContent-Length: %s\\r\\n\\r\\n%s\\n"\n' \
  "$status" "$((${#body} + 1))" "$body" > /www/cgi-bin/app
chmod +x /www/cgi-bin/app
# /cgi-bin/color always answers 200 and names its color in X-Edgeproxy-Color: a test double
# for the header edgeproxy adds to a request whose override it honoured (smoke checks
# require it). Through edgeproxy it names the color that really answered.
printf '#!/bin/sh\nprintf "Status: 200\\r\\nX-Edgeproxy-Color: %s\\r\\nContent-Type: text/plain\\r\\nContent-Length: %s\\r\\n\\r\\n%s\\n"\n' \
  "$EDGEPROXY_COLOR" "$((${#body} + 1))" "$body" > /www/cgi-bin/color
chmod +x /www/cgi-bin/color
exec httpd -f -p "127.0.0.1:$PORT" -h /www
"""

DOCKERFILE = f"""FROM {BUSYBOX}
ARG MODE=good
ENV MODE=$MODE
COPY app.sh /app.sh
CMD ["/bin/sh", "/app.sh"]
"""

# Tagged by content: tests sharing a dockerd never rebuild another version's app image.
APP = "edgeproxy-test/shop-" + hashlib.sha256((APP_SH + DOCKERFILE).encode()).hexdigest()[:8]


def docker_or_none() -> docker.DockerClient | None:
    if not _daemon_answers():
        # Asked through the SDK, a refused connect leaves its socket to the garbage
        # collector: a ResourceWarning that fails whichever test runs next.
        return None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException:
        return None
    return client


def _daemon_answers() -> bool:
    """Whether dockerd's unix socket (DOCKER_HOST or the default) takes a connection."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # tcp:// or ssh://: left to the SDK
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(host.removeprefix("unix://"))
        except OSError:
            return False
    return True


def _busybox_rootfs() -> bytes:
    busybox = Path("/bin/busybox").read_bytes()
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(
            name: str,
            data: bytes = b"",
            mode: int = 0o644,
            kind: bytes = tarfile.REGTYPE,
            link: str = "",
        ) -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.type, info.linkname = mode, kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("www", 0o755)):
            add(d, mode=mode, kind=tarfile.DIRTYPE)
        add("bin/busybox", busybox, 0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        add("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def build_images(
    client: docker.DockerClient, app: str = APP, app_sh: str = APP_SH
) -> dict[str, str]:
    """Build busybox + the three app flavours (`app:good`, ...); return {flavour: image id}."""
    client.api.import_image_from_data(
        _busybox_rootfs(),
        repository=BUSYBOX.split(":")[0],
        tag=BUSYBOX.split(":")[1],
        changes=['CMD ["/bin/sh"]'],
    )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in (("Dockerfile", DOCKERFILE), ("app.sh", app_sh)):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    ids = {}
    for mode in ("good", "sick", "errors"):
        buf.seek(0)
        image, _ = client.images.build(
            fileobj=buf,
            custom_context=True,
            tag=f"{app}:{mode}",
            buildargs={"MODE": mode},
            rm=True,
        )
        ids[mode] = image.id
    return ids


def free_ports(n: int) -> list[int]:
    """n ports free on every interface, below the kernel's ephemeral range.

    Containers here listen on 0.0.0.0 with host networking; a port from bind(0)
    is an ephemeral one, which any outgoing connection may take before the
    container binds it (the "database" container then exits at start).
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(20000, max(low, 20001))
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def python_mounts() -> dict[str, dict[str, str]]:
    """Bind mounts that let the busybox image run this checkout with the host's Python."""
    mounts = {"/usr": {"bind": "/usr", "mode": "ro"}, "/usr/lib": {"bind": "/lib", "mode": "ro"}}
    if Path("/usr/lib64").is_dir():
        mounts["/usr/lib64"] = {"bind": "/lib64", "mode": "ro"}
    for p in (Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), ROOT):
        if not str(p).startswith("/usr/"):
            mounts[str(p)] = {"bind": str(p), "mode": "ro"}
    return mounts


@dataclass
class Traffic:
    """A client sending requests through edgeproxy the whole time, counting failures."""

    url: str
    host: str
    path: str = "/"
    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failures_before_first_ok: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        """Round-robin over 16 keep-alive "visitors", each from its own 127.0.0.x address
        (edgeproxy splits a canary by a hash of the client address)."""
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        conns: list[http.client.HTTPConnection | None] = [None] * 16
        try:
            self._loop(u.hostname or "", u.port or 80, conns)
        finally:
            for c in conns:
                if c is not None:
                    c.close()

    def _loop(self, host: str, port: int, conns: list[http.client.HTTPConnection | None]) -> None:
        n = 0
        while not self._stop.is_set():
            n = (n + 1) % len(conns)
            conn = conns[n]
            try:
                if conn is None:
                    conn = conns[n] = http.client.HTTPConnection(
                        host, port, timeout=10, source_address=(f"127.0.0.{10 + n}", 0)
                    )
                conn.request("GET", self.path, headers={"Host": self.host})
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace").strip()
                if resp.status == 200:
                    self.ok[body] += 1
                else:
                    self._fail(f"{resp.status} {body[:80]}")
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conns[n] = None
            except (OSError, http.client.HTTPException) as e:
                self._fail(f"{type(e).__name__}: {e}")
                if conn is not None:
                    conn.close()
                conns[n] = None
                time.sleep(0.05)
            time.sleep(0.005)

    def _fail(self, what: str) -> None:
        if not self.ok:
            self.failures_before_first_ok += 1
        else:
            self.failures.append(what)

    def wait_ok(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while not self.ok:
            if time.monotonic() > end:
                raise AssertionError(f"no request succeeded through edgeproxy in {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    @property
    def total_ok(self) -> int:
        return sum(self.ok.values())


class Stack:
    """One throwaway server: edgeproxy container, a database container, a deploy config."""

    def __init__(self, client: docker.DockerClient, root: Path) -> None:
        self.client = client
        self.root = root
        self.id = uuid.uuid4().hex[:8]
        self._sockets: list[socket.socket] = []
        self.app = f"shop{self.id}"
        (self.http_port, self.db_port, *app_ports) = free_ports(6)
        self.ports = {
            "server": {"blue": app_ports[0], "green": app_ports[1]},
            "worker": {"blue": app_ports[2], "green": app_ports[3]},
        }
        self.proxy_name = f"edgeproxy-{self.id}"
        self.db_name = f"db-{self.id}"
        self.socket = root / "run" / "control.sock"
        self.proxy_config = root / "edgeproxy" / "edgeproxy.yml"
        self.good_config = root / "edgeproxy-good.yml"
        self.state_file = root / "state" / "state.json"
        self.deploy_config = root / "deploy.yml"
        self.env_file = root / "app.env"
        for d in ("run", "edgeproxy", "state", "switchctl"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.env_file.write_text(
            "DATABASE_URL=postgres://shop:secret@127.0.0.1/shop\nJWT_SECRET=s3cr3t\n"
        )
        os.chmod(self.env_file, 0o600)
        self.good_config.write_text(self.proxy_config_text())

    def labels(self) -> dict[str, str]:
        return {TEST_LABEL: self.id}

    def proxy_config_text(self) -> str:
        colors = {
            c: {"upstreams": [f"http://127.0.0.1:{self.ports['server'][c]}"]}
            for c in ("blue", "green")
        }
        cfg = {
            "listen": {"http": f"127.0.0.1:{self.http_port}"},
            "control": {"socket": str(self.socket)},
            "state_file": str(self.state_file),
            "access_log": {"enabled": False},
            "shutdown_grace": 1,
            "apps": {
                self.app: {
                    "colors": colors,
                    "health": {
                        "path": "/healthz",
                        "interval": 0.2,
                        # Generous for a starved CPU (a test run next to a benchmark):
                        # a slow probe must not turn a healthy color away mid-test.
                        "timeout": 2,
                        "healthy_threshold": 1,
                        "unhealthy_threshold": 3,
                    },
                    "drain_timeout": 5,
                }
            },
            "sites": [
                {
                    "hosts": ["shop.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": self.app}],
                }
            ],
        }
        return yaml.safe_dump(cfg)

    def write_deploy_config(self, **overrides: Any) -> Path:
        cfg: dict[str, Any] = {
            "app": self.app,
            "image": f"{APP}:{{ref}}",
            "env_file": str(self.env_file),
            "required_env": ["DATABASE_URL", "JWT_SECRET"],
            "roles": {
                "server": {
                    "traffic": True,
                    "ports": self.ports["server"],
                    "health_path": "/healthz",
                },
                "worker": {"ports": self.ports["worker"], "health_path": "/healthz"},
            },
            "health": {"deadline": 8, "first_delay": 0.1, "max_delay": 0.5},
            "smoke": {
                "url": f"http://127.0.0.1:{self.http_port}",
                "checks": [{"path": "/cgi-bin/color", "host": "shop.test", "status": 200}],
            },
            "canary": {
                "steps": [10, 50, 100],
                "dwell": 0.6,
                "poll": 0.2,
                # Latency is not what these tests judge: a few requests' p99 on a CPU
                # starved by a parallel run reached 105 ms against the 50 ms floor.
                "gates": {"min_requests": 3, "p99_min_ms": 2000},
            },
            "drain_timeout": 3,
            "stop_timeout": 2,
            "base_services": [self.db_name],
            "edgeproxy": {
                "container": self.proxy_name,
                "socket": str(self.socket),
                "config": str(self.proxy_config),
                "config_source": str(self.good_config),
                "start_timeout": 20,
            },
            "state_dir": str(self.root / "switchctl"),
            "extra_labels": self.labels(),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        self.deploy_config.write_text(yaml.safe_dump(cfg))
        return self.deploy_config

    # --- containers --------------------------------------------------------------------------

    def db_connection(self, timeout: float = 30) -> socket.socket:
        end = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.db_port), timeout=5)
                self._sockets.append(sock)  # closed at teardown even if the test fails
                return sock
            except ConnectionRefusedError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def start_db(self) -> Any:
        return self.client.containers.run(
            BUSYBOX,
            ["nc", "-ll", "-p", str(self.db_port), "-e", "cat"],
            name=self.db_name,
            detach=True,
            network_mode="host",
            init=True,
            labels=self.labels(),
        )

    def create_proxy(self, config_text: str | None = None, start: bool = True) -> Any:
        self.proxy_config.write_text(
            config_text if config_text is not None else self.proxy_config_text()
        )
        volumes = {**python_mounts(), str(self.root): {"bind": str(self.root), "mode": "rw"}}
        cmd = [
            str(Path(sys.prefix) / "bin" / "python"),
            "-m",
            "edgeproxy",
            "serve",
            "--config",
            str(self.proxy_config),
            "--log-format",
            "text",
        ]
        kwargs: dict[str, Any] = dict(
            name=self.proxy_name,
            network_mode="host",
            init=True,
            labels=self.labels(),
            volumes=volumes,
            working_dir=str(ROOT),
            environment={"PYTHONPATH": str(ROOT)},
            restart_policy={"Name": "always"},
        )
        if start:
            return self.client.containers.run(BUSYBOX, cmd, detach=True, **kwargs)
        return self.client.containers.create(BUSYBOX, cmd, **kwargs)

    def wait_socket(self, timeout: float = 20) -> None:
        from switchctl.client import ClientError, ControlClient

        end = time.monotonic() + timeout
        while True:
            try:
                ControlClient(self.socket, timeout=2).apps()
                return
            except ClientError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def traffic(self, path: str = "/") -> Traffic:
        return Traffic(f"http://127.0.0.1:{self.http_port}", "shop.test", path).start()

    def deploy(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.switchctl("deploy", *args, timeout=timeout)

    def switchctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`switchctl ARGS -c <this stack's deploy config>`, output captured."""
        return subprocess.run(
            [sys.executable, "-m", "switchctl", *args, "-c", str(self.deploy_config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def deploy_popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "switchctl", "deploy", "-c", str(self.deploy_config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def containers(self, color: str | None = None) -> list[Any]:
        labels = [f"edgeproxy.app={self.app}"] + ([f"edgeproxy.color={color}"] if color else [])
        return list(self.client.containers.list(all=True, filters={"label": labels}))

    def run_color(self, color: str, flavour: str = "good", release: str = "manual") -> None:
        """Start a color by hand, as an earlier deploy (or deploy.sh) would have left it."""
        for role in ("server", "worker"):
            self.client.containers.run(
                f"{APP}:{flavour}",
                name=f"{self.app}-{role}-{color}",
                detach=True,
                network_mode="host",
                init=True,
                environment={
                    "PORT": str(self.ports[role][color]),
                    "EDGEPROXY_COLOR": color,
                    "RELEASE_ID": release,
                },
                labels={
                    **self.labels(),
                    "edgeproxy.app": self.app,
                    "edgeproxy.color": color,
                    "edgeproxy.role": role,
                    "edgeproxy.release": release,
                },
                restart_policy={"Name": "unless-stopped"},
            )

    def teardown(self) -> None:
        for sock in self._sockets:
            sock.close()
        for c in self.client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={self.id}"}
        ):
            try:
                c.remove(force=True)
            except docker.errors.APIError:
                pass
        for img in self.client.images.list(name=f"switchctl/{self.app}-release"):
            for tag in img.tags:
                if not tag.startswith(f"switchctl/{self.app}-release:"):
                    continue
                try:
                    self.client.images.remove(tag)
                except docker.errors.APIError:
                    pass


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """dockerd with the test images built (once per session); skips when dockerd is absent."""
    c = docker_or_none()
    if c is None:
        pytest.skip("dockerd is not running (tests/run.py starts it)")
    build_images(c)
    yield c
    c.close()


@pytest.fixture
def docker_stack(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(docker_client, tmp_path)
    yield s
    s.teardown()
