"""Config reloads against a real edgeproxy subprocess: open connections, the switch state.

The proxy runs as `python -m edgeproxy serve` so that SIGHUP reloads exactly as
in production; certificates are trustme-issued; clients are real HTTP/1.1
keep-alive connections (plain and TLS, with SNI).
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from switchctl.client import ControlClient, ControlError
from tests.proxy_fixtures import http_get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def issue(ca: trustme.CA, directory: Path, *names: str) -> dict[str, str]:
    """A leaf for `names` written as fullchain/privkey files under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*names)
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return {"cert": str(cert), "key": str(key)}


@dataclass
class Proxy:
    """An edgeproxy subprocess serving `path` (rewrite it, then reload)."""

    proc: subprocess.Popen[bytes]
    path: Path
    conf: dict[str, Any]
    http_port: int
    https_port: int
    ca: Path
    log: Path
    control: ControlClient = field(init=False)

    def __post_init__(self) -> None:
        self.control = ControlClient(self.conf["control"]["socket"])

    def write(self) -> None:
        self.path.write_text(yaml.safe_dump(self.conf))

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]


def start(tmp_path: Path, conf: dict[str, Any], ca: Path) -> Proxy:
    http_port, https_port = free_port(), free_port()
    conf = {
        "listen": {"http": f"127.0.0.1:{http_port}", "https": f"127.0.0.1:{https_port}"},
        "control": {"socket": str(tmp_path / "ctl.sock")},
        "state_file": str(tmp_path / "state.json"),
        "access_log": {"enabled": False},
        **conf,
    }
    path = tmp_path / "edgeproxy.yml"
    log = tmp_path / "edgeproxy.log"
    path.write_text(yaml.safe_dump(conf))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    proxy = Proxy(proc, path, conf, http_port, https_port, ca, log)
    deadline = time.monotonic() + 15
    while True:
        try:
            # The port accepts (into its queue) as soon as it is bound; the control
            # socket comes once the proxy is ready to serve.
            socket.create_connection(("127.0.0.1", https_port), timeout=0.2).close()
            if not Path(conf["control"]["socket"]).exists():
                raise OSError("not ready yet")
            return proxy
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError(proxy.log_tail()) from None
            time.sleep(0.05)


def stop(proxy: Proxy) -> None:
    proxy.proc.terminate()
    try:
        proxy.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proxy.proc.kill()
        proxy.proc.wait()


class KeepAlive:
    """One keep-alive connection (plain, or TLS with an SNI name) sending `Host: host`."""

    def __init__(self, port: int, host: str, *, sni: str | None = None, ca: Path | None = None):
        self.port, self.host, self.sni = port, host, sni
        self.ctx = ssl.create_default_context(cafile=str(ca)) if sni else None
        self.opened = 0
        self.conn = self._open()

    def _open(self) -> http.client.HTTPConnection:
        self.opened += 1
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        if self.ctx is not None:
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            conn.sock = self.ctx.wrap_socket(raw, server_hostname=self.sni)
        return conn

    def get(self, path: str = "/") -> tuple[int, bytes]:
        """One request; the connection is reopened only if the server closed it."""
        self.conn.request("GET", path, headers={"Host": self.host})
        r = self.conn.getresponse()
        body = r.read()
        if r.will_close:
            self.reopen()
        return r.status, body

    def reopen(self) -> None:
        self.conn.close()
        self.conn = self._open()

    def close(self) -> None:
        self.conn.close()


@dataclass
class Client:
    name: str
    conn: KeepAlive
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    done: int = 0


class Clients:
    """Threads, each sending requests back to back on its own keep-alive connection."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in clients]

    def _run(self, c: Client) -> None:
        while not self.stop.is_set():
            try:
                status, _ = c.conn.get()
                c.statuses[status] += 1
            except Exception as e:  # every failure is counted, none hidden
                c.errors.append(repr(e))
                c.conn.reopen()
            c.done += 1

    def wait_for_requests(self, n: int, timeout: float = 10) -> None:
        """Until every client has finished `n` more requests than now."""
        marks = {c.name: c.done + n for c in self.clients}
        deadline = time.monotonic() + timeout
        while any(c.done < marks[c.name] for c in self.clients):
            assert time.monotonic() < deadline, "a client stopped making progress"
            time.sleep(0.005)

    def __enter__(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        for c in self.clients:
            c.conn.close()


@pytest.fixture
def three_certificates(tmp_path: Path) -> tuple[list[dict[str, str]], Path]:
    ca = trustme.CA()
    certs = [
        issue(ca, tmp_path / "a", "a.test"),
        issue(ca, tmp_path / "bc", "b.test", "c.test"),
        issue(ca, tmp_path / "w", "*.w.test"),
    ]
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    return certs, ca_file


def test_keep_alive_clients_get_only_2xx_across_20_reloads_by_api_and_sighup(
    tmp_path, backend, three_certificates
):
    certs, ca = three_certificates
    blue, static = backend("blue"), backend("static")
    proxy = start(
        tmp_path,
        {
            "tls": {"certificates": certs, "reload_poll_seconds": 0},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]}}}},
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": "shop"}],
                },
                {
                    "hosts": ["b.test", "c.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": "shop"}],
                },
                {
                    "hosts": ["*.w.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "upstream": static.url}],
                },
            ],
        },
        ca,
    )
    try:
        https, plain = proxy.https_port, proxy.http_port
        clients = [
            Client("tls a.test", KeepAlive(https, "a.test", sni="a.test", ca=ca)),
            Client("tls b.test", KeepAlive(https, "b.test", sni="b.test", ca=ca)),
            Client("tls sni b.test host c.test", KeepAlive(https, "c.test", sni="b.test", ca=ca)),
            Client(
                "tls sni x.w.test host y.w.test",
                KeepAlive(https, "y.w.test", sni="x.w.test", ca=ca),
            ),
            Client("http a.test", KeepAlive(plain, "a.test")),
            Client("http c.test", KeepAlive(plain, "c.test")),
            Client("http z.w.test", KeepAlive(plain, "z.w.test")),
        ]
        with Clients(clients) as load:
            load.wait_for_requests(5)
            for i in range(20):
                # Each reload really changes the config: a new host appears.
                proxy.conf["sites"][0]["hosts"].append(f"r{i}.test")
                proxy.write()
                if i % 2 == 0:
                    assert proxy.control.reload_config()["ok"] is True
                else:
                    proxy.proc.send_signal(signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while http_get(plain, "/", host=f"r{i}.test").status != 200:
                        assert time.monotonic() < deadline, proxy.log_tail()
                        time.sleep(0.02)
                load.wait_for_requests(3)
        for c in clients:
            assert c.errors == [], (c.name, c.errors[:3])
            assert set(c.statuses) == {200}, (c.name, c.statuses)
            assert c.conn.opened == 1, f"{c.name}: the proxy closed its keep-alive connection"
        assert sum(sum(c.statuses.values()) for c in clients) > 20 * len(clients) * 3
        assert proxy.log_tail().count("config reloaded") >= 1
    finally:
        stop(proxy)


def test_a_reload_that_moves_a_host_to_another_site_answers_421_for_it_on_open_connections(
    tmp_path, backend, three_certificates
):
    certs, ca = three_certificates
    blue = backend("blue")
    route = [{"path": "/", "app": "shop"}]
    proxy = start(
        tmp_path,
        {
            "tls": {"certificates": certs, "reload_poll_seconds": 0},
            "apps": {"shop": {"colors": {"blue": {"upstreams": [blue.url]}}}},
            "sites": [
                {"hosts": ["a.test"], "https_redirect": False, "routes": route},
                {"hosts": ["b.test", "c.test"], "https_redirect": False, "routes": route},
            ],
        },
        ca,
    )
    try:
        https = proxy.https_port
        # One certificate covers b.test and c.test: a browser reuses the b.test
        # connection for c.test, and while both are one site that is served.
        b_for_c = KeepAlive(https, "c.test", sni="b.test", ca=ca)
        b_for_b = KeepAlive(https, "b.test", sni="b.test", ca=ca)
        a_for_a = KeepAlive(https, "a.test", sni="a.test", ca=ca)
        assert b_for_c.get()[0] == 200
        assert b_for_b.get()[0] == 200
        assert a_for_a.get()[0] == 200
        # c.test becomes a site of its own: the b.test connection no longer serves it.
        proxy.conf["sites"][1]["hosts"] = ["b.test"]
        proxy.conf["sites"].append({"hosts": ["c.test"], "https_redirect": False, "routes": route})
        proxy.write()
        proxy.control.reload_config()
        assert b_for_c.get()[0] == 421
        # What the new config still serves on those connections is answered as before.
        assert b_for_b.get()[0] == 200
        assert a_for_a.get()[0] == 200
        assert (b_for_b.opened, a_for_a.opened) == (1, 1)
        # A fresh connection for c.test with its own name is served.
        c_for_c = KeepAlive(https, "c.test", sni="c.test", ca=ca)
        assert c_for_c.get()[0] == 200
        for c in (b_for_c, b_for_b, a_for_a, c_for_c):
            c.close()
    finally:
        stop(proxy)


def switchctl(proxy: Proxy, *args: str) -> subprocess.CompletedProcess[str]:
    sock = proxy.conf["control"]["socket"]
    return subprocess.run(
        [sys.executable, "-m", "switchctl", "--socket", sock, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def audit_lines(proxy: Proxy) -> list[dict[str, Any]]:
    """The audit logger's records from the proxy's log (one JSON object per line)."""
    records = [json.loads(line) for line in proxy.log.read_text().splitlines()]
    return [json.loads(r["msg"]) for r in records if r["logger"] == "edgeproxy.audit"]


def test_a_reload_that_drops_the_active_color_is_refused_unless_forced_and_health_checked(
    tmp_path, backend, three_certificates
):
    certs, ca = three_certificates
    blue, green = backend("blue"), backend("green")
    proxy = start(
        tmp_path,
        {
            "tls": {"certificates": certs, "reload_poll_seconds": 0},
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    "health": {"interval": 0.2, "timeout": 0.5, "healthy_threshold": 1},
                }
            },
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": "shop"}],
                },
            ],
        },
        ca,
    )
    ctl, plain = proxy.control, proxy.http_port
    try:
        for color in ("green", "blue", "green", "green"):
            ctl.set("shop", color, 100)
        assert (ctl.app("shop")["active"], ctl.app("shop")["generation"]) == ("green", 4)
        # The new config has no green: refused, by the API and by SIGHUP; green still serves.
        del proxy.conf["apps"]["shop"]["colors"]["green"]
        proxy.write()
        with pytest.raises(ControlError) as refused:
            ctl.reload_config()
        assert refused.value.status == 409
        assert (
            "config reload would drop green, which is active for app shop: "
            "`switchctl --app shop set blue` first, or reload with --force"
        ) in refused.value.message
        proxy.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while proxy.log_tail().count("would drop green") < 2:
            assert time.monotonic() < deadline, proxy.log_tail()
            time.sleep(0.02)
        assert http_get(plain, "/").body == b"green\n"
        # Forced, onto a blue that fails its check: refused too, naming why.
        dead = f"http://127.0.0.1:{free_port()}"
        proxy.conf["apps"]["shop"]["colors"]["blue"]["upstreams"] = [dead]
        proxy.write()
        out = switchctl(proxy, "config", "reload", "--force")
        assert out.returncode == 1, out
        assert "cannot reload the config for shop: blue is unhealthy" in out.stderr + out.stdout
        assert "cannot connect" in out.stderr + out.stdout
        assert http_get(plain, "/").body == b"green\n"
        # Forced, onto a healthy blue: through, audited with before/after; the generation rises.
        proxy.conf["apps"]["shop"]["colors"]["blue"]["upstreams"] = [blue.url]
        proxy.write()
        out = switchctl(proxy, "config", "reload", "--force")
        assert out.returncode == 0, out
        assert "shop: active=green gen=4 → active=blue gen=5" in out.stdout
        assert http_get(plain, "/").body == b"blue\n"
        view = ctl.app("shop")
        assert (view["active"], view["generation"], list(view["colors"])) == ("blue", 5, ["blue"])
        reloads = [a for a in audit_lines(proxy) if a["verb"] == "config reload"]
        assert [a["result"] for a in reloads] == ["refused", "refused", "ok"]
        assert {k: reloads[-1][k] for k in ("app", "request", "old", "new")} == {
            "app": "shop",
            "request": {"force": True},
            "old": "active=green gen=4",
            "new": "active=blue gen=5",
        }
        # Green configured again: the switch stays on blue and the generation never goes down.
        proxy.conf["apps"]["shop"]["colors"]["green"] = {"upstreams": [green.url]}
        proxy.write()
        ctl.reload_config()
        view = ctl.app("shop")
        assert (view["active"], view["generation"]) == ("blue", 6)
        assert http_get(plain, "/").body == b"blue\n"
    finally:
        stop(proxy)
