"""Hand-over between real edgeproxy processes (`edgeproxy serve --takeover`).

Two builds: this tree, and a copy whose `__version__` differs, so each
hand-over is a real upgrade (or downgrade) between two installations. Clients
are real: keep-alive and one-request connections over HTTP and TLS, and a
WebSocket echo; none of them retries.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from edgeproxy import __version__
from switchctl.client import ControlClient

REPO = Path(__file__).resolve().parent.parent
GRACE = 40.0
HOST = "example.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def second_build(tmp_path: Path, version: str) -> Path:
    """A copy of the edgeproxy package whose only difference is its version string."""
    root = tmp_path / "build-b"
    shutil.copytree(
        REPO / "edgeproxy", root / "edgeproxy", ignore=shutil.ignore_patterns("__pycache__")
    )
    init = root / "edgeproxy" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', f'"{version}"'))
    return root


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    tmp: Path
    conf: dict[str, Any]
    path: Path
    ca: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def control(self) -> ControlClient:
        return ControlClient(self.conf["control"]["socket"])

    @property
    def http_port(self) -> int:
        return int(self.conf["listen"]["http"].rsplit(":", 1)[1])

    @property
    def https_port(self) -> int:
        return int(self.conf["listen"]["https"].rsplit(":", 1)[1])

    def start(self, build: Path, *, takeover: bool, config: Path | None = None) -> Proc:
        n = len(self.procs)
        log = self.tmp / f"edgeproxy{n}.log"
        argv = [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config or self.path)]
        argv += ["--log-format", "text"] + (["--takeover"] if takeover else [])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, cwd=build, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        proc = Proc(popen, log)
        self.procs.append(proc)
        return proc

    def wait_serving(self, proc: Proc, timeout: float = 40) -> dict[str, Any]:
        """Wait until `proc` answers on the control socket; return its process view."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise AssertionError(f"edgeproxy exited {proc.popen.returncode}:\n{proc.text()}")
            try:
                view = self.control._json("GET", "/v1/process")
                if view["pid"] == proc.pid and "listening on https" in proc.text():
                    return view
            except Exception:
                pass
            time.sleep(0.05)
        raise AssertionError(f"edgeproxy {proc.pid} did not take over:\n{proc.text()}")

    def stop_all(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(GRACE + 15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(5)


@pytest.fixture
def site(tmp_path: Path, backend: Any, tls_files: dict[str, Path]) -> Any:
    blue, green, red = backend("blue"), backend("green"), backend("red")
    conf = {
        "listen": {"http": f"127.0.0.1:{free_port()}", "https": f"127.0.0.1:{free_port()}"},
        "control": {"socket": str(tmp_path / "ctl.sock")},
        "state_file": str(tmp_path / "state.json"),
        "access_log": {"enabled": False},
        "shutdown_grace": GRACE,
        "tls": {"certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]},
        "apps": {
            "shop": {
                "colors": {c.name: {"upstreams": [c.url]} for c in (blue, green, red)},
                "health": {"interval": 0.5},
            }
        },
        "sites": [{"hosts": [HOST], "https_redirect": False, "routes": [{"path": "/", "app": "shop"}]}],
    }  # fmt: skip
    path = tmp_path / "edgeproxy.yml"
    path.write_text(yaml.safe_dump(conf))
    s = Site(tmp_path, conf, path, tls_files["ca"])
    yield s
    s.stop_all()


class Traffic(threading.Thread):
    """Requests in a loop, never retried: keep-alive or a new connection each, HTTP or TLS."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None, keep_alive: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.tls, self.keep_alive = port, tls, keep_alive
        self.stop = threading.Event()
        self.ok = 0
        self.connections = 0
        self.failures: list[str] = []

    def _open(self) -> http.client.HTTPConnection:
        self.connections += 1
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        if self.tls is not None:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            conn.sock = self.tls.wrap_socket(raw, server_hostname=HOST)
        return conn

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Host": HOST} if self.keep_alive else {"Host": HOST, "Connection": "close"}
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self._open()
                conn.request("GET", "/", headers=headers)
                r = conn.getresponse()
                body = r.read()
                if r.status == 200 and body.strip() in (b"blue", b"green"):
                    self.ok += 1
                else:
                    self.failures.append(f"{r.status} {body[:80]!r}")
                if r.will_close:
                    conn.close()
                    conn = None
            except Exception as e:
                self.failures.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.005)
        if conn is not None:
            conn.close()


class Echo(threading.Thread):
    """A WebSocket echo through edgeproxy: a message every 0.1 s until the server closes it."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.opened = threading.Event()
        self.echoes = 0
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.error: str | None = None
        self.stop = threading.Event()

    def open(self) -> Echo:
        self.start()
        assert self.opened.wait(10), self.error
        return self

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            with connect(f"ws://{HOST}:{self.port}/ws", sock=sock) as ws:
                self.opened.set()
                self._talk(ws)
        except Exception as e:
            self.error = repr(e)
            self.opened.set()

    def _talk(self, ws: ClientConnection) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                ws.send(f"m{n}")
                reply = ws.recv(timeout=10)
                assert str(reply).endswith(f"m{n}"), reply
                self.echoes += 1
                time.sleep(0.1)
        except ConnectionClosed as e:
            self.closed_at = time.monotonic()
            self.close_code = e.rcvd.code if e.rcvd is not None else None


def switch_state(control: ControlClient) -> dict[str, Any]:
    v = control.app("shop")
    keys = ("active", "candidate", "weight", "previous", "draining", "paused", "generation")
    return {k: v[k] for k in keys}  # type: ignore[literal-required]


def test_ten_upgrades_in_a_row_fail_no_request_and_keep_the_switch_state(
    site: Site, tmp_path: Path
) -> None:
    builds = [REPO, second_build(tmp_path, f"{__version__}+b")]
    first = site.start(REPO, takeover=False)
    site.wait_serving(first)
    ctl = site.control
    # A tunnel on red (the color about to drain), then: blue active, green canary at 10 %,
    # red draining (its tunnel keeps the drain going across the hand-overs).
    ctl.set("shop", "red", 100)
    red_tunnel = Echo(site.http_port).open()
    ctl.set("shop", "blue", 100)
    ctl.drain("shop", "red", timeout=600)
    ctl.set("shop", "green", 10)
    before = switch_state(ctl)
    assert before["candidate"] == "green" and before["weight"] == 10
    assert list(before["draining"]) == ["red"]

    tls = ssl.create_default_context(cafile=str(site.ca))
    clients = [
        Traffic(site.http_port, tls=None, keep_alive=True),
        Traffic(site.https_port, tls=tls, keep_alive=True),
        Traffic(site.http_port, tls=None, keep_alive=False),
        Traffic(site.https_port, tls=tls, keep_alive=False),
    ]
    echo = Echo(site.http_port).open()
    for c in clients:
        c.start()
    time.sleep(0.5)
    versions = []
    first_handover = time.monotonic()
    # Red's drain lives on in the first process (its tunnel) until that one's grace ends,
    # then it ends like any drain with nothing left in flight.
    drained = {**before, "draining": {}, "generation": before["generation"] + 1}
    while_first_served = 0
    for i in range(10):
        state = switch_state(ctl)
        proc = site.start(builds[(i + 1) % 2], takeover=True)
        view = site.wait_serving(proc)
        versions.append(view["version"])
        assert view["took_over"]["from_pid"] == site.procs[-2].pid
        after = switch_state(ctl)
        if first.popen.poll() is None:
            assert after == state == before, f"after hand-over {i + 1}"
            while_first_served += 1
        else:
            assert after in (state, drained), f"after hand-over {i + 1}"
        time.sleep(0.3)
    assert while_first_served >= 4
    assert versions == [f"{__version__}+b", __version__] * 5
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(15)
    # The WebSocket (and the red tunnel) belong to the first process: closed at its grace.
    echo.join(GRACE + 15)
    red_tunnel.join(5)

    assert [c.failures for c in clients] == [[], [], [], []]
    assert all(c.ok > 50 for c in clients), [c.ok for c in clients]
    # Keep-alive clients moved with the hand-overs (a close on the next response each time).
    assert clients[0].connections > 5 and clients[1].connections > 5
    assert echo.error is None and echo.close_code == 1001
    assert echo.closed_at is not None and echo.closed_at - first_handover >= GRACE - 1
    assert red_tunnel.close_code == 1001
    # Every old process stepped back and exited cleanly; each logged the hand-over's id.
    for old, new in zip(site.procs, site.procs[1:], strict=False):
        assert old.popen.wait(15) == 0, old.text()
        hid = next(
            line.split("hand-over ")[1].split(":")[0]
            for line in new.text().splitlines()
            if "received" in line and "hand-over" in line
        )
        assert f"hand-over {hid}: pid {new.pid}" in old.text()
        assert f"hand-over {hid}: done" in old.text()
    # The red drain ended only once the first process had closed red's tunnel (on the
    # drain supervisor's next look after that process exited).
    deadline = time.monotonic() + 10
    while "red" in ctl.app("shop")["draining"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "red" not in ctl.app("shop")["draining"]


def test_a_bad_new_config_is_refused_and_the_running_process_keeps_serving(site: Site) -> None:
    old = site.start(REPO, takeover=False)
    site.wait_serving(old)
    before = switch_state(site.control)
    bad = dict(site.conf, shutdown_grace="soon")
    bad_path = site.tmp / "bad.yml"
    bad_path.write_text(yaml.safe_dump(bad))
    new = site.start(REPO, takeover=True, config=bad_path)
    assert new.popen.wait(30) == 2
    assert "shutdown_grace" in new.text()
    # A config that validates but cannot start (a certificate file is missing).
    broken = dict(site.conf, tls={"certificates": [{"cert": "/nonexistent.pem", "key": "/x"}]})
    broken_path = site.tmp / "broken.yml"
    broken_path.write_text(yaml.safe_dump(broken))
    new = site.start(REPO, takeover=True, config=broken_path)
    assert new.popen.wait(30) == 1
    assert "the running edgeproxy keeps serving" in new.text()
    assert "/nonexistent.pem" in new.text()
    assert "did not start" in old.text() and "keeps serving" in old.text()
    assert site.control._json("GET", "/v1/process")["pid"] == old.pid
    assert switch_state(site.control) == before
    assert site.control.set("shop", "green", 10)["weight"] == 10  # not frozen any more
    conn = http.client.HTTPConnection("127.0.0.1", site.http_port, timeout=5)
    conn.request("GET", "/", headers={"Host": HOST})
    assert conn.getresponse().status == 200
    conn.close()


# A new process that dies mid-way, played by a small script driving the protocol by hand.
DIE_AFTER_OFFER = """
import asyncio, os, signal, sys
from pathlib import Path
from edgeproxy.handover import Taker

async def main():
    taker = await Taker.connect(Path(sys.argv[1]))
    print("received", sum(len(s) for s in taker.sockets.values()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""

DIE_AFTER_GO = """
import asyncio, os, signal, socket, sys
from pathlib import Path
from edgeproxy.handover import Taker, _expect, _send

async def main():
    control = Path(sys.argv[1])
    taker = await Taker.connect(control)
    # Bind a control socket aside and move it into place, as a real new process does.
    aside = control.with_name("aside.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(aside))
    s.listen()
    _send(taker.channel, "ready", pid=os.getpid(), version="x")
    await _expect(taker.channel, "go", 10)
    os.replace(aside, control)
    print("moved the control socket", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.parametrize(("script", "stage"), [(DIE_AFTER_OFFER, "start"), (DIE_AFTER_GO, "go")])
def test_a_new_process_killed_during_the_hand_over_leaves_the_old_one_serving(
    site: Site, script: str, stage: str
) -> None:
    old = site.start(REPO, takeover=False)
    site.wait_serving(old)
    before = switch_state(site.control)
    done = subprocess.run(
        [sys.executable, "-c", script, site.conf["control"]["socket"]],
        cwd=REPO, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    deadline = time.monotonic() + 15
    while "keeps serving" not in old.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "failed" in old.text() and "keeps serving" in old.text(), old.text()
    assert {"start": "did not start", "go": "did not take over"}[stage] in old.text()
    # The control socket answers from the old process again, unfrozen; requests are served.
    assert site.control._json("GET", "/v1/process")["pid"] == old.pid
    assert switch_state(site.control) == before
    assert site.control.set("shop", "green", 10)["weight"] == 10
    for port, tls in ((site.http_port, None), (site.https_port, True)):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        if tls:
            ctx = ssl.create_default_context(cafile=str(site.ca))
            conn.sock = ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=HOST
            )
        conn.request("GET", "/", headers={"Host": HOST})
        assert conn.getresponse().status == 200
        conn.close()
    # And a real hand-over still works afterwards.
    new = site.start(REPO, takeover=True)
    assert site.wait_serving(new)["took_over"]["from_pid"] == old.pid


def detached(argv: list[str], tmp_path: Path) -> tuple[int, str, str]:
    out, err = tmp_path / "reload.out", tmp_path / "reload.err"
    with out.open("w") as o, err.open("w") as e:
        code = subprocess.run(
            argv, cwd=REPO, stdout=o, stderr=e, timeout=60, check=False
        ).returncode
    return code, out.read_text(), err.read_text()


def test_systemd_reload_with_detach_moves_the_units_main_pid_to_the_new_process(
    site: Site, tmp_path: Path
) -> None:
    # systemd's side of Type=notify + NotifyAccess=all: a datagram socket named by NOTIFY_SOCKET.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    detached_pid: int | None = None  # started by --detach: not one of site.procs
    try:
        old = site.start(REPO, takeover=False)
        assert notify.recv(4096) == b"READY=1"
        site.wait_serving(old)
        argv = [sys.executable, "-m", "edgeproxy", "serve", "--config", str(site.path)]
        # ExecReload=edgeproxy serve --config FILE --takeover --detach (its output goes to
        # files, as to the journal: the detached server keeps writing to them)
        code, out, err = detached(
            [*argv, "--takeover", "--detach", "--log-format", "text"], tmp_path
        )
        assert code == 0, err
        view = site.control._json("GET", "/v1/process")
        detached_pid = int(view["pid"])
        assert view["pid"] != old.pid and view["took_over"]["from_pid"] == old.pid
        assert f"pid {view['pid']} serves (hand-over {view['took_over']['id']})" in out
        assert notify.recv(4096) == f"MAINPID={view['pid']}\nREADY=1".encode()
        assert old.popen.wait(15) == 0
        # A reload that cannot happen says why and exits 1; the new process keeps serving.
        broken = dict(site.conf, tls={"certificates": [{"cert": "/nonexistent.pem", "key": "/x"}]})
        broken_path = tmp_path / "broken.yml"
        broken_path.write_text(yaml.safe_dump(broken))
        argv[-1] = str(broken_path)
        code, out, err = detached(
            [*argv, "--takeover", "--detach", "--log-format", "text"], tmp_path
        )
        assert code == 1
        assert "/nonexistent.pem" in err and "keeps serving" in err
        assert site.control._json("GET", "/v1/process")["pid"] == view["pid"]
    finally:
        del os.environ["NOTIFY_SOCKET"]
        notify.close()
        if detached_pid is not None:
            os.kill(detached_pid, signal.SIGTERM)
