"""docs/deploying.md, followed as written: setup twice, then the first release.

The blocks marked `<!-- docs-test: NAME -->` are run line by line with bash, as
the page shows them, in a checkout of a test app (tests/setup_fixtures.py: its
deploy/deploy.yml and deploy/edgeproxy.yml stand for the operator's edits),
with SWITCHCTL_ROOT pointing at a scratch root (the page documents it), a real
dockerd, and the busybox test image tagged with the page's git sha.
"""

from __future__ import annotations

import http.client
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from switchctl.deploy.history import History
from tests import docker_fixtures
from tests.setup_fixtures import REF, ScratchServer

docker_client = docker_fixtures.docker_client

pytestmark = [pytest.mark.docker, pytest.mark.slow]

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploying.md"


def block(name: str) -> list[str]:
    """The command lines of the fenced block after `<!-- docs-test: NAME -->`."""
    m = re.search(rf"<!-- docs-test: {name} -->\n```sh\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert m is not None, f"docs/deploying.md has no block marked docs-test: {name}"
    return [line for line in m.group(1).splitlines() if line.strip()]


def run_block(server: ScratchServer, name: str) -> list[subprocess.CompletedProcess[str]]:
    out = []
    for line in block(name):
        p = subprocess.run(
            ["bash", "-e", "-c", line],
            cwd=server.checkout,
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert p.returncode == 0, f"`{line}` exited with {p.returncode}:\n{p.stdout}\n{p.stderr}"
        out.append(p)
    return out


@pytest.fixture
def server(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[ScratchServer]:
    s = ScratchServer(docker_client, tmp_path)
    yield s
    s.teardown()


def test_the_deploying_guide_as_written_sets_up_twice_and_reaches_a_first_release(
    server: ScratchServer,
) -> None:
    assert all(line.startswith("switchctl setup") for line in block("setup"))
    dry, first = run_block(server, "setup")
    assert "create group deploy" in dry.stdout
    assert "JWT_SECRET" in first.stdout  # the secrets it says are missing
    _, second = run_block(server, "setup")
    assert "nothing to do: the server is set up" in second.stdout

    env_file = server.server(f"/etc/{server.app}/app.env")
    env_file.write_text("JWT_SECRET=s3cr3t\n")  # "Write the app's secrets into ..."
    check, plan, deploy = run_block(server, "first-release")
    assert "ok" in check.stdout
    assert "serving now: nothing; the new release goes to blue" in plan.stdout
    assert "is live on blue" in deploy.stdout

    [release] = History(server.server(f"/var/lib/switchctl/{server.app}/releases.json")).load()
    assert (release.outcome, release.git_sha, release.color) == ("success", REF, "blue")
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
    conn.request("GET", "/", headers={"Host": "shop.test"})
    resp = conn.getresponse()
    assert (resp.status, resp.read().decode().split()) == (200, ["blue", release.id])
    conn.close()
    color = server.client.containers.get(f"{server.prefix}-server-blue")
    log = color.attrs["HostConfig"]["LogConfig"]
    assert (log["Type"], log["Config"]) == ("json-file", {"max-size": "10m", "max-file": "5"})
