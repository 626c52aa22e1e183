"""Flips through any of several edge nodes sharing one switch state in Redis, under load.

`python -m bench.shared_flips [--flips 100] [--nodes 3] [--workers 6] [--out FILE]`

Starts a redis-server, two `bench.backend` colors and N `edgeproxy serve`
processes with `state_backend` on loopback; keep-alive load goes to every
node while `set` alternates blue/green through node i mod N. For each flip,
one poller thread per node reads the node's generation from its control
socket in a tight loop; a node's lag is the time from the reply to the
`set` until its poller first saw the new generation (an upper bound: it
includes up to one poll round trip). Prints and writes the lag percentiles
and every failed request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench.procs import Proc, free_port, log, running, wait_tcp
from switchctl.client import ControlClient


class Load:
    """Keep-alive GET loops, spread over the nodes; counts answers and failures."""

    def __init__(self, ports: list[int], workers: int) -> None:
        self.ports = [ports[i % len(ports)] for i in range(workers)]
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(p,)) for p in self.ports]

    def _run(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "a.test"})
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{port}: HTTP {resp.status}")
            except (OSError, http.client.HTTPException) as e:
                self.failed.append(f"{port}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.close()


class Poller:
    """Reads one node's generation in a loop; `seen(g)` is when it first showed `g` or more."""

    def __init__(self, socket: Path) -> None:
        self.client = ControlClient(socket)
        self.first: dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        top = -1
        while not self.stop.is_set():
            generation = self.client.app("shop")["generation"]
            now = time.monotonic()
            for g in range(top + 1, generation + 1):
                self.first.setdefault(g, now)
            top = max(top, generation)

    def seen(self, generation: int, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        while generation not in self.first:
            if time.monotonic() > deadline:
                raise TimeoutError(f"generation {generation} never showed on {self.client}")
            time.sleep(0.001)
        return self.first[generation]


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
                    [*argv, "--log-format", "text"],
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


def run(flips: int, nodes: int, workers: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="edgeproxy-bench-shared-") as tmp,
        cluster(Path(tmp), nodes) as started,
    ):
        sockets = [s for _, _, s in started]
        pollers = [Poller(s) for s in sockets]
        load = Load([p for _, p, _ in started], workers)
        for t in [*load.threads, *(p.thread for p in pollers)]:
            t.start()
        time.sleep(1.0)
        lags: list[float] = []
        remote: list[float] = []
        try:
            for i in range(flips):
                color = "green" if i % 2 == 0 else "blue"
                via = i % nodes
                view = ControlClient(sockets[via]).set("shop", color, 100)
                replied = time.monotonic()
                for j, poller in enumerate(pollers):
                    lag = max(0.0, poller.seen(view["generation"]) - replied) * 1000
                    lags.append(lag)
                    if j != via:
                        remote.append(lag)
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            load.stop.set()
            for p in pollers:
                p.stop.set()
            for t in [*load.threads, *(p.thread for p in pollers)]:
                t.join(10)
    return {
        "flips": flips,
        "nodes": nodes,
        "workers": workers,
        "requests_ok": load.ok,
        "requests_failed": len(load.failed),
        "failures": load.failed[:20],
        "lag_ms_other_nodes": {
            "p50": round(statistics.median(remote), 2),
            "p99": round(pct(remote, 0.99), 2),
            "max": round(max(remote), 2),
        },
        "lag_ms_all_nodes_p99": round(pct(lags, 0.99), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=6, help="keep-alive load threads")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    log(f"{args.flips} flips through {args.nodes} nodes under {args.workers} load threads")
    result = run(args.flips, args.nodes, args.workers)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
