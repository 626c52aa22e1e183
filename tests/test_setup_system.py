"""`switchctl setup` against a scratch root and a real dockerd: a fresh server, twice.

The first run creates accounts (in ROOT/etc/passwd and ROOT/etc/group), folders
with their modes, the env file, edgeproxy's config with the deploy group's gid,
a self-signed certificate for every name, the known-good copy, and starts the
base stack and edgeproxy. The second run plans no step and touches no file.
"""

from __future__ import annotations

import json
import socket
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml
from cryptography import x509

from switchctl.client import ControlClient
from tests import docker_fixtures
from tests.setup_fixtures import ScratchServer

docker_client = docker_fixtures.docker_client

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def server(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[ScratchServer]:
    s = ScratchServer(docker_client, tmp_path)
    yield s
    s.teardown()


def setup_args() -> list[str]:
    return ["setup", "-c", "deploy/deploy.yml", "--edgeproxy-config", "deploy/edgeproxy.yml"]


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every path under root with its mtime (ns), mode, owner and group."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_socket():
            continue
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_mode, st.st_uid, st.st_gid)
    return out


def served_names(port: int, sni: str) -> list[str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


def test_setup_on_a_fresh_scratch_server_starts_everything_and_a_second_run_changes_nothing(
    server: ScratchServer,
) -> None:
    dry = server.switchctl(*setup_args(), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = json.loads(dry.stdout)
    kinds = [s["kind"] for s in planned["steps"]]
    assert kinds[:2] == ["create_group", "create_user"]
    assert kinds.count("selfsigned") == 2
    assert "compose_up" in kinds and kinds[-1] == "wait_proxy"
    assert list(server.root.iterdir()) == [server.root / "srv"]  # --dry-run changed nothing

    first = server.switchctl(*setup_args())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "JWT_SECRET" in first.stdout  # next: the secrets to write

    group = (server.root / "etc" / "group").read_text().splitlines()
    [deploy_group] = [line for line in group if line.startswith("deploy:")]
    gid = int(deploy_group.split(":")[2])
    live = server.server("/etc/edgeproxy/edgeproxy.yml")
    control = yaml.safe_load(live.read_text())["control"]
    assert (control["group"], control["allow_gids"]) == (str(gid), [gid])
    assert live.read_text().startswith("# the test app's edgeproxy.yml")  # comments kept
    source = server.server(f"/srv/{server.app}/config_source/edgeproxy.yml")
    assert source.read_text() == live.read_text()
    assert (
        server.server("/etc/switchctl/deploy.yml").read_text()
        == (server.checkout / "deploy" / "deploy.yml").read_text()
    )
    etc = server.server("/etc/edgeproxy").stat()
    assert (stat.S_IMODE(etc.st_mode), etc.st_gid) == (0o2775, gid)
    env = server.server(f"/etc/{server.app}/app.env").stat()
    assert stat.S_IMODE(env.st_mode) == 0o600
    key = server.server("/etc/edgeproxy/certs/admin.shop.test/privkey.pem").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600

    proxy = server.client.containers.get(server.proxy_name)
    db = server.client.containers.get(server.db_name)
    assert (proxy.status, db.status) == ("running", "running")
    assert ControlClient(server.server("/run/edgeproxy/control.sock")).apps()
    sock = server.server("/run/edgeproxy/control.sock").stat()
    assert (sock.st_gid, stat.S_IMODE(sock.st_mode)) == (gid, 0o660)
    for name in ("shop.test", "admin.shop.test"):
        assert name in served_names(server.https_port, name)

    before = snapshot(server.root)
    started = {c.name: c.attrs["State"]["StartedAt"] for c in (proxy, db)}
    again = server.switchctl(*setup_args(), "--dry-run", "--json")
    assert json.loads(again.stdout)["steps"] == []
    second = server.switchctl(*setup_args())
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to do: the server is set up" in second.stdout
    assert snapshot(server.root) == before
    for c in (proxy, db):
        c.reload()
        assert c.attrs["State"]["StartedAt"] == started[c.name]  # not restarted, not recreated
    assert {c.name for c in server.containers()} == {server.proxy_name, server.db_name}
