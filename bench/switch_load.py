"""`bench switch`, `bench drain`, `bench canary`: blue/green changes under load.

The load comes from `bench.loadgen` in its own process (pinned to the load core),
so the control calls made here are not delayed by the client's event loop; both
stamp `time.monotonic()`, which is one clock for every process on the machine.
Each response is counted by status and color (the backends answer their color
name and send `X-Color`).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peers import Listen, answers, edgeproxy_argv, edgeproxy_conf
from bench.procs import BenchError, Proc, free_port, log, pinned, prioritize, running
from bench.stats import binomial_ci95, median, percentile
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


# --- the load client process ------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    t_sent: float
    t_done: float
    status: int
    color: str
    group: int
    source: int
    error: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def load_records(doc: dict[str, Any]) -> list[Response]:
    r = doc["records"]
    cols = (r["t_sent"], r["t_done"], r["status"], r["color"], r["group"], r["source"], r["error"])
    return [Response(*row) for row in zip(*cols, strict=True)]


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


# --- analysis (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Flip:
    color: str
    t_sent: float
    t_reply: float
    ok: bool
    generation: int | None
    error: str | None = None


def counts(responses: Sequence[Response]) -> dict[str, int]:
    """`"200 blue": n`, `"failed ConnectionResetError": n`, …"""
    c: Counter[str] = Counter()
    for r in responses:
        if r.status:
            c[f"{r.status} {r.color or '?'}"] += 1
        else:
            c[f"failed {r.error.split(':', 1)[0]}"] += 1
    return dict(sorted(c.items(), key=lambda kv: -kv[1]))


def _ms_stats(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "median_ms": median(ms),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


def analyze_switch(responses: Sequence[Response], flips: Sequence[Flip]) -> dict[str, Any]:
    """Failures, flip rate, set-reply → first-new-color delay, and stale responses.

    A response is *stale* when its whole exchange (sent → done) lies after a set
    reply and before the next set was sent, yet it came from another color: the
    proxy cannot have seen any other state in between.
    """
    by_done = sorted(responses, key=lambda r: r.t_done)
    done_times = [r.t_done for r in by_done]
    by_sent = sorted(responses, key=lambda r: r.t_sent)
    sent_times = [r.t_sent for r in by_sent]
    delays: list[float] = []
    never: list[int] = []
    stale: list[tuple[Response, Flip]] = []
    ok_flips = [f for f in flips if f.ok]
    for i, flip in enumerate(ok_flips):
        j = bisect.bisect_left(done_times, flip.t_reply)
        while j < len(by_done) and not (by_done[j].ok and by_done[j].color == flip.color):
            j += 1
        if j < len(by_done):
            delays.append(by_done[j].t_done - flip.t_reply)
        else:
            never.append(i)
        end = ok_flips[i + 1].t_sent if i + 1 < len(ok_flips) else float("inf")
        lo = bisect.bisect_left(sent_times, flip.t_reply)
        hi = bisect.bisect_left(sent_times, end)
        for r in by_sent[lo:hi]:
            if r.ok and r.color != flip.color and r.t_done < end:
                stale.append((r, flip))
    failures = [r for r in responses if not r.ok]
    span = flips[-1].t_reply - flips[0].t_sent if flips else 0.0
    t0 = min(sent_times) if sent_times else 0.0
    t1 = max(done_times) if done_times else 0.0
    return {
        "responses": len(responses),
        "rps": len(responses) / (t1 - t0) if t1 > t0 else 0.0,
        "counts": counts(responses),
        "failures": len(failures),
        "failure_examples": [
            {"t": round(r.t_sent - t0, 4), "status": r.status, "error": r.error}
            for r in failures[:10]
        ],
        "switches": len(flips),
        "switches_refused": [asdict(f) for f in flips if not f.ok],
        "switches_per_second": len(flips) / span if span > 0 else 0.0,
        "set_reply": _ms_stats([f.t_reply - f.t_sent for f in flips]),
        "reply_to_first_new_color": _ms_stats(delays),
        "switches_without_new_color": never,
        "stale_responses": len(stale),
        "stale_examples": [
            {
                "group": r.group,
                "color": r.color,
                "sent_after_reply_ms": round(1000 * (r.t_sent - f.t_reply), 3),
                "took_ms": round(1000 * (r.t_done - r.t_sent), 3),
            }
            for r, f in stale[:10]
        ],
    }


def timeline(
    responses: Sequence[Response], marks: Sequence[float], t0: float, bucket: float = 0.1
) -> dict[str, Any]:
    """Responses per `bucket` seconds by color (failures apart), and mark times, from t0."""
    if not responses:
        return {"bucket_seconds": bucket, "series": {}, "switches": []}
    n = int((max(r.t_done for r in responses) - t0) / bucket) + 1
    series: dict[str, list[int]] = {}
    for r in responses:
        name = r.color if r.ok else "failed"
        i = int((r.t_done - t0) / bucket)
        if 0 <= i < n:
            series.setdefault(name, [0] * n)[i] += 1
    return {
        "bucket_seconds": bucket,
        "series": dict(sorted(series.items())),
        "switches": [round(m - t0, 4) for m in marks],
    }


def canary_split(responses: Sequence[Response], color: str, weight: int) -> dict[str, Any]:
    ok = [r for r in responses if r.ok]
    hits = sum(1 for r in ok if r.color == color)
    lo, hi = binomial_ci95(hits, len(ok))
    share = hits / len(ok) if ok else float("nan")
    return {
        "clients": len({r.source for r in responses}),
        "responses": len(responses),
        "failures": len(responses) - len(ok),
        "color": color,
        "weight_percent": weight,
        "observed_percent": 100 * share,
        "ci95_percent": [100 * lo, 100 * hi],
        "within_ci": lo <= weight / 100 <= hi,
        "error_points": 100 * share - weight,
    }


def same_color_share(first: Sequence[Response], second: Sequence[Response]) -> float:
    """Share of clients (by source address) that got the same color in both passes."""
    a = {r.source: r.color for r in first if r.ok}
    b = {r.source: r.color for r in second if r.ok}
    both = a.keys() & b.keys()
    return sum(1 for s in both if a[s] == b[s]) / len(both) if both else float("nan")


# --- commands ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchOptions:
    switches: int = 20
    interval: float = 0.25
    workers: int = 50
    close_share: float = 0.5
    """Share of workers opening a new connection per request (the rest keep alive)."""
    warmup: float = 1.0
    tail: float = 1.0


def _groups(workers: int, close_share: float, path: str) -> list[str]:
    closing = round(workers * close_share)
    out = []
    if workers - closing:
        out.append(f"keepalive:{workers - closing}:{path}")
    if closing:
        out.append(f"close:{closing}:{path}")
    return out


def _set(st: Stage, color: str, weight: int) -> Flip:
    t_sent = time.monotonic()
    try:
        view = st.client.set(st.app, color, weight)
        return Flip(color, t_sent, time.monotonic(), True, view["generation"])
    except ClientError as e:
        return Flip(color, t_sent, time.monotonic(), False, None, str(e))


def run_switch(opts: SwitchOptions, sopts: StageOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-switch-") as tmp:
        workdir = Path(tmp)
        with stage(sopts, workdir) as st:
            first, second = st.colors
            _set(st, first, 100)
            groups = _groups(opts.workers, opts.close_share, "/color")
            log(f"load: {', '.join(groups)} against {st.url}; {opts.switches} switches")
            flips: list[Flip] = []
            with load(st.url, groups, workdir, sopts.load_cpus) as proc:
                time.sleep(opts.warmup)
                for i in range(opts.switches):
                    flip = _set(st, second if i % 2 == 0 else first, 100)
                    flips.append(flip)
                    if not flip.ok:
                        log(f"switch {i + 1} to {flip.color} refused: {flip.error}")
                    time.sleep(opts.interval)
                time.sleep(opts.tail)
            doc, responses = proc.records()
            _set(st, first, 100)  # leave the app as found (it matters with --target)
    result = analyze_switch(responses, flips)
    t0 = doc["started"]
    return {
        "command": "switch",
        "options": asdict(opts),
        "stage": asdict(sopts),
        "groups": groups,
        "result": result,
        "flips": [asdict(f) | {"t_sent": f.t_sent - t0, "t_reply": f.t_reply - t0} for f in flips],
        "timeline": timeline(
            responses, [f.t_reply for f in flips], t0, max(0.01, min(0.1, opts.interval / 4))
        ),
        "title": f"switch under load: {len(flips)} flips, {opts.workers} clients",
    }


@dataclass(frozen=True)
class DrainOptions:
    workers: int = 20
    slow: int = 10
    """Long requests in flight on the old color when the drain starts."""
    slow_ms: int = 2000
    timeout: float = 5.0
    """Drain deadline of the first phase (longer than the slow requests: they finish)."""
    cut_slow_ms: int = 5000
    cut_timeout: float = 1.0
    """Drain deadline of the second phase (shorter than the slow requests: they are cut)."""


def _drain_phase(
    st: Stage,
    old: str,
    new: str,
    slow_ms: int,
    timeout: float,
    opts: DrainOptions,
    workdir: Path,
    cpus: str,
) -> dict[str, Any]:
    groups = [f"keepalive:{opts.workers}:/color", f"keepalive:{opts.slow}:/slow/{slow_ms}:1"]
    marks: list[float] = []
    with load(st.url, groups, workdir, cpus) as proc:
        time.sleep(0.5)  # the slow requests are in flight on `old` now
        flip = _set(st, new, 100)
        t_drain = time.monotonic()
        try:
            view = st.client.drain(st.app, old, timeout)
        except ClientError as e:
            raise BenchError(f"drain {old} refused: {e}") from e
        t_drain_reply = time.monotonic()
        in_flight_at_start = view["colors"].get(old, {}).get("in_flight")
        marks += [flip.t_reply, t_drain_reply]
        t_done = None
        while time.monotonic() < t_drain + timeout + 10:
            if old not in st.client.app(st.app)["draining"]:
                t_done = time.monotonic()
                break
            time.sleep(0.02)
        time.sleep(0.3)
    doc, responses = proc.records()
    slow = [r for r in responses if r.group == 1]
    late_old = [r for r in responses if r.ok and r.color == old and r.t_sent > t_drain_reply]
    return {
        "old": old,
        "new": new,
        "slow_ms": slow_ms,
        "drain_timeout_s": timeout,
        "in_flight_at_drain_start": in_flight_at_start,
        "drain_finished_after_s": None if t_done is None else t_done - t_drain,
        "slow_requests": counts(slow),
        "slow_done_after_drain_start_s": sorted(round(r.t_done - t_drain, 3) for r in slow),
        "steady_requests": counts([r for r in responses if r.group == 0]),
        "sent_to_old_after_drain": len(late_old),
        "timeline": timeline(responses, marks, doc["started"]),
    }


def run_drain(opts: DrainOptions, sopts: StageOptions) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-drain-") as tmp:
        workdir = Path(tmp)
        with stage(sopts, workdir) as st:
            a, b = st.colors
            _set(st, a, 100)
            log(
                f"drain phase 1: {opts.slow} requests of {opts.slow_ms} ms on {a}, "
                f"drain timeout {opts.timeout:g} s"
            )
            finish = _drain_phase(
                st, a, b, opts.slow_ms, opts.timeout, opts, workdir, sopts.load_cpus
            )
            log(
                f"drain phase 2: {opts.slow} requests of {opts.cut_slow_ms} ms on {b}, "
                f"drain timeout {opts.cut_timeout:g} s"
            )
            cut = _drain_phase(
                st, b, a, opts.cut_slow_ms, opts.cut_timeout, opts, workdir, sopts.load_cpus
            )
    return {
        "command": "drain",
        "options": asdict(opts),
        "stage": asdict(sopts),
        "finish_in_time": finish,
        "cut_at_deadline": cut,
        "timeline": finish["timeline"],
        "title": "drain under load (phase 1: in-flight requests finish)",
    }


@dataclass(frozen=True)
class CanaryOptions:
    weight: int = 10
    clients: int = 10_000
    workers: int = 50


def run_canary(opts: CanaryOptions, sopts: StageOptions) -> dict[str, Any]:
    per_worker = max(1, opts.clients // opts.workers)
    clients = per_worker * opts.workers
    with tempfile.TemporaryDirectory(prefix="edgeproxy-bench-canary-") as tmp:
        workdir = Path(tmp)
        with stage(sopts, workdir) as st:
            a, b = st.colors
            _set(st, a, 100)
            flip = _set(st, b, opts.weight)
            if not flip.ok:
                raise BenchError(f"set {b} --weight {opts.weight} refused: {flip.error}")
            passes = []
            for n in (1, 2):
                log(f"canary pass {n}: {clients} fresh clients, one request each")
                group = f"close:{opts.workers}:/color:{per_worker}"
                with load(st.url, [group], workdir, sopts.load_cpus, sources=clients) as proc:
                    proc.popen.wait()
                passes.append(proc.records()[1])
            _set(st, a, 100)  # end the canary: the active color takes everything again
    return {
        "command": "canary",
        "options": asdict(opts),
        "stage": asdict(sopts),
        "split": canary_split(passes[0], b, opts.weight),
        "second_pass_split": canary_split(passes[1], b, opts.weight),
        "same_color_both_passes": same_color_share(passes[0], passes[1]),
    }
