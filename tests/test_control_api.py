"""The control API on a real unix socket, driven by the real ControlClient and raw HTTP."""

from __future__ import annotations

import grp
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.config import load_config
from edgeproxy.control.api import BoardHooks, start_control_server
from edgeproxy.errors import ConfigError, StartupError, TLSConfigError
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.store import StateStore
from switchctl.client import ControlClient, ControlError, ProxyUnreachable
from tests.conftest import ControlProxy

StartProxy = Callable[..., ControlProxy]


def raw_request(sock_path: Path, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """One HTTP/1.1 exchange on the unix socket; returns (status, parsed JSON body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        s.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def on_disk(proxy: ControlProxy) -> dict[str, Any]:
    apps: dict[str, Any] = json.loads(proxy.store.path.read_text())["apps"]
    return apps


def test_apps_are_listed_and_viewed_with_weights_and_colors(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"), blog=("a", "b"))
    client = ControlClient(proxy.socket)
    assert set(client.apps()) == {"shop", "blog"}
    view = client.app("shop")
    assert (view["active"], view["candidate"], view["weights"]) == (
        "blue",
        None,
        {"blue": 100, "green": 0},
    )
    assert view["colors"]["green"]["healthy"] is True


def test_every_verb_changes_the_state_and_is_persisted_before_the_reply(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    client = ControlClient(proxy.socket)
    steps: list[tuple[Callable[[], Any], dict[str, Any]]] = [
        (lambda: client.set("shop", "green", 10), {"candidate": "green", "weight": 10}),
        (lambda: client.promote("shop"), {"active": "green", "previous": "blue"}),
        (lambda: client.rollback("shop"), {"active": "blue", "previous": "green"}),
        (lambda: client.pause("shop"), {"paused": True}),
        (lambda: client.resume("shop"), {"paused": False}),
        (lambda: client.set("shop", "green", 0), {"candidate": "green", "weight": 0}),
        (lambda: client.drain("shop", "green", timeout=600), {"candidate": None}),
    ]
    for generation, (call, expected) in enumerate(steps, start=1):
        view = call()
        assert {k: view[k] for k in expected} == expected
        assert view["generation"] == generation
        saved = on_disk(proxy)["shop"]
        assert saved["generation"] == generation
        assert {k: saved[k] for k in expected} == expected


def test_a_drain_finishes_once_the_color_has_nothing_in_flight(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.inflight["blue"] = (1, 1)
    client = ControlClient(proxy.socket)
    client.set("shop", "green", 100)
    view = client.drain("shop", "blue", timeout=600)
    assert set(view["draining"]) == {"blue"}
    assert view["colors"]["blue"]["in_flight"] == 1
    proxy.inflight["blue"] = (0, 0)
    deadline = time.monotonic() + 10
    while client.app("shop")["draining"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.app("shop")["draining"] == {}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/apps/shop/set", b"{nope", 400, "request body is not valid JSON"),
        ("/v1/apps/shop/set", b"[1]", 400, "request body must be a JSON object"),
        (
            "/v1/apps/shop/set",
            b'{"color": "green", "weight": 101}',
            400,
            "weight: must be between 0 and 100",
        ),
        ("/v1/apps/shop/set", b'{"color": "green", "weight": "10"}', 400, "weight: input should"),
        ("/v1/apps/shop/set", b'{"weight": 10}', 400, "color: required"),
        ("/v1/apps/shop/set", b'{"color": "Green!"}', 400, "color: 'Green!' is not a color name"),
        ("/v1/apps/shop/set", b'{"color": "green", "colour": 1}', 400, "colour: unknown field"),
        ("/v1/apps/shop/drain", b'{"color": "green", "timeout": 0}', 400, "timeout: must be"),
        ("/v1/apps/blog/set", b'{"color": "green"}', 404, "unknown app 'blog' (apps: shop)"),
        ("/v1/apps/shop/set", b'{"color": "red"}', 404, "unknown color shop/red"),
        ("/v1/apps/shop/promote", b"{}", 409, "cannot promote shop: no candidate color"),
        ("/v1/apps/shop/drain", b'{"color": "blue"}', 409, "it is the active color"),
        ("/v1/nothing", b"", 404, "Not Found: POST /v1/nothing"),
    ],
)
def test_bad_requests_and_refusals_get_json_errors_that_say_what_is_wrong(
    control_proxy: StartProxy, path: str, body: bytes, status: int, message: str
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    got_status, reply = raw_request(proxy.socket, "POST", path, body)
    assert (got_status, reply["status"]) == (status, status)
    assert message in reply["error"]
    assert on_disk(proxy)["shop"]["generation"] == 0


def test_switching_to_an_unhealthy_color_is_refused_unless_forced(
    control_proxy: StartProxy,
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.unhealthy["green"] = ["GET /health → 503"]
    client = ControlClient(proxy.socket)
    with pytest.raises(ControlError) as refused:
        client.set("shop", "green", 100)
    assert refused.value.status == 409
    assert "green is unhealthy (GET /health → 503)" in refused.value.message
    assert client.set("shop", "green", 100, force=True)["active"] == "green"


def test_every_mutation_writes_one_audit_line_with_the_peer(
    control_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    client = ControlClient(proxy.socket)
    with caplog.at_level(logging.INFO, logger="edgeproxy.audit"):
        client.set("shop", "green", 10)
        with pytest.raises(ControlError):
            client.rollback("shop")
        client.app("shop")  # reads are not audited
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "edgeproxy.audit"]
    assert len(lines) == 2
    ok, refused = lines
    assert (ok["peer_uid"], ok["peer_pid"], ok["verb"], ok["app"]) == (
        os.getuid(),
        os.getpid(),
        "set",
        "shop",
    )
    assert (ok["old"], ok["new"], ok["result"]) == (
        "active=blue gen=0",
        "active=blue candidate=green@10 gen=1",
        "ok",
    )
    assert ok["request"] == {"color": "green", "weight": 10, "force": False}
    assert (refused["verb"], refused["result"]) == ("rollback", "refused")
    assert "no previous color" in refused["error"]


def test_the_socket_gets_mode_0660_by_default(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    assert stat.S_IMODE(proxy.socket.stat().st_mode) == 0o660
    assert stat.S_ISSOCK(proxy.socket.stat().st_mode)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="edgeproxy-ctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def request_as_nobody(sock: Path) -> tuple[int, str]:
    """Run the real ControlClient as uid/gid 65534 in a subprocess; (status or 0, message)."""
    code = (
        "import sys\n"
        "from switchctl.client import ControlClient, ControlError\n"
        f"try: print(len(ControlClient({str(sock)!r}).apps()), 'apps')\n"
        "except ControlError as e: print(e.status, e.message)\n"
    )
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or os.getuid() != 0:
        pytest.skip("needs root and a system python3 that uid 65534 can run")
    # uid 65534 may not be able to read the checkout (a clone under a 0700
    # mktemp dir, say): give it its own readable copy of the client package.
    root = Path(__file__).resolve().parent.parent
    pkg = sock.parent / "pythonpath" / "switchctl"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        for name in ("__init__.py", "client.py"):
            shutil.copy(root / "switchctl" / name, pkg / name)
        for path in (pkg.parent, pkg, *pkg.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
    out = subprocess.run(
        [python, "-c", code],
        user=65534,
        group=65534,
        extra_groups=[],
        env={"PYTHONPATH": str(pkg.parent)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    status, _, message = out.strip().partition(" ")
    return int(status), message


def test_a_peer_whose_uid_is_not_allowed_gets_403(
    control_proxy: StartProxy, public_dir: Path
) -> None:
    sock = public_dir / "control.sock"
    control_proxy(control={"socket": str(sock), "mode": 0o666}, shop=("blue", "green"))
    status, message = request_as_nobody(sock)
    assert status == 403
    assert "uid 65534" in message
    assert "control.allow_uids" in message


def test_a_refused_peer_is_logged_on_the_audit_logger_with_its_uid_pid_and_request(
    control_proxy: StartProxy, public_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = public_dir / "control.sock"
    control_proxy(control={"socket": str(sock), "mode": 0o666}, shop=("blue", "green"))
    with caplog.at_level(logging.INFO, logger="edgeproxy.audit"):
        assert request_as_nobody(sock)[0] == 403
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "edgeproxy.audit"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["peer_uid"], line["peer_gid"], line["verb"], line["result"]) == (
        65534,
        65534,
        "GET /v1/apps",
        "refused",
    )
    assert line["peer_pid"] > 0
    assert "uid 65534" in line["error"]
    assert "control.allow_uids" in line["error"]


def test_a_peer_on_the_uid_allowlist_is_served(control_proxy: StartProxy, public_dir: Path) -> None:
    sock = public_dir / "control.sock"
    control_proxy(
        control={"socket": str(sock), "mode": 0o666, "allow_uids": [65534]}, shop=("blue", "green")
    )
    assert request_as_nobody(sock) == (1, "apps")


def test_a_peer_whose_group_is_allowed_is_served(
    control_proxy: StartProxy, public_dir: Path
) -> None:
    sock = public_dir / "control.sock"
    control_proxy(
        control={"socket": str(sock), "mode": 0o666, "allow_gids": [65534]}, shop=("blue", "green")
    )
    assert request_as_nobody(sock) == (1, "apps")


async def test_a_stale_socket_file_is_replaced_but_a_live_one_is_refused(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    config = make_config(control={"socket": str(path)}, shop=("blue", "green"))
    board = SwitchBoard.load(config, StateStore(tmp_path / "s.json"))
    runner = await start_control_server(config.control, board)
    try:
        with pytest.raises(StartupError, match="another process is already listening"):
            await start_control_server(config.control, board)
    finally:
        await runner.cleanup()


async def test_a_socket_path_that_is_not_a_socket_is_left_alone(
    tmp_path: Path, make_config: Callable[..., Any]
) -> None:
    path = tmp_path / "control.sock"
    path.write_text("important")
    config = make_config(control={"socket": str(path)}, shop=("blue",))
    with pytest.raises(StartupError, match="exists and is not a socket"):
        await start_control_server(config.control, None)  # type: ignore[arg-type]
    assert path.read_text() == "important"


class CertHooks(BoardHooks):
    fail_next = False

    async def reload_certs(self) -> dict[str, Any]:
        if self.fail_next:
            raise TLSConfigError("/etc/edgeproxy/shop.pem: no certificate found")
        return {"ok": True, "certificates": [{"cert": "/etc/edgeproxy/shop.pem"}]}

    def certs_view(self) -> dict[str, Any]:
        return {"certificates": [{"cert": "/etc/edgeproxy/shop.pem", "days_left": 80}]}


def test_certificate_reloads_go_through_the_hooks_and_failures_are_409(
    control_proxy: StartProxy,
) -> None:
    hooks: list[CertHooks] = []

    def make_hooks(board: SwitchBoard) -> CertHooks:
        hooks.append(CertHooks(board))
        return hooks[-1]

    proxy = control_proxy(hooks=make_hooks, shop=("b",))
    client = ControlClient(proxy.socket)
    assert client.reload_certs()["certificates"] == [{"cert": "/etc/edgeproxy/shop.pem"}]
    assert client.certs()["certificates"][0]["days_left"] == 80
    hooks[0].fail_next = True
    with pytest.raises(ControlError) as failed:
        client.reload_certs()
    assert (failed.value.status, failed.value.message) == (
        409,
        "/etc/edgeproxy/shop.pem: no certificate found",
    )


def test_health_metrics_and_openapi_are_served(control_proxy: StartProxy) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    proxy.unhealthy["green"] = ["connect refused"]
    client = ControlClient(proxy.socket)
    client.set("shop", "green", 0)
    assert client.health()["apps"]["shop"]["green"] == {
        "healthy": False,
        "failing_checks": ["connect refused"],
    }
    metrics = client.metrics()
    assert 'edgeproxy_switch_generation{app="shop"} 1' in metrics
    assert 'edgeproxy_switch_weight{app="shop",color="blue"} 100' in metrics
    status, doc = raw_request(proxy.socket, "GET", "/v1/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    set_schema = doc["paths"]["/v1/apps/{app}/set"]["post"]["requestBody"]["content"]
    assert set_schema["application/json"]["schema"]["properties"]["weight"]["maximum"] == 100
    assert set(doc["paths"]) >= {"/v1/apps", "/v1/health", "/metrics", "/v1/certs/reload"}


def test_a_missing_proxy_is_reported_as_unreachable_with_the_socket_path(tmp_path: Path) -> None:
    with pytest.raises(ProxyUnreachable) as err:
        ControlClient(tmp_path / "none.sock").apps()
    assert str(tmp_path / "none.sock") in str(err.value)
    assert "systemctl status edgeproxy" in str(err.value)


def test_the_socket_group_is_set_from_the_config(control_proxy: StartProxy) -> None:
    group = grp.getgrgid(65534).gr_name
    proxy = control_proxy(control={"group": group}, shop=("blue",))
    assert proxy.socket.stat().st_gid == 65534


def test_a_socket_group_name_that_does_not_resolve_is_a_config_error_suggesting_the_gid(
    tmp_path: Path,
) -> None:
    path = tmp_path / "edgeproxy.yml"
    path.write_text(
        "control: {group: no-such-group}\n"
        "apps: {shop: {colors: {blue: {upstreams: ['http://127.0.0.1:9']}}}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems == [
        f"{path}: control.group: there is no group named 'no-such-group' where edgeproxy runs; "
        "write the numeric gid instead (`getent group no-such-group` on the host prints it; "
        "a container does not know the host's group names)"
    ]


def test_a_numeric_socket_group_is_taken_as_a_gid(control_proxy: StartProxy) -> None:
    proxy = control_proxy(control={"group": 65534}, shop=("blue",))
    assert proxy.socket.stat().st_gid == 65534
