"""Flips through any of several edge nodes sharing one switch state in Redis, under load.

`python -m bench.shared_flips [--flips 100] [--nodes 3] [--connections 4] [--out FILE]`

Starts a redis-server, two `bench.backend` colors and N `edgeproxy serve`
processes with `state_backend` on loopback; `wrk` keeps keep-alive load on
every node while `set` alternates blue/green through node i mod N, waiting
until every node serves each change before the next. A node's lag for a flip
is the time from the reply to the `set` until that node applied the
generation, read from the node's own log line for the change (JSON log,
millisecond timestamps, written right after the pointer swap): what the node
serves, not when a poller happened to look. The node that took the `set`
applied it before replying (lag 0). Prints and writes the lag percentiles
and wrk's counts of failed requests.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Proc, free_port, log, running, wait_tcp
from bench.wrk import parse as parse_wrk
from switchctl.client import ControlClient

CHANGE = re.compile(r"^shop: .* → .*gen=(\d+)$")


def applied_times(log_path: Path) -> dict[int, float]:
    """Generation → Unix time the node logged applying it (its `edgeproxy.state` line)."""
    out: dict[int, float] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            m = CHANGE.match(str(record.get("msg", "")))
            if record.get("logger") == "edgeproxy.state" and m:
                stamp, ms = str(record["time"]).rstrip("Z").split(".")
                t = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
                out.setdefault(int(m[1]), t)
    return out


def node_config(tmp: Path, i: int, redis_port: int, blue: int, green: int) -> Path:
    conf = {
        "listen": {"http": f"127.0.0.1:{free_port()}"},
        "control": {"socket": str(tmp / f"ctl{i}.sock")},
        "state_file": str(tmp / f"state{i}.json"),
        "state_backend": f"redis://127.0.0.1:{redis_port}/0",
        "node": {"id": f"edge-{i}", "address": f"127.0.0.1 (bench node {i})"},
        "access_log": {"enabled": False},
        "apps": {
            "shop": {
                "colors": {
                    "blue": {"upstreams": [f"http://127.0.0.1:{blue}"]},
                    "green": {"upstreams": [f"http://127.0.0.1:{green}"]},
                },
                "health": {"enabled": False},
            }
        },
        "sites": [
            {"hosts": ["a.test"], "https_redirect": False, "routes": [{"path": "/", "app": "shop"}]}
        ],
    }
    path = tmp / f"edge{i}.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


@contextlib.contextmanager
def cluster(tmp: Path, nodes: int) -> Iterator[list[tuple[Proc, int, Path]]]:
    redis_port, blue, green = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        redis_argv = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
        redis_argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
        stack.enter_context(
            running(
                "redis",
                redis_argv,
                log_dir=tmp,
                cpus=None,
                ready=_listening(redis_port),
            )
        )
        for color, port in (("blue", blue), ("green", green)):
            argv = [sys.executable, "-m", "bench.backend", "--http", f"127.0.0.1:{port}"]
            stack.enter_context(
                running(
                    color,
                    [*argv, "--color", color],
                    log_dir=tmp,
                    cpus=None,
                    ready=_listening(port),
                )
            )
        out = []
        for i in range(nodes):
            path = node_config(tmp, i, redis_port, blue, green)
            port = yaml.safe_load(path.read_text())["listen"]["http"].rsplit(":", 1)[1]
            argv = [sys.executable, "-m", "edgeproxy", "serve", "--config", str(path)]
            proc = stack.enter_context(
                running(
                    f"edge{i}",
                    [*argv, "--log-format", "json"],
                    log_dir=tmp,
                    cpus=None,
                    timeout=30,
                    ready=_listening(int(port)),
                )
            )
            out.append((proc, int(port), tmp / f"ctl{i}.sock"))
        yield out


def _listening(port: int) -> Callable[[], bool]:
    return lambda: wait_tcp("127.0.0.1", port, time.monotonic() + 0.2)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def wait_all(sockets: list[Path], generation: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for sock in sockets:
        client = ControlClient(sock)
        while client.app("shop")["generation"] < generation:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{sock}: generation {generation} not applied in {timeout}s")
            time.sleep(0.002)


def run(flips: int, nodes: int, connections: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="edgeproxy-bench-shared-") as tmp,
        cluster(Path(tmp), nodes) as started,
    ):
        sockets = [s for _, _, s in started]
        wrk = ["wrk", "-t1", f"-c{connections}", "-d600s", "--latency", "--timeout=5s"]
        loads = [
            subprocess.Popen(
                [*wrk, "-H", "Host: a.test", f"http://127.0.0.1:{port}/"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _, port, _ in started
        ]
        time.sleep(1.0)
        replies: list[tuple[int, int, float, float]] = []  # (generation, via, sent, replied)
        try:
            for i in range(flips):
                color = "green" if i % 2 == 0 else "blue"
                via = i % nodes
                sent = time.time()
                view = ControlClient(sockets[via]).set("shop", color, 100)
                replies.append((view["generation"], via, sent, time.time()))
                wait_all(sockets, view["generation"])
            time.sleep(0.5)
        finally:
            outputs = []
            for w in loads:
                w.send_signal(signal.SIGINT)  # wrk prints its summary and exits
                outputs.append(w.communicate(timeout=30)[0])
        applied = [applied_times(proc.log_path) for proc, _, _ in started]
    lags: list[float] = []
    remote: list[float] = []
    from_send: list[float] = []
    round_trips: list[float] = []
    for generation, via, sent, replied in replies:
        round_trips.append((replied - sent) * 1000)
        for j, times in enumerate(applied):
            lag = max(0.0, times[generation] - replied) * 1000
            lags.append(lag)
            if j != via:
                remote.append(lag)
                from_send.append((times[generation] - sent) * 1000)
    results = [parse_wrk(out) for out in outputs]
    return {
        "flips": flips,
        "nodes": nodes,
        "connections_per_node": connections,
        "requests": sum(r.requests for r in results),
        "requests_failed": sum(sum(r.errors.values()) for r in results),
        "wrk_errors": [r.errors for r in results],
        "lag_ms_other_nodes": {
            "p50": round(statistics.median(remote), 2),
            "p99": round(pct(remote, 0.99), 2),
            "max": round(max(remote), 2),
        },
        "lag_ms_all_nodes_p99": round(pct(lags, 0.99), 2),
        "other_nodes_applied_ms_after_the_set_was_sent": {
            "p50": round(statistics.median(from_send), 2),
            "p99": round(pct(from_send, 0.99), 2),
        },
        "set_round_trip_ms": {
            "p50": round(statistics.median(round_trips), 2),
            "p99": round(pct(round_trips, 0.99), 2),
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4, help="wrk connections per node")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    log(f"{args.flips} flips through {args.nodes} nodes, {args.connections} connections each")
    result = run(args.flips, args.nodes, args.connections)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
