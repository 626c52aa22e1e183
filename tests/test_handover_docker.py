"""`switchctl proxy upgrade`: edgeproxy containers from two locally built images hand over.

Real dockerd, host networking, images built here (busybox base, the edgeproxy
package copied in with its own version string, the host's Python mounted as in
tests/docker_fixtures.py); real clients that never retry.
"""

from __future__ import annotations

import io
import secrets
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import yaml

from edgeproxy import __version__
from switchctl.client import ControlClient
from switchctl.deploy.proxyupgrade import outdated
from tests import docker_fixtures
from tests.docker_fixtures import BUSYBOX, ROOT, TEST_LABEL, free_ports, python_mounts
from tests.test_handover import HOST, Traffic

docker_client = docker_fixtures.docker_client  # the session's dockerd + the busybox image

pytestmark = pytest.mark.docker

SRC = "/opt/edgeproxy-src"


def build_image(client: docker.DockerClient, tag: str, init_py: str) -> None:
    """busybox + this checkout's edgeproxy package at SRC, with `init_py` as its __init__."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("Dockerfile", f"FROM {BUSYBOX}\nCOPY edgeproxy {SRC}/edgeproxy\n".encode())
        for path in sorted((ROOT / "edgeproxy").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT).as_posix()
                add(rel, init_py.encode() if rel == "edgeproxy/__init__.py" else path.read_bytes())
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)


@pytest.fixture
def images(docker_client: docker.DockerClient) -> Iterator[dict[str, str]]:
    tag = f"edgeproxy-test/proxy-{secrets.token_hex(3)}"
    names = {"a": f"{tag}:a", "b": f"{tag}:b", "broken": f"{tag}:broken"}
    build_image(docker_client, names["a"], f'__version__ = "{__version__}+a"\n')
    build_image(docker_client, names["b"], f'__version__ = "{__version__}+b"\n')
    build_image(docker_client, names["broken"], 'raise SystemExit("this build is broken")\n')
    yield names
    for name in names.values():
        try:
            docker_client.images.remove(name, force=True)
        except docker.errors.APIError:
            pass


@pytest.fixture
def proxy(
    docker_client: docker.DockerClient,
    images: dict[str, str],
    tmp_path: Path,
    backend: Any,
    tls_files: dict[str, Path],
) -> Iterator[dict[str, Any]]:
    blue, green = backend("blue"), backend("green")
    http_port, https_port = free_ports(2)
    conf = {
        "listen": {"http": f"127.0.0.1:{http_port}", "https": f"127.0.0.1:{https_port}"},
        "control": {"socket": str(tmp_path / "ctl.sock")},
        "state_file": str(tmp_path / "state.json"),
        "access_log": {"enabled": False},
        "shutdown_grace": 3,
        "tls": {"certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]},
        "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]},
                                     "green": {"upstreams": [green.url]}}}},
        "sites": [{"hosts": [HOST], "https_redirect": False, "routes": [{"path": "/", "app": "shop"}]}],
    }  # fmt: skip
    config = tmp_path / "edgeproxy.yml"
    config.write_text(yaml.safe_dump(conf))
    name = f"edgeproxy-test-{secrets.token_hex(3)}"
    docker_client.containers.run(
        images["a"],
        [str(Path(sys.prefix) / "bin" / "python"), "-m", "edgeproxy", "serve", "--config",
         str(config), "--log-format", "text"],
        name=name,
        detach=True,
        network_mode="host",
        init=True,
        user="0:0",
        labels={TEST_LABEL: name, "com.docker.compose.service": "edgeproxy"},
        volumes={**python_mounts(), str(tmp_path): {"bind": str(tmp_path), "mode": "rw"}},
        working_dir=SRC,
        environment={"PYTHONUNBUFFERED": "1"},
        restart_policy={"Name": "unless-stopped"},
    )  # fmt: skip
    control = ControlClient(str(tmp_path / "ctl.sock"), timeout=5)
    deadline = time.monotonic() + 30
    while True:
        try:
            control.apps()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield {"name": name, "control": control, "http": http_port, "https": https_port,
           "ca": tls_files["ca"], "socket": tmp_path / "ctl.sock"}  # fmt: skip
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={name}"}):
        c.remove(force=True)


def upgrade(proxy: dict[str, Any], image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchctl", "--socket", str(proxy["socket"]), "proxy", "upgrade",
         "--image", image, "--container", proxy["name"], "--timeout", "60"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_two_containers_from_local_images_hand_over_without_a_failed_request(
    docker_client: docker.DockerClient, images: dict[str, str], proxy: dict[str, Any]
) -> None:
    control: ControlClient = proxy["control"]
    control.set("shop", "green", 10)
    before = control.app("shop")
    tls = ssl.create_default_context(cafile=str(proxy["ca"]))
    clients = [
        Traffic(proxy["http"], tls=None, keep_alive=True),
        Traffic(proxy["https"], tls=tls, keep_alive=True),
        Traffic(proxy["http"], tls=None, keep_alive=False),
        Traffic(proxy["https"], tls=tls, keep_alive=False),
    ]
    for c in clients:
        c.start()
    time.sleep(0.5)
    for image, version in ((images["b"], "b"), (images["a"], "a")):
        done = upgrade(proxy, image)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"now runs {image}" in done.stdout
        view = control.process()
        assert view is not None and view["version"] == f"{__version__}+{version}"
        assert view["took_over"] is not None
        # One container, under the old name, from the new image; compose's labels and the
        # restart policy kept; nothing left over.
        found = docker_client.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}={proxy['name']}"}
        )
        assert [c.name for c in found] == [proxy["name"]]
        c = found[0]
        assert c.attrs["Config"]["Image"] == image and c.status == "running"
        assert c.labels["com.docker.compose.service"] == "edgeproxy"
        assert c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        after = control.app("shop")
        assert {k: after[k] for k in ("active", "candidate", "weight", "generation")} == {  # type: ignore[literal-required]
            k: before[k]
            for k in ("active", "candidate", "weight", "generation")  # type: ignore[literal-required]
        }
        time.sleep(0.5)
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(15)
    assert [c.failures for c in clients] == [[], [], [], []]
    assert all(c.ok > 20 for c in clients), [c.ok for c in clients]


def test_an_image_that_cannot_start_leaves_the_old_container_serving(
    docker_client: docker.DockerClient, images: dict[str, str], proxy: dict[str, Any]
) -> None:
    control: ControlClient = proxy["control"]
    before = control.process()
    done = upgrade(proxy, images["broken"])
    assert done.returncode == 1
    assert "exited (code 1) before it took over" in done.stderr
    assert "this build is broken" in done.stderr
    assert "keeps serving" in done.stderr
    assert control.process() == before
    found = docker_client.containers.list(
        all=True, filters={"label": f"{TEST_LABEL}={proxy['name']}"}
    )
    assert [(c.name, c.status) for c in found] == [(proxy["name"], "running")]
    assert found[0].attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    t = Traffic(proxy["http"], tls=None, keep_alive=False)
    t.start()
    time.sleep(0.5)
    t.stop.set()
    t.join(10)
    assert t.failures == [] and t.ok > 0


def test_the_deploy_sees_when_edgeproxy_runs_another_image_or_an_older_config(
    docker_client: docker.DockerClient, images: dict[str, str], proxy: dict[str, Any]
) -> None:
    config = Path(proxy["socket"]).parent / "edgeproxy.yml"
    process = proxy["control"].process()
    assert outdated(docker_client, proxy["name"], images["a"], config, process) is None
    assert outdated(docker_client, proxy["name"], None, config, process) is None
    why = outdated(docker_client, proxy["name"], images["b"], config, process)
    assert why == f"runs image {images['a']}, the deploy config names {images['b']}"
    config.write_text(config.read_text() + "# edited\n")
    why = outdated(docker_client, proxy["name"], images["a"], config, process)
    assert why == f"runs an older version of {config}"
    proxy["control"].reload_config()  # a reload brings it up to date
    fresh = proxy["control"].process()
    assert outdated(docker_client, proxy["name"], images["a"], config, fresh) is None
