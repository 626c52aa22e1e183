"""Every node's view through a real redis-server: the node list, --wait-nodes, exit codes,
and the per-color figures (deploy gates, canary guard) summed over all nodes."""

from __future__ import annotations

import http.client
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from click.testing import CliRunner, Result

from switchctl.cli import cli
from switchctl.client import ControlClient
from tests.health_fixtures import flaky_fixture  # noqa: F401 - provides `flaky`
from tests.process_fixtures import EdgeProcess
from tests.test_shared_state import generations, node_config, start_nodes, wait_for

pytestmark = pytest.mark.slow


def switchctl(node: EdgeProcess, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["--socket", str(node.control_socket), *args], catch_exceptions=False
    )


def get(port: int, *, color: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    headers = {"Host": "a.test"} | ({"X-Edgeproxy-Color": color} if color else {})
    try:
        conn.request("GET", "/", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def fetch(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": "a.test"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode().strip()
    finally:
        conn.close()


def test_set_with_wait_nodes_returns_once_every_node_serves_the_change(
    redis_server, edge_process, backend
):
    redis = redis_server()
    nodes = start_nodes(edge_process, redis, backend("blue"), backend("green"))
    result = switchctl(nodes[1], "--app", "shop", "set", "green", "--wait-nodes")
    assert result.exit_code == 0, result.output
    assert generations(nodes) == [1, 1, 1]  # no waiting here: --wait-nodes did it


def test_status_on_any_node_lists_every_node_and_wait_nodes_names_a_node_left_behind(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    # A fourth node with another config: it cannot apply states naming only blue and green.
    odd = node_config(redis.url, blue.url, green.url, 3)
    odd["apps"]["shop"]["colors"]["red"] = {"upstreams": [blue.url]}
    nodes.append(edge_process(odd))
    result = switchctl(
        nodes[0], "--app", "shop", "set", "green", "--wait-nodes", "--wait-timeout", "1"
    )
    assert result.exit_code == 6, result.output
    assert "generation 1 of shop was committed, but after 1s node edge-3" in result.output
    assert "is on generation 0" in result.output and "names the colors" in result.output
    wait_for(lambda: generations(nodes[:3]) == [1, 1, 1], what="the three alike nodes")
    status = switchctl(nodes[2], "status")
    assert status.exit_code == 0, status.output
    assert f"shared state: {redis.url} (asked node edge-2)" in status.output
    rows = {
        m[1]: m[0] for m in re.finditer(r"^  (edge-\d)\b.*$", status.output, flags=re.MULTILINE)
    }
    assert sorted(rows) == ["edge-0", "edge-1", "edge-2", "edge-3"], status.output
    assert "in step" in rows["edge-0"] and "(this one)" in rows["edge-2"]
    assert "LAGGING (shop 0 < 1)" in rows["edge-3"], status.output
    listed = json.loads(switchctl(nodes[0], "--json", "nodes").output)
    assert [n["id"] for n in listed["nodes"]] == ["edge-0", "edge-1", "edge-2", "edge-3"]
    assert listed["latest"] == {"shop": 1}
    assert [n["lagging"] for n in listed["nodes"]] == [[], [], [], ["shop"]]


def test_with_the_store_down_switchctl_exits_5_saying_so_and_status_shows_stale_since(
    redis_server, edge_process, backend
):
    redis = redis_server()
    nodes = start_nodes(edge_process, redis, backend("blue"), backend("green"))
    redis.stop()
    refused = switchctl(nodes[0], "--app", "shop", "set", "green")
    assert refused.exit_code == 5, refused.output
    assert "the shared store redis://127.0.0.1:" in refused.output
    assert "is unreachable" in refused.output and "nothing was changed" in refused.output
    assert "redis-cli -u" in refused.output
    status = switchctl(nodes[0], "status")
    assert "STALE since" in status.output, status.output
    metrics = ControlClient(nodes[0].control_socket).metrics()
    stale = re.search(r"^edgeproxy_state_backend_stale_since_seconds (\S+)$", metrics, re.M)
    assert stale is not None and float(stale[1]) > 0


def test_the_figures_the_gates_read_count_the_requests_of_every_node(
    redis_server, edge_process, backend
):
    redis = redis_server()
    nodes = start_nodes(edge_process, redis, backend("blue"), backend("green"))
    for node, n in zip(nodes, (5, 7, 11), strict=True):
        for _ in range(n):
            assert get(node.http_port) == 200

    def blue_requests(node: EdgeProcess) -> Any:
        return ControlClient(node.control_socket).app("shop")["colors"]["blue"].get("requests")

    wait_for(lambda: [blue_requests(n) for n in nodes] == [23] * 3, what="23 on every node")


def test_the_canary_guard_judges_the_requests_of_every_node_and_backs_the_canary_out_once(
    redis_server, edge_process, backend, flaky
):
    redis = redis_server()
    blue, green = backend("blue"), flaky("green", traffic=[500])
    confs = [node_config(redis.url, blue.url, green.url, i) for i in range(3)]
    for conf in confs:
        conf["apps"]["shop"]["canary_guard"] = {"min_requests": 30}
        conf["apps"]["shop"]["ejection"] = {"consecutive_failures": 1000}
    nodes = [edge_process(conf) for conf in confs]
    ControlClient(nodes[0].control_socket).set("shop", "green", 10)
    wait_for(lambda: generations(nodes) == [1, 1, 1], what="the canary everywhere")
    for node in nodes:  # 12 failures each: below min_requests on any one node
        for _ in range(12):
            assert get(node.http_port, color="green") == 500
    wait_for(
        lambda: all(ControlClient(n.control_socket).app("shop")["guard"] for n in nodes),
        what="the guard to back the canary out on every node",
    )
    views = [ControlClient(n.control_socket).app("shop") for n in nodes]
    assert {(v["generation"], v["weight"]) for v in views} == {(2, 0)}
    assert views[0]["guard"]["reason"].startswith("green failed 36 of 36 requests")
    trips = 0
    for n in nodes:
        text = ControlClient(n.control_socket).metrics()
        m = re.search(r'^edgeproxy_canary_guard_trips_total\{app="shop"\} (\d+)', text, re.M)
        assert m is not None
        trips += int(m[1])
    assert trips == 1


def test_a_drain_ends_only_when_no_node_serves_the_color_any_more(
    redis_server, edge_process, backend
):
    redis = redis_server()
    blue, green = backend("blue"), backend("green")
    nodes = start_nodes(edge_process, redis, blue, green)
    pool = ThreadPoolExecutor(1)
    slow = pool.submit(fetch, nodes[1].http_port, "/slow")  # in flight on edge-1 only
    wait_for(lambda: len(blue.seen) == 1, what="the slow request to reach blue")
    ControlClient(nodes[0].control_socket).set("shop", "green", 100)
    ControlClient(nodes[0].control_socket).drain("shop", "blue", 60)
    wait_for(lambda: min(generations(nodes)) >= 2, what="the drain everywhere")
    wait_for(
        lambda: (
            ControlClient(nodes[0].control_socket).app("shop")["colors"]["blue"]["in_flight"] == 1
        ),
        what="edge-0 to count edge-1's request",
    )
    time.sleep(1.0)  # edge-0 and edge-2 have nothing of blue in flight: not enough
    assert all("blue" in ControlClient(n.control_socket).app("shop")["draining"] for n in nodes)
    blue.release_slow()
    assert slow.result(10) == (200, "blue slow done")
    wait_for(
        lambda: all(not ControlClient(n.control_socket).app("shop")["draining"] for n in nodes),
        what="the drain to end on every node",
    )
    pool.shutdown()


def test_requests_held_by_a_pause_on_one_node_go_on_when_another_node_resumes(
    redis_server, edge_process, backend
):
    redis = redis_server()
    nodes = start_nodes(edge_process, redis, backend("blue"), backend("green"))
    ControlClient(nodes[0].control_socket).pause("shop")
    wait_for(lambda: generations(nodes) == [1, 1, 1], what="the pause everywhere")
    pool = ThreadPoolExecutor(1)
    held = pool.submit(fetch, nodes[1].http_port, "/")
    time.sleep(0.5)
    assert not held.done()
    ControlClient(nodes[2].control_socket).resume("shop")
    assert held.result(10) == (200, "blue")
    pool.shutdown()
