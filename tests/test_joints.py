"""The seams between HTTP/2, the hand-over, the shared switch state and the one change path.

Each feature has its own tests; these keep connections (HTTP/1.1 over TLS and
HTTP/2) open across what another feature does — a hand-over to a new process,
a config reload, a switch and a drain, a change made through another node
sharing Redis — and check that the next request on them still works. Real
`edgeproxy serve` processes, a real redis-server, real TLS clients.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
import yaml
from websockets.sync.client import connect

from switchctl.client import ControlClient, ControlError
from tests.h2_fixtures import H2Client, h2_edge_config
from tests.process_fixtures import EdgeProcess
from tests.proxy_fixtures import Backend, site
from tests.redis_fixtures import RedisServer
from tests.test_handover import GRACE, HOST, REPO, Proc, Site, free_port, switch_state

pytestmark = pytest.mark.slow


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def read_goaway(client: H2Client, timeout: float = 15.0) -> None:
    """Read (streams stay open) until the server's GOAWAY has arrived."""
    deadline = time.monotonic() + timeout
    while client.goaway_code is None and not client.closed:
        assert time.monotonic() < deadline, "no GOAWAY"
        client.read(0.2)


def config_path(proc: EdgeProcess) -> Path:
    args = [str(a) for a in proc.popen.args]  # type: ignore[union-attr]
    return Path(args[args.index("--config") + 1])


class KeepAliveTLS:
    """One HTTP/1.1 keep-alive connection over TLS, never reopened."""

    def __init__(self, port: int, ca: Path, host: str = "a.test") -> None:
        self.host = host
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ctx = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.conn.sock = self.sock

    def get(self, path: str = "/") -> tuple[int, bytes]:
        assert self.conn.sock is self.sock, "the connection was reopened"
        self.conn.request("GET", path, headers={"Host": self.host})
        r = self.conn.getresponse()
        body = r.read()
        assert not r.will_close, "the proxy closed the keep-alive connection"
        return r.status, body

    def close(self) -> None:
        self.conn.close()


# --- 1. HTTP/2 across a hand-over ----------------------------------------------------------


@dataclass
class Handover:
    site: Site
    colors: dict[str, Backend]

    def first(self) -> Proc:
        """Start the first process (no hand-over) and wait until it serves."""
        proc = self.site.start(REPO, takeover=False)
        self.site.wait_serving(proc)
        return proc


@pytest.fixture
def handover(
    tmp_path: Path, backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> Iterator[Callable[..., Handover]]:
    """`handover(**extra_conf)`: test_handover's site (blue, green, red; TLS for example.test),
    with the backends at hand (to release a slow request)."""
    made: list[Site] = []

    def make(**extra: Any) -> Handover:
        colors = {c: backend(c) for c in ("blue", "green", "red")}
        conf: dict[str, Any] = {
            "listen": {"http": f"127.0.0.1:{free_port()}", "https": f"127.0.0.1:{free_port()}"},
            "control": {"socket": str(tmp_path / "ctl.sock")},
            "state_file": str(tmp_path / "state.json"),
            "access_log": {"enabled": False},
            "shutdown_grace": GRACE,
            "tls": {
                "certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]
            },
            "apps": {
                "shop": {
                    "colors": {c: {"upstreams": [b.url]} for c, b in colors.items()},
                    "health": {"enabled": False},
                }
            },
            "sites": [site("shop", (HOST,))],
            **extra,
        }
        path = tmp_path / "edgeproxy.yml"
        path.write_text(yaml.safe_dump(conf))
        s = Site(tmp_path, conf, path, tls_files["ca"])
        made.append(s)
        return Handover(s, colors)

    yield make
    for s in made:
        s.stop_all()


def test_an_h2_stream_in_flight_at_a_hand_over_ends_200_on_the_old_process_and_new_connections_reach_the_new(
    handover: Callable[..., Handover],
) -> None:
    h = handover()
    s, blue = h.site, h.colors["blue"]
    old = h.first()
    c = H2Client(s.https_port, s.ca, sni=HOST)
    try:
        assert c.alpn == "h2"
        first = c.get("/", authority=HOST)
        assert (first.status, first.body) == (200, b"blue\n")
        slow = c.request("/slow", authority=HOST)
        wait_for(lambda: any(r.path == "/slow" for r in blue.seen), "the slow stream upstream")

        new = s.start(REPO, takeover=True)
        assert s.wait_serving(new)["took_over"]["from_pid"] == old.pid
        read_goaway(c)
        assert c.goaway_code == 0, "GOAWAY with NO_ERROR"
        assert c.goaway_last is not None and c.goaway_last >= slow
        # A new connection while the old process still serves the slow stream.
        with H2Client(s.https_port, s.ca, sni=HOST) as fresh:
            r = fresh.get("/", authority=HOST)
            assert (r.status, r.body) == (200, b"blue\n")
            assert old.popen.poll() is None, "the old process still holds the slow stream"

            blue.release_slow()
            (done,) = c.wait(slow)
            assert (done.status, done.body, done.reset) == (200, b"blue slow done\n", None)
            assert c.resets == {}
            c.read_until_closed()
            c.close()  # (the server's TLS close waits for the client's own close)
            wait_for(lambda: old.popen.poll() is not None, f"the old process to exit: {old.text()}")
            assert old.popen.returncode == 0, old.text()
            # The fresh connection outlived the old process: the new one had accepted it.
            again = fresh.get("/", authority=HOST)
            assert (again.status, again.body) == (200, b"blue\n")
            assert fresh.goaway_code is None and fresh.resets == {}
        assert s.control._json("GET", "/v1/process")["pid"] == new.pid
    finally:
        c.close()


@pytest.fixture
def shared_handover(
    handover: Callable[..., Handover],
    redis_server: Callable[[], RedisServer],
    request: pytest.FixtureRequest,
) -> Callable[[float], tuple[Handover, redis.Redis]]:
    """`shared_handover(heartbeat_seconds)`: the hand-over site as node edge-a of a real
    redis-server, and a client of that server (to see what it holds)."""

    def make(heartbeat: float) -> tuple[Handover, redis.Redis]:
        store = redis_server()
        node = {"id": "edge-a", "heartbeat_seconds": heartbeat}
        r = redis.Redis(port=store.port, decode_responses=True)
        request.addfinalizer(r.close)
        return handover(state_backend=store.url, node=node), r

    return make


# --- 2. A change while a hand-over freezes the board, with the state in Redis ------------------

# A new process that holds the hand-over open (the board stays frozen) until told to give up.
HOLD_THEN_REFUSE = """
import asyncio, sys
from pathlib import Path
from edgeproxy.handover import Taker

async def main():
    taker = await Taker.connect(Path(sys.argv[1]))
    print("holding", taker.id, flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    taker.refuse("the test let go")

asyncio.run(main())
"""


@contextlib.contextmanager
def held_hand_over(s: Site) -> Iterator[None]:
    """A hand-over held open (the running process's board frozen) until the block ends;
    then the would-be new process refuses and the running one keeps serving, thawed."""
    running = s.procs[-1]
    thawed = running.text().count("keeps serving")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_THEN_REFUSE, s.conf["control"]["socket"]],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdin is not None
            line = holder.stdout.readline().decode()
            assert line.startswith("holding"), holder.stderr.read() if holder.stderr else line
            yield
            holder.stdin.write(b"go\n")
            holder.stdin.flush()
            assert holder.wait(15) == 0
        finally:
            if holder.poll() is None:
                holder.kill()
    wait_for(lambda: running.text().count("keeps serving") > thawed, "the running one to thaw")


def test_a_change_during_a_hand_over_is_refused_503_writes_nothing_to_redis_and_the_new_process_serves_the_last_commit(
    shared_handover: Callable[[float], tuple[Handover, redis.Redis]],
) -> None:
    h, r = shared_handover(0.2)
    s = h.site
    old = h.first()
    ctl = s.control
    committed = ctl.set("shop", "green", 100)
    key = "edgeproxy:app:shop"
    assert int(r.hget(key, "generation") or -1) == committed["generation"]
    stored = r.hgetall(key)

    with held_hand_over(s):
        with pytest.raises(ControlError) as refused:
            ctl.set("shop", "red", 100)
        assert refused.value.status == 503
        message = refused.value.message
        assert "retry" in message and "nothing was changed" in message, message
        with pytest.raises(ControlError) as also:
            ctl.drain("shop", "blue")
        assert also.value.status == 503
        # Nothing half-written: Redis holds the last commit, the node serves it.
        assert r.hgetall(key) == stored
        assert switch_state(ctl)["generation"] == committed["generation"]

    # The hand-over that then happens: the new process serves the latest committed state.
    new = s.start(REPO, takeover=True)
    assert s.wait_serving(new)["took_over"]["from_pid"] == old.pid
    after = switch_state(ctl)
    assert (after["active"], after["generation"]) == ("green", committed["generation"])
    assert int(r.hget(key, "generation") or -1) == committed["generation"]
    with H2Client(s.https_port, s.ca, sni=HOST) as c:
        got = c.get("/", authority=HOST)
        assert (got.status, got.body) == (200, b"green\n")
    # And the board is open again in the new process: the next change commits to Redis.
    moved = ctl.set("shop", "red", 100)
    assert moved["generation"] == committed["generation"] + 1
    assert int(r.hget(key, "generation") or -1) == moved["generation"]


def test_a_reload_that_changes_the_switch_state_during_a_hand_over_is_refused_503_and_changes_nothing(
    handover: Callable[..., Handover],
) -> None:
    h = handover()
    s = h.site
    h.first()
    ctl = s.control
    before = ctl.app("shop")
    conf = yaml.safe_load(s.path.read_text())
    conf["apps"]["shop"]["colors"]["purple"] = conf["apps"]["shop"]["colors"]["red"]
    conf["sites"][0]["hosts"].append("purple.example.test")
    s.path.write_text(yaml.safe_dump(conf))
    with H2Client(s.https_port, s.ca, sni=HOST) as c:
        with held_hand_over(s):
            with pytest.raises(ControlError) as refused:
                ctl.reload_config()
            assert refused.value.status == 503, refused.value
            assert "retry" in refused.value.message, refused.value.message
            assert ctl.app("shop") == before
            got = c.get("/", authority="purple.example.test")
            assert got.status == 404, "the new config's host is not served: nothing changed"
            assert c.get("/", authority=HOST).status == 200
        # Once the hand-over is over, the same reload goes through on the same connection.
        assert ctl.reload_config()["ok"] is True
        assert "purple" in ctl.app("shop")["colors"]
        got = c.get("/", authority="purple.example.test")
        assert (got.status, got.body) == (200, b"blue\n")
        assert c.goaway_code is None and c.resets == {}


# --- 3. An HTTP/2 connection across a config reload, a switch and a drain --------------------


def shop(blue: Backend, green: Backend, **conf: Any) -> dict[str, Any]:
    colors = {"blue": {"upstreams": [blue.url]}, "green": {"upstreams": [green.url]}}
    return {"shop": {"colors": colors, "health": {"enabled": False}, **conf}}


@dataclass
class OneEdge:
    proc: EdgeProcess
    control: ControlClient
    blue: Backend


@pytest.fixture
def one_edge(
    edge_process: Callable[..., EdgeProcess],
    backend: Callable[[str], Backend],
    tls_files: dict[str, Path],
) -> OneEdge:
    """An `edgeproxy serve` with HTTP/2 on TLS: app shop, blue active, green ready."""
    blue, green = backend("blue"), backend("green")
    proc = edge_process(h2_edge_config(tls_files, apps=shop(blue, green), sites=[site("shop")]))
    return OneEdge(proc, ControlClient(str(proc.control_socket)), blue)


def test_the_next_h2_stream_after_a_config_reload_is_answered_200_on_the_same_connection(
    one_edge: OneEdge, tls_files: dict[str, Path]
) -> None:
    proc, ctl = one_edge.proc, one_edge.control
    path = config_path(proc)
    with H2Client(proc.https_port, tls_files["ca"]) as c:
        assert c.alpn == "h2"
        assert c.get("/").status == 200
        for i in range(4):
            # Each reload really changes the sites (a new host): the router is rebuilt.
            written = yaml.safe_load(path.read_text())
            written["sites"][0]["hosts"].append(f"r{i}.test")
            path.write_text(yaml.safe_dump(written))
            if i % 2 == 0:
                assert ctl.reload_config()["ok"] is True
            else:
                proc.popen.send_signal(signal.SIGHUP)
                wait_for(lambda i=i: proc.log().count("config reloaded") > i, "the SIGHUP reload")
            r = c.get("/")
            assert (r.status, r.body, r.reset) == (200, b"blue\n", None), r
        assert c.goaway_code is None and c.resets == {}


def test_after_a_switch_and_a_drain_the_next_h2_stream_on_the_same_connection_goes_to_green(
    one_edge: OneEdge, tls_files: dict[str, Path]
) -> None:
    proc, ctl, blue = one_edge.proc, one_edge.control, one_edge.blue
    with H2Client(proc.https_port, tls_files["ca"]) as c:
        assert c.get("/").body == b"blue\n"
        slow = c.request("/slow")  # on blue, in flight across the switch and the drain
        wait_for(lambda: any(r.path == "/slow" for r in blue.seen), "the slow stream upstream")
        assert ctl.set("shop", "green", 100)["active"] == "green"
        assert c.get("/").body == b"green\n"
        view = ctl.drain("shop", "blue", timeout=30)
        assert "blue" in view["draining"]
        r = c.get("/")
        assert (r.status, r.body) == (200, b"green\n")
        blue.release_slow()
        (done,) = c.wait(slow)
        assert (done.status, done.body) == (200, b"blue slow done\n")
        wait_for(lambda: "blue" not in ctl.app("shop")["draining"], "blue's drain to end")
        r = c.get("/")
        assert (r.status, r.body) == (200, b"green\n")
        assert c.goaway_code is None and c.resets == {}


# --- 4. Open connections across a change made through another node sharing Redis -------------


@dataclass
class TwoNodes:
    here: EdgeProcess
    there: EdgeProcess
    blue: Backend


@pytest.fixture
def two_nodes(
    edge_process: Callable[..., EdgeProcess],
    backend: Callable[[str], Backend],
    tls_files: dict[str, Path],
    redis_server: Callable[[], RedisServer],
) -> TwoNodes:
    """Two `edgeproxy serve` nodes (HTTP/2 on TLS) sharing a real redis-server."""
    store = redis_server()
    blue, green = backend("blue"), backend("green")

    def node(n: int) -> EdgeProcess:
        ident = {"id": f"edge-{n}", "heartbeat_seconds": 0.2, "resync_seconds": 0.3}
        return edge_process(
            h2_edge_config(
                tls_files,
                state_backend=store.url,
                node=ident,
                apps=shop(blue, green),
                sites=[site("shop")],
            )
        )

    return TwoNodes(node(0), node(1), blue)


def test_a_set_through_another_node_moves_the_next_request_of_open_h11_tls_and_h2_connections(
    two_nodes: TwoNodes, tls_files: dict[str, Path]
) -> None:
    here, there = two_nodes.here, two_nodes.there
    h1 = KeepAliveTLS(here.https_port, tls_files["ca"])
    h2c = H2Client(here.https_port, tls_files["ca"])
    try:
        assert h1.get() == (200, b"blue\n")
        assert h2c.get().body == b"blue\n"
        moved = ControlClient(str(there.control_socket)).set("shop", "green", 100)
        ctl_here = ControlClient(str(here.control_socket))
        wait_for(
            lambda: ctl_here.app("shop")["generation"] == moved["generation"],
            "the change to reach the other node",
        )
        assert h1.get() == (200, b"green\n")
        r = h2c.get()
        assert (r.status, r.body) == (200, b"green\n")
        assert h2c.goaway_code is None and h2c.resets == {}
    finally:
        h1.close()
        h2c.close()


def test_a_drain_through_another_node_waits_for_a_websocket_here_while_h2_streams_move_to_green(
    two_nodes: TwoNodes, tls_files: dict[str, Path]
) -> None:
    here, there = two_nodes.here, two_nodes.there
    ctl_here, ctl_there = (ControlClient(str(n.control_socket)) for n in (here, there))
    raw = socket.create_connection(("127.0.0.1", here.http_port), timeout=10)
    with (
        connect(f"ws://a.test:{here.http_port}/ws", sock=raw) as ws,
        H2Client(here.https_port, tls_files["ca"]) as c,
    ):
        ws.send("m1")
        assert ws.recv(timeout=5) == "blue: m1"
        assert c.get().body == b"blue\n"
        ctl_there.set("shop", "green", 100)
        drained = ctl_there.drain("shop", "blue", timeout=60)
        wait_for(
            lambda: ctl_here.app("shop")["generation"] == drained["generation"],
            "the drain to reach this node",
        )
        r = c.get()
        assert (r.status, r.body) == (200, b"green\n")
        wait_for(
            lambda: ctl_there.app("shop")["colors"]["blue"].get("tunnels") == 1,
            f"the other node to count this node's tunnel: {ctl_there.app('shop')['colors']}",
        )
        time.sleep(1.0)  # the other node has nothing of blue open: not enough to end it
        for ctl in (ctl_here, ctl_there):
            assert "blue" in ctl.app("shop")["draining"]
        ws.send("m2")
        assert ws.recv(timeout=5) == "blue: m2"
    wait_for(
        lambda: all(not ctl.app("shop")["draining"] for ctl in (ctl_here, ctl_there)),
        "the drain to end on both nodes once the WebSocket closed",
    )
    r2 = H2Client(here.https_port, tls_files["ca"])
    with r2:
        assert r2.get().body == b"green\n"


# --- 5. The node's heartbeat across a hand-over ------------------------------------------------


def test_across_a_hand_over_the_node_stays_listed_in_redis_under_the_new_process(
    shared_handover: Callable[[float], tuple[Handover, redis.Redis]],
) -> None:
    # Beats far apart: what the old process writes (or deletes) as it leaves stays visible.
    h, r = shared_handover(20)
    s, blue = h.site, h.colors["blue"]

    def listed() -> dict[str, Any] | None:
        raw = r.get("edgeproxy:node:edge-a")
        return None if raw is None else dict(json.loads(raw))

    old = h.first()
    wait_for(lambda: (listed() or {}).get("pid") == old.pid, "the first heartbeat")
    with H2Client(s.https_port, s.ca, sni=HOST) as c:
        slow = c.request("/slow", authority=HOST)  # keeps the old process stepping back
        wait_for(lambda: any(q.path == "/slow" for q in blue.seen), "the slow stream upstream")
        new = s.start(REPO, takeover=True)
        s.wait_serving(new)
        wait_for(lambda: (listed() or {}).get("pid") == new.pid, "the new process's heartbeat")
        # A change while the old process steps back: both adopt it; only the new one beats.
        gen = s.control.set("shop", "green", 100)["generation"]
        wait_for(lambda: f"gen={gen}" in old.text(), "the old process to adopt the change")
        time.sleep(0.5)
        node = listed()
        assert node is not None and node["pid"] == new.pid, "the old process beat as the node"
        assert node["generations"] == {"shop": gen}
        blue.release_slow()
        assert c.wait(slow)[0].status == 200
        c.read_until_closed()
    assert old.popen.wait(15) == 0, old.text()
    # The old process left; the node it was is still here, served by the new process.
    node = listed()
    assert node is not None, "the old process deleted the node's key as it exited"
    assert node["pid"] == new.pid


def test_a_hand_over_to_a_config_with_a_new_color_keeps_the_node_and_redis_on_one_state(
    shared_handover: Callable[[float], tuple[Handover, redis.Redis]],
) -> None:
    h, r = shared_handover(0.2)
    s = h.site
    h.first()
    s.control.set("shop", "green", 100)
    # The new process's config has a fourth color (the red backend under another name).
    conf = yaml.safe_load(s.path.read_text())
    conf["apps"]["shop"]["colors"]["purple"] = conf["apps"]["shop"]["colors"]["red"]
    upgraded = s.tmp / "upgraded.yml"
    upgraded.write_text(yaml.safe_dump(conf))
    new = s.start(REPO, takeover=True, config=upgraded)
    s.wait_serving(new)
    view = s.control.app("shop")
    assert "purple" in view["colors"] and view["active"] == "green"
    stored = r.hgetall("edgeproxy:app:shop")
    assert int(stored["generation"]) == view["generation"], (stored, view)
    assert "purple" in json.loads(stored["state"])["apps"]["shop"]["colors"], stored
    # The next change commits (no conflict with what Redis holds) and serves.
    moved = s.control.set("shop", "purple", 100)
    assert moved["generation"] == view["generation"] + 1
    with H2Client(s.https_port, s.ca, sni=HOST) as c:
        got = c.get("/", authority=HOST)
        assert (got.status, got.body) == (200, b"red\n")


# --- 6. Open TLS connections across a certificate swap -----------------------------------------


def test_after_a_certificate_swap_the_next_request_of_open_h2_and_h11_tls_connections_is_served(
    one_edge: OneEdge, tls_files: dict[str, Path], tls_ca: trustme.CA
) -> None:
    proc, ctl = one_edge.proc, one_edge.control
    h1 = KeepAliveTLS(proc.https_port, tls_files["ca"])
    h2c = H2Client(proc.https_port, tls_files["ca"])
    try:
        before = h2c.sock.getpeercert(binary_form=True)
        assert h1.get() == (200, b"blue\n") and h2c.get().body == b"blue\n"
        leaf = tls_ca.issue_cert("example.test", "*.example.test", "a.test", "127.0.0.1")
        tls_files["cert"].write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        tls_files["key"].write_bytes(leaf.private_key_pem.bytes())
        ctl.reload_certs()
        with H2Client(proc.https_port, tls_files["ca"]) as fresh:
            swapped = fresh.sock.getpeercert(binary_form=True)
            assert swapped is not None and swapped != before, "the new certificate serves"
            assert fresh.get().body == b"blue\n"
        assert h1.get() == (200, b"blue\n")
        r = h2c.get()
        assert (r.status, r.body) == (200, b"blue\n")
        assert h2c.goaway_code is None and h2c.resets == {}
    finally:
        h1.close()
        h2c.close()


# --- 7. The canary guard across a reload made while a hand-over held the board frozen ----------


def test_a_reload_during_a_held_hand_over_leaves_no_canary_guard_judging_through_a_later_freeze(
    handover: Callable[..., Handover],
) -> None:
    h = handover()
    s = h.site
    # Green fails every request (nothing listens there); its guard judges after 5 requests.
    s.conf["apps"]["shop"]["colors"]["green"] = {"upstreams": [f"http://127.0.0.1:{free_port()}"]}
    s.conf["apps"]["shop"]["canary_guard"] = {"min_requests": 5, "window_seconds": 5}
    s.path.write_text(yaml.safe_dump(s.conf))
    old = h.first()
    ctl = s.control
    with held_hand_over(s):
        s.conf["sites"][0]["hosts"].append("more.example.test")  # no switch change
        s.path.write_text(yaml.safe_dump(s.conf))
        assert ctl.reload_config()["ok"] is True
    ctl.set("shop", "green", 10)
    with held_hand_over(s):
        mark = len(old.text())
        conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=10)
        for _ in range(10):  # forced onto green (a tester's override): 5xx each
            conn.request("GET", "/", headers={"Host": HOST, "X-Edgeproxy-Color": "green"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status in (502, 503), resp.status
        conn.close()
        time.sleep(1.5)  # several guard periods
        during = old.text()[mark:]
        assert "canary guard" not in during, during
    # Thawed, the one guard backs green out.
    wait_for(lambda: ctl.app("shop")["weight"] == 0, "the guard to back green out")
