"""The stage for `switch`, `drain` and `canary`: a two-color edgeproxy and the load client.

`stage()` starts two uvloop backends (one per color, answering their color name
and `X-Color`) on the load core and edgeproxy on the proxy core, or attaches to
a running edgeproxy (`--target URL --socket PATH`). `load()` runs
`bench.loadgen` in its own process: the control calls made here are then not
delayed by the client's event loop, and both sides stamp `time.monotonic()`
(CLOCK_MONOTONIC, one clock for every process on the machine).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import Listen, answers, edgeproxy_argv, edgeproxy_conf
from bench.procs import BenchError, Proc, free_port, log, pinned, prioritize, running
from bench.switch_analysis import Response, load_records
from bench.tlscert import make_selfsigned
from switchctl.client import ClientError, ControlClient

COLORS = ("blue", "green")


@dataclass
class Stage:
    """A proxy with a two-color app, its control client and (when local) its process."""

    url: str
    client: ControlClient
    app: str
    colors: tuple[str, str]
    proxy: Proc | None = None


@dataclass(frozen=True)
class StageOptions:
    scheme: str = "http"
    proxy_cpus: str = "0"
    load_cpus: str = "1"
    target: str | None = None
    """URL of a running edgeproxy (staging); needs `socket`."""
    socket: str | None = None
    app: str = "bench"
    colors: tuple[str, str] = COLORS


def _wait_healthy(client: ControlClient, app: str, colors: Sequence[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(ClientError):
            view = dict(client.app(app))
            if all(view["colors"].get(c, {}).get("healthy") for c in colors):
                return
        time.sleep(0.1)
    raise BenchError(
        f"colors {', '.join(colors)} of {app} not healthy after {timeout:.0f} s: {view}"
    )


@contextlib.contextmanager
def stage(opts: StageOptions, workdir: Path) -> Iterator[Stage]:
    """Two python backends (blue, green) on the load core and edgeproxy on the proxy core."""
    if opts.target:
        if not opts.socket:
            raise BenchError("--target needs --socket: the control socket of that edgeproxy")
        client = ControlClient(opts.socket)
        _wait_healthy(client, opts.app, opts.colors, 10)
        yield Stage(opts.target.rstrip("/"), client, opts.app, opts.colors)
        return
    cert = make_selfsigned(workdir)
    with contextlib.ExitStack() as stack:
        upstreams = {}
        for color in opts.colors:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "bench.backend", "--http", f"127.0.0.1:{port}"]
            stack.enter_context(
                running(
                    f"backend-{color}",
                    [*argv, "--color", color],
                    log_dir=workdir,
                    cpus=opts.load_cpus,
                    ready=functools.partial(answers, url + "/health"),
                )
            )
            upstreams[color] = f"127.0.0.1:{port}"
        listen = Listen(free_port(), free_port())
        conf = workdir / "edgeproxy.yml"
        conf.write_text(edgeproxy_conf(workdir, listen, upstreams, cert, app=opts.app))
        base = (
            f"https://127.0.0.1:{listen.https}"
            if opts.scheme == "https"
            else f"http://127.0.0.1:{listen.http}"
        )
        proxy = stack.enter_context(
            running(
                "edgeproxy",
                edgeproxy_argv(conf),
                log_dir=workdir,
                cpus=opts.proxy_cpus,
                ready=lambda: answers(base + "/health"),
                timeout=20,
            )
        )
        client = ControlClient(workdir / "control.sock")
        try:
            client.app(opts.app)
        except ClientError as e:
            raise BenchError(f"edgeproxy's control API does not answer: {e}") from e
        _wait_healthy(client, opts.app, opts.colors, 15)
        log(
            f"pinning: edgeproxy on core {opts.proxy_cpus}; backends and the load client "
            f"on core {opts.load_cpus}"
        )
        yield Stage(base, client, opts.app, opts.colors, proxy)


@dataclass
class LoadRun:
    """The load client process and the file it writes its records to when it stops."""

    popen: subprocess.Popen[bytes]
    out: Path

    def records(self) -> tuple[dict[str, Any], list[Response]]:
        if not self.out.exists():
            raise BenchError(
                f"the load client wrote no results (exit status {self.popen.returncode})"
            )
        doc = json.loads(self.out.read_text())
        return doc, load_records(doc)


@contextlib.contextmanager
def load(
    url: str, groups: Sequence[str], workdir: Path, cpus: str | None, sources: int = 0
) -> Iterator[LoadRun]:
    """Run the load client until the block ends (SIGTERM); read `.records()` afterwards."""
    out = workdir / f"load-{time.monotonic_ns()}.json"
    argv = [sys.executable, "-m", "bench.loadgen", "--url", url, "--out", str(out)]
    for g in groups:
        argv += ["--group", g]
    if sources:
        argv += ["--sources", str(sources)]
    run = LoadRun(subprocess.Popen(pinned(cpus, argv), start_new_session=True), out)
    prioritize(run.popen.pid)
    try:
        yield run
    finally:
        if run.popen.poll() is None:
            run.popen.send_signal(signal.SIGTERM)
        try:
            run.popen.wait(60)
        except subprocess.TimeoutExpired:
            run.popen.kill()
            run.popen.wait()
