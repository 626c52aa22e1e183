"""Several edge nodes sharing one switch state through a real redis-server.

Three `edgeproxy serve` processes on loopback, one redis-server, two aiohttp
backends (blue, green). Every change goes through one node's control socket;
the tests check what every node serves (its AppView's generation and the
color that answers its requests), never how fast: the timing is measured by
`bench/shared_flips.py`.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from switchctl.client import ControlClient, ControlError
from tests.process_fixtures import EdgeProcess
from tests.proxy_fixtures import Backend, site
from tests.redis_fixtures import RedisServer

pytestmark = pytest.mark.slow


def node_config(redis_url: str, blue: str, green: str, node: int) -> dict[str, Any]:
    return {
        "state_backend": redis_url,
        "node": {
            "id": f"edge-{node}",
            "address": f"127.0.0.1 (test node {node})",
            "heartbeat_seconds": 0.2,
            "resync_seconds": 0.3,
        },
        "apps": {
            "shop": {
                "colors": {"blue": {"upstreams": [blue]}, "green": {"upstreams": [green]}},
                "health": {"enabled": False},
            }
        },
        "sites": [site("shop")],
    }


def start_nodes(
    edge_process: Callable[..., EdgeProcess], redis: RedisServer, blue: Backend, green: Backend
) -> list[EdgeProcess]:
    return [edge_process(node_config(redis.url, blue.url, green.url, i)) for i in range(3)]


def generations(nodes: list[EdgeProcess]) -> list[int]:
    return [ControlClient(n.control_socket).app("shop")["generation"] for n in nodes]


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def served_by(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "a.test"})
        resp = conn.getresponse()
        body = resp.read().decode().strip()
        assert resp.status == 200, (resp.status, body)
        return body
    finally:
        conn.close()


class Load:
    """Keep-alive GET loops against every node from a few threads; counts what failed."""

    def __init__(self, nodes: list[EdgeProcess], per_node: int = 2) -> None:
        self.ports = [n.http_port for n in nodes for _ in range(per_node)]
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(p,)) for p in self.ports]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _run(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "a.test"})
                resp = conn.getresponse()
                body = resp.read()
                outcome = None if resp.status == 200 else f"{resp.status} {body[:80]!r}"
            except (OSError, http.client.HTTPException) as e:
                outcome = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            with self.lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append(outcome)
        conn.close()


def test_a_hundred_flips_through_any_node_under_load_fail_no_request_and_reach_every_node(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    wait_for(lambda: len(set(generations(nodes))) == 1, what="the nodes to agree at start")
    with Load(nodes) as load:
        for i in range(100):
            color = "green" if i % 2 == 0 else "blue"
            view = ControlClient(nodes[i % 3].control_socket).set("shop", color, 100)
            target = view["generation"]
            wait_for(
                lambda target=target: min(generations(nodes)) >= target,
                what=f"every node to apply generation {target}",
            )
            for n in nodes:  # each node serves what was committed last
                assert ControlClient(n.control_socket).app("shop")["active"] == color
    assert load.failed == [], load.failed[:5]
    assert load.ok > 100
    final = generations(nodes)
    assert len(set(final)) == 1
    assert [served_by(n.http_port) for n in nodes] == ["blue"] * 3


def test_a_node_killed_and_restarted_comes_back_on_the_latest_state(
    redis_server, edge_process, backend, tmp_path
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    victim = nodes[2]
    victim.popen.kill()
    victim.popen.wait(5)
    # Changes made while it is gone: its own state file still says generation 0, blue.
    ControlClient(nodes[0].control_socket).set("shop", "green", 100)
    latest = ControlClient(nodes[1].control_socket).set("shop", "green", 100)  # a no-op change
    assert latest["generation"] == 2
    conf = node_config(redis.url, blue.url, green.url, 2)
    conf["control"] = {"socket": str(victim.control_socket)}
    conf["state_file"] = str(tmp_path / "state2.json")
    again = edge_process(conf)
    view = ControlClient(again.control_socket).app("shop")
    assert (view["active"], view["generation"]) == ("green", 2)
    assert served_by(again.http_port) == "green"
    cluster = ControlClient(again.control_socket).cluster()
    assert [n["id"] for n in cluster["nodes"]] == ["edge-0", "edge-1", "edge-2"]
    assert all(n["lagging"] == [] for n in cluster["nodes"]), cluster


def test_with_redis_down_traffic_keeps_flowing_changes_are_refused_and_every_node_converges_after(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    ControlClient(nodes[0].control_socket).set("shop", "green", 100)
    wait_for(lambda: generations(nodes) == [1, 1, 1], what="generation 1 everywhere")
    with Load(nodes) as load:
        redis.stop()
        with pytest.raises(ControlError) as refused:
            ControlClient(nodes[1].control_socket).set("shop", "blue", 100)
        assert refused.value.status == 503
        assert "shared store" in refused.value.message
        assert "unreachable" in refused.value.message
        assert "nothing was changed" in refused.value.message
        for n in nodes:
            wait_for(
                lambda n=n: ControlClient(n.control_socket).cluster()["stale_since"] is not None,
                what="every node to report itself stale",
            )
            metrics = ControlClient(n.control_socket).metrics()
            assert "edgeproxy_state_backend_up 0" in metrics
        assert generations(nodes) == [1, 1, 1]
        assert [served_by(n.http_port) for n in nodes] == ["green"] * 3
        redis.start()  # empty: no persistence in this test
        for n in nodes:
            wait_for(
                lambda n=n: ControlClient(n.control_socket).cluster()["stale_since"] is None,
                what="every node to catch up",
            )
        view = ControlClient(nodes[2].control_socket).set("shop", "blue", 100)
        wait_for(lambda: min(generations(nodes)) >= view["generation"], what="the next change")
    assert load.failed == [], load.failed[:5]
    assert [served_by(n.http_port) for n in nodes] == ["blue"] * 3


def test_two_concurrent_sets_on_different_nodes_one_wins_and_the_other_gets_a_conflict(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    wait_for(lambda: generations(nodes) == [0, 0, 0], what="the nodes to agree")
    committed: set[tuple[int, str, int]] = {(0, "blue", 0)}
    seen: set[tuple[int, str, int]] = set()
    stop = threading.Event()

    def watch() -> None:  # every state any node serves must be one that was committed
        while not stop.is_set():
            for n in nodes:
                v = ControlClient(n.control_socket).app("shop")
                seen.add((v["generation"], v["active"], v["weight"]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    conflicts = 0
    try:
        for round_ in range(40):
            if round_ >= 10 and conflicts:
                break
            barrier = threading.Barrier(2)

            def set_on(
                node: EdgeProcess, color: str, weight: int, barrier: threading.Barrier = barrier
            ) -> Any:
                client = ControlClient(node.control_socket)
                barrier.wait()
                try:
                    return client.set("shop", color, weight)
                except ControlError as refused:
                    return refused

            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                a = pool.submit(set_on, nodes[0], "green", 30)
                b = pool.submit(set_on, nodes[1], "green", 60)
                results = [a.result(), b.result()]
            wins = [r for r in results if not isinstance(r, ControlError)]
            losses = [r for r in results if isinstance(r, ControlError)]
            assert wins, results
            for w in wins:
                committed.add((w["generation"], w["active"], w["weight"]))
            for loss in losses:
                assert loss.status == 409, loss
                assert "was committed first" in loss.message
                assert "run the command again" in loss.message
            conflicts += len(losses)
            top = max(w["generation"] for w in wins)
            wait_for(lambda top=top: min(generations(nodes)) >= top, what="convergence")
            ControlClient(nodes[2].control_socket).set("shop", "blue", 100)
            reset = ControlClient(nodes[2].control_socket).app("shop")
            committed.add((reset["generation"], reset["active"], reset["weight"]))
            wait_for(lambda g=reset["generation"]: min(generations(nodes)) >= g, what="the reset")
    finally:
        stop.set()
        watcher.join(10)
    assert conflicts >= 1, "two sets from the same generation should have collided at least once"
    assert seen <= committed, sorted(seen - committed)


def test_a_config_reload_on_every_node_refits_the_shared_state_once_and_the_new_color_serves(
    redis_server, edge_process, backend, tmp_path
):
    redis = redis_server()
    blue, green, red = backend("blue"), backend("green"), backend("red")
    nodes = start_nodes(edge_process, redis, blue, green)
    ControlClient(nodes[0].control_socket).set("shop", "green", 100)
    wait_for(lambda: generations(nodes) == [1, 1, 1], what="generation 1 everywhere")
    for i in range(3):  # the new config, with a third color, on every node
        path = tmp_path / f"edgeproxy{i}.yml"
        conf = yaml.safe_load(path.read_text())
        conf["apps"]["shop"]["colors"]["red"] = {"upstreams": [red.url]}
        path.write_text(yaml.safe_dump(conf))
    ControlClient(nodes[0].control_socket).reload_config()
    # The others still run the old config: they keep serving generation 1 and say why.
    wait_for(
        lambda: (
            "names the colors"
            in ControlClient(nodes[1].control_socket).cluster()["diverged"].get("shop", "")
        ),
        what="edge-1 to report the config mismatch",
    )
    assert generations(nodes) == [2, 1, 1]
    for n in nodes[1:]:
        result = ControlClient(n.control_socket).reload_config()
        assert result["switch"]["shop"]["new"].endswith("gen=2"), result
    assert generations(nodes) == [2, 2, 2]
    wait_for(  # a re-read that began before the reload may note the mismatch once more
        lambda: all(ControlClient(n.control_socket).cluster()["diverged"] == {} for n in nodes),
        what="no node to report a mismatch",
    )
    view = ControlClient(nodes[2].control_socket).set("shop", "red", 100)
    wait_for(lambda: min(generations(nodes)) >= view["generation"], what="red everywhere")
    assert [served_by(n.http_port) for n in nodes] == ["red"] * 3


def test_a_node_started_while_redis_is_down_serves_its_state_file_and_catches_up_later(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    first = edge_process(node_config(redis.url, blue.url, green.url, 0))
    ControlClient(first.control_socket).set("shop", "green", 100)
    redis.stop()
    late = edge_process(node_config(redis.url, blue.url, green.url, 1))
    cluster = ControlClient(late.control_socket).cluster()
    assert cluster["stale_since"] is not None and cluster["nodes"][0]["id"] == "edge-1"
    assert served_by(late.http_port) == "blue"  # its own (new) state file: generation 0
    redis.start()  # empty: both nodes offer their state, the higher generation wins
    wait_for(
        lambda: ControlClient(late.control_socket).cluster()["stale_since"] is None,
        what="the late node to reach the store",
    )
    wait_for(lambda: generations([first, late]) == [1, 1], what="the late node to catch up")
    assert served_by(late.http_port) == "green"
