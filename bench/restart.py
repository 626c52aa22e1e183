"""Crash restart: SIGKILL → first answered request, for edgeproxy and for nginx.

`python -m bench.restart [--runs 20] [--peers edgeproxy,nginx]`

Each peer runs in front of the same backend (bench/peers.py's configs, HTTP
listener) under a supervisor that restarts it at once when it dies, as
systemd's `Restart=always` or compose's `restart: unless-stopped` do (their own
delay, 100 ms by default for both, is not counted). A client sends a request
on a new connection every millisecond. One run: the whole process group gets
SIGKILL (nginx's workers included, like systemd's KillMode=control-group), the
supervisor starts it again, and the gap is the time from the kill to the first
200 answer. The report prints the median and the worst of the runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from bench.peers import (
    Listen,
    answers,
    edgeproxy_argv,
    edgeproxy_conf,
    nginx_argv,
    nginx_proxy_conf,
    start_backend,
)
from bench.procs import BenchError, free_port, log
from bench.tlscert import make_selfsigned


def first_answer(port: int, since: float, timeout: float = 30.0) -> tuple[float, float]:
    """Seconds from `since` until a new connection is accepted (the port listens again: it
    is queued, not refused) and until GET /13 on it is answered 200."""
    request = b"GET /13 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    deadline = since + timeout
    listening: float | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                if listening is None:
                    listening = time.monotonic() - since
                s.sendall(request)
                head = s.recv(64)
            if head.startswith(b"HTTP/1.1 200"):
                return listening, time.monotonic() - since
        except OSError:
            pass
        time.sleep(0.001)
    raise BenchError(f"no answer on port {port} within {timeout:.0f} s of the kill")


def measure(argv: list[str], port: int, runs: int, workdir: Path) -> list[tuple[float, float]]:
    gaps: list[tuple[float, float]] = []
    with (workdir / "peer.log").open("ab") as out:

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)

        proc = spawn()
        try:
            first_answer(port, time.monotonic(), timeout=60)
            for _ in range(runs):
                time.sleep(0.5)
                killed = time.monotonic()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                proc = spawn()  # the supervisor's restart
                gaps.append(first_answer(port, killed))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(20)
    return gaps


@click.command()
@click.option("--runs", default=20, show_default=True, help="Kills per peer.")
@click.option("--peers", default="edgeproxy,nginx", show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), default=None)
def main(runs: int, peers: str, json_out: Path | None) -> None:
    """SIGKILL → first answered request, median and worst of RUNS, per peer."""
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        work = Path(tmp)
        cert = make_selfsigned(work)
        backend_listen = Listen(free_port(), free_port())
        with start_backend("python", work, backend_listen, cert, None) as backend:
            assert backend.http is not None and answers(backend.http + "/13")
            upstream = backend.http.removeprefix("http://")
            for peer in [p.strip() for p in peers.split(",") if p.strip()]:
                pdir = work / peer
                pdir.mkdir()
                listen = Listen(free_port(), free_port())
                conf = pdir / "peer.conf"
                if peer == "nginx":
                    conf.write_text(nginx_proxy_conf(pdir, listen, upstream, cert))
                    argv = nginx_argv(pdir, conf)
                elif peer == "edgeproxy":
                    conf.write_text(edgeproxy_conf(pdir, listen, {"blue": upstream}, cert))
                    argv = edgeproxy_argv(conf)
                else:
                    raise click.BadParameter(f"unknown peer {peer!r} (edgeproxy or nginx)")
                log(f"{peer}: {runs} kills")
                results[peer] = measure(argv, listen.http, runs, pdir)
    click.echo(
        "| peer | runs | listening again: median / worst (ms) | first answer: median / worst "
        "(ms) | best answer (ms) |"
    )
    click.echo("|---|---|---|---|---|")
    for peer, gaps in results.items():
        up = [g[0] * 1000 for g in gaps]
        ms = [g[1] * 1000 for g in gaps]
        click.echo(
            f"| {peer} | {len(ms)} | {statistics.median(up):.0f} / {max(up):.0f} | "
            f"{statistics.median(ms):.0f} / {max(ms):.0f} | {min(ms):.0f} |"
        )
    if json_out is not None:
        json_out.write_text(
            json.dumps({"runs": runs, "listening_and_answered_s": results}, indent=2)
        )


if __name__ == "__main__":
    sys.exit(main())
