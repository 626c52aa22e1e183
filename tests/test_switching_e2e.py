"""Blue/green switching end to end: real proxy, real backends, real control socket."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from websockets.sync.client import connect

from switchctl.client import ControlClient, ControlError
from tests.proxy_fixtures import http_get, raw_request, site

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"


def two_colors(backend, edge, **app: object):
    blue, green = backend("blue"), backend("green")
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    **app,
                }
            },
            "sites": [site("shop")],
        }
    )
    return e, blue, green, ControlClient(e.socket_path)


class Load:
    """Threads sending requests (keep-alive and new connections) and recording every answer."""

    def __init__(self, port: int, threads: int = 6) -> None:
        self.port = port
        self.stop = threading.Event()
        self.results: list[tuple[float, float, int, str]] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(i % 2 == 0,), daemon=True)
            for i in range(threads)
        ]

    def _run(self, keep_alive: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if conn is None or not keep_alive:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            t0 = time.monotonic()
            try:
                conn.request("GET", "/", headers={"Host": "a.test"})
                r = conn.getresponse()
                body = r.read().decode().strip()
                t1 = time.monotonic()
                with self.lock:
                    self.results.append((t0, t1, r.status, body))
            except Exception as e:  # every failure is counted, none hidden
                with self.lock:
                    self.errors.append(repr(e))
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def allowed(view: dict) -> set[str]:
    return {c for c, w in view["weights"].items() if w > 0}


def test_flipping_colors_under_load_loses_no_request_and_respects_the_weights(backend, edge):
    e, _, _, ctl = two_colors(backend, edge)
    # (time the change was requested, time its reply arrived, colors allowed after it)
    history: list[tuple[float, float, set[str]]] = [(0.0, 0.0, {"blue"})]
    with Load(e.http_port) as load:
        time.sleep(0.2)
        for i in range(100):
            color = "green" if i % 2 == 0 else "blue"
            t = time.monotonic()
            view = ctl.set("shop", color, 100)
            history.append((t, time.monotonic(), allowed(view)))
            time.sleep(0.005)
        assert history[-1][2] == {"blue"}
        for weight in (0, 10, 50, 100):  # a canary walk
            t = time.monotonic()
            view = ctl.set("shop", "green", weight)
            history.append((t, time.monotonic(), allowed(view)))
            time.sleep(0.2)
    assert load.errors == []
    assert len(load.results) > 300
    statuses = Counter(r[2] for r in load.results)
    assert statuses == {200: len(load.results)}
    # Every response came from a color that was allowed at some moment while it was in flight.
    # State k can be in force from when it was requested until the reply to k+1.
    for t0, t1, _, body in load.results:
        ok: set[str] = set()
        for k, (tk, _, colors) in enumerate(history):
            until = history[k + 1][1] if k + 1 < len(history) else float("inf")
            if tk <= t1 and until >= t0:
                ok |= colors
        assert body in ok, (t0, t1, body)


def test_a_slow_request_and_a_websocket_on_blue_finish_while_blue_drains_and_new_requests_go_green(
    backend, edge
):
    e, blue, _, ctl = two_colors(backend, edge)
    slow: dict[str, object] = {}

    def slow_request() -> None:
        r = http_get(e.http_port, "/slow")
        slow["status"], slow["body"] = r.status, r.body

    t = threading.Thread(target=slow_request)
    t.start()
    sock = socket.create_connection(("127.0.0.1", e.http_port))
    with connect(f"ws://a.test:{e.http_port}/ws", sock=sock) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "blue: before"
        deadline = time.monotonic() + 5
        while (
            ctl.app("shop")["colors"]["blue"].get("in_flight", 0) < 1
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        ctl.set("shop", "green", 100)
        view = ctl.drain("shop", "blue", 30)
        assert "blue" in view["draining"]
        for _ in range(10):
            assert http_get(e.http_port, "/").body == b"green\n"
        ws.send("during drain")
        assert ws.recv(timeout=5) == "blue: during drain"
        assert "blue" in ctl.app("shop")["draining"]  # held by the slow request and the tunnel
        blue.release_slow()
        t.join(timeout=10)
        assert slow == {"status": 200, "body": b"blue slow done\n"}
        assert "blue" in ctl.app("shop")["draining"]  # the tunnel still runs
    deadline = time.monotonic() + 5
    while "blue" in ctl.app("shop")["draining"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctl.app("shop")["draining"] == {}


def test_a_drain_deadline_cuts_what_is_still_running_with_503(backend, edge):
    e, _, _, ctl = two_colors(backend, edge)
    result: dict[str, object] = {}

    def slow_request() -> None:
        r = http_get(e.http_port, "/slow")
        result["status"] = r.status

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 5
    while ctl.app("shop")["colors"]["blue"].get("in_flight", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    ctl.set("shop", "green", 100)
    ctl.drain("shop", "blue", 0.3)
    t.join(timeout=10)
    assert result == {"status": 503}


def test_paused_requests_wait_and_are_released_in_order_on_resume(backend, edge):
    e, blue, _, ctl = two_colors(backend, edge)
    ctl.pause("shop")
    done: list[int] = []

    def req(i: int) -> None:
        http_get(e.http_port, f"/p{i}")
        done.append(i)

    threads = []
    for i in range(3):
        th = threading.Thread(target=req, args=(i,))
        th.start()
        threads.append(th)
        time.sleep(0.1)
    time.sleep(0.2)
    assert done == []
    assert blue.seen == []
    ctl.resume("shop")
    for th in threads:
        th.join(timeout=5)
    assert [r.path for r in blue.seen] == ["/p0", "/p1", "/p2"]


def test_a_paused_request_gets_503_after_the_maximum_wait(backend, edge):
    e, _, _, ctl = two_colors(backend, edge, pause_max_wait=0.3)
    ctl.pause("shop")
    r = http_get(e.http_port, "/")
    assert r.status == 503
    assert r.header("Retry-After")


def test_a_tester_override_header_forces_a_color_and_the_canary_cookie_is_sticky(backend, edge):
    e, _, _, ctl = two_colors(backend, edge)
    assert http_get(e.http_port, "/", **{"X-Edgeproxy-Color": "green"}).body == b"green\n"
    ctl.set("shop", "green", 50)
    r = http_get(e.http_port, "/")
    cookie = r.header("Set-Cookie")
    assert cookie is not None and cookie.startswith("edgeproxy_canary=")
    color = r.body.decode().strip()
    value = cookie.split(";")[0]
    for _ in range(20):
        r = http_get(e.http_port, "/", Cookie=value)
        assert r.body.decode().strip() == color


def test_the_canary_split_over_ten_thousand_fresh_clients_is_within_one_point(backend, edge):
    e, _, _, ctl = two_colors(backend, edge)
    ctl.set("shop", "green", 10)
    greens = 0
    n = 10_000
    for i in range(n):
        # Fresh clients from distinct loopback addresses (all of 127/8 is local).
        src = f"127.{1 + i // 65536}.{(i // 256) % 256}.{i % 256 or 1}"
        data = raw_request(e.http_port, GET_CLOSE, source=src)
        greens += data.endswith(b"green\n")
    share = greens / n * 100
    assert 9.0 <= share <= 11.0, share


def write_config(tmp_path: Path, blue: str, green: str, port: int) -> Path:
    conf = {
        "listen": {"http": f"127.0.0.1:{port}"},
        "control": {"socket": str(tmp_path / "ctl.sock")},
        "state_file": str(tmp_path / "state.json"),
        "access_log": {"enabled": False},
        "apps": {
            "shop": {"colors": {"blue": {"upstreams": [blue]}, "green": {"upstreams": [green]}}}
        },
        "sites": [site("shop")],
    }
    path = tmp_path / "edgeproxy.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_proxy(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            # The port queues connections as soon as it is bound; the control socket
            # comes once the proxy is ready to serve.
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            if (config.parent / "ctl.sock").exists():
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no output")


def test_after_sigkill_a_restarted_proxy_serves_the_same_color_from_its_first_request(
    tmp_path, backend
):
    blue, green = backend("blue"), backend("green")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    proc = start_proxy(config, port)
    try:
        ControlClient(tmp_path / "ctl.sock").set("shop", "green", 100)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    proc = start_proxy(config, port)
    try:
        assert http_get(port, "/").body == b"green\n"
        view = ControlClient(tmp_path / "ctl.sock").app("shop")
        assert view["active"] == "green"
        assert view["previous"] == "blue"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_a_corrupt_state_file_is_moved_aside_and_the_default_color_serves(tmp_path, backend):
    blue, green = backend("blue"), backend("green")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    (tmp_path / "state.json").write_text('{"version": 1, "apps": {"shop": ')
    proc = start_proxy(config, port)
    try:
        assert http_get(port, "/").body == b"blue\n"
        assert list(tmp_path.glob("state.json.corrupt-*"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        err = proc.stderr.read().decode() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    assert "corrupt" in err.lower() or "moved it aside" in err


@pytest.mark.parametrize("signame", ["SIGTERM"])
def test_sigterm_lets_an_in_flight_request_finish_before_exiting(tmp_path, backend, signame):
    blue, green = backend("blue"), backend("green")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    proc = start_proxy(config, port)
    result: dict[str, object] = {}

    def slow() -> None:
        r = http_get(port, "/sleep?s=0.5")
        result["status"], result["body"] = r.status, r.body

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    t.join(timeout=10)
    assert proc.wait(timeout=10) == 0
    if proc.stderr:
        proc.stderr.close()
    assert result == {"status": 200, "body": b"blue slept\n"}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_visitors_of_a_canary_with_no_healthy_upstream_are_served_by_the_active_color(
    backend, edge
):
    blue = backend("blue")
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [f"http://127.0.0.1:{free_port()}"]},  # dead
                    },
                    "health": {"interval": 0.2, "timeout": 0.2, "unhealthy_threshold": 1},
                }
            },
            "sites": [site("shop")],
        }
    )
    ctl = ControlClient(e.socket_path)
    ctl.set("shop", "green", 50, force=True)
    answers = Counter()
    for i in range(40):
        data = raw_request(e.http_port, GET_CLOSE, source=f"127.0.9.{i + 1}")
        answers[data.split(b"\r\n", 1)[0] + b" " + data.rsplit(b"\r\n\r\n", 1)[-1].strip()] += 1
    assert answers == {b"HTTP/1.1 200 OK blue": 40}


def test_a_config_reload_adds_a_site_without_dropping_a_connection_and_a_bad_one_changes_nothing(
    tmp_path, backend
):
    blue, green, search = backend("blue"), backend("green"), backend("search")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    proc = start_proxy(config, port)
    ctl = ControlClient(tmp_path / "ctl.sock")
    try:
        ctl.set("shop", "green", 100)
        before = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        before.request("GET", "/", headers={"Host": "a.test"})
        assert before.getresponse().read() == b"green\n"
        conf = yaml.safe_load(config.read_text())
        conf["sites"].append(
            {
                "hosts": ["search.test"],
                "https_redirect": False,
                "routes": [{"path": "/", "upstream": search.url}],
            }
        )
        config.write_text(yaml.safe_dump(conf))
        result = ctl.reload_config()
        assert result["sites"] == 2
        assert http_get(port, "/", host="search.test").body == b"search\n"
        # The connection opened before the reload still works, and the switch state held.
        before.request("GET", "/", headers={"Host": "a.test"})
        assert before.getresponse().read() == b"green\n"
        assert ctl.app("shop")["active"] == "green"
        # A bad config is refused with the problem named; the running one stays.
        conf["sites"][1]["routes"][0]["bogus"] = 1
        config.write_text(yaml.safe_dump(conf))
        with pytest.raises(ControlError) as err:
            ctl.reload_config()
        assert err.value.status == 409
        assert "bogus" in str(err.value)
        conf["sites"][1]["routes"][0].pop("bogus")
        conf["listen"]["http"] = "127.0.0.1:1"
        config.write_text(yaml.safe_dump(conf))
        with pytest.raises(ControlError, match="restart edgeproxy"):
            ctl.reload_config()
        assert http_get(port, "/", host="search.test").body == b"search\n"
        before.request("GET", "/", headers={"Host": "a.test"})
        assert before.getresponse().read() == b"green\n"
        before.close()
        # SIGHUP reloads too (like nginx): a third host appears.
        conf["listen"]["http"] = f"127.0.0.1:{port}"
        conf["sites"][1]["hosts"].append("find.test")
        config.write_text(yaml.safe_dump(conf))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while http_get(port, "/", host="find.test").status != 200:
            if time.monotonic() > deadline:
                proc.terminate()
                raise AssertionError(proc.stderr.read().decode()[-3000:] if proc.stderr else "")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def test_a_restart_with_a_future_state_file_and_a_bad_record_still_serves_each_saved_color(
    tmp_path, backend
):
    blue, green = backend("blue"), backend("green")
    port = free_port()
    config = write_config(tmp_path, blue.url, green.url, port)
    conf = yaml.safe_load(config.read_text())
    conf["apps"]["blog"] = {"colors": {"a": {"upstreams": [blue.url]}}}
    conf["sites"].append(site("blog", hosts=("blog.test",)))
    config.write_text(yaml.safe_dump(conf))
    (tmp_path / "state.json").write_text(
        json.dumps(
            {
                "version": 2,
                "apps": {
                    "shop": {"colors": ["blue", "green"], "active": "green", "generation": 4},
                    "blog": {"colors": ["a"], "active": "gone", "generation": 2},
                },
            }
        )
    )
    proc = start_proxy(config, port)
    try:
        assert http_get(port, "/").body == b"green\n"
        assert http_get(port, "/", host="blog.test").body == b"blue\n"
        ctl = ControlClient(tmp_path / "ctl.sock")
        shop, blog = ctl.app("shop"), ctl.app("blog")
        assert (shop["active"], shop["generation"]) == ("green", 4)
        assert "version 2" in shop["set_aside"][0]
        assert (blog["active"], blog["generation"]) == ("a", 3)
        assert "active color 'gone'" in blog["set_aside"][1]
        assert 'edgeproxy_state_records_rejected{app="blog"} 2' in ctl.metrics()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
