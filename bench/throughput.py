"""`bench throughput`: req/s, p99, CPU and RSS per peer, scheme, body size and connection mode.

All peers run at once, idle until their turn, pinned to the proxy core; wrk and
the backend share the load core. Configurations alternate within each round
(the order rotates every round) so slow drift in background load spreads over
all of them instead of landing on one.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import wrk
from bench.peers import Listen, Target, start_backend, start_peer
from bench.procs import (
    BenchError,
    SystemSample,
    children_cpu_seconds,
    cpu_percent,
    cpu_seconds,
    free_port,
    log,
    other_cpu_percent,
)
from bench.stats import median, ratio
from bench.tlscert import make_selfsigned

BODY_PATHS = {"13": "/13", "16k": "/16k"}
MODES = ("keepalive", "close")
SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Case:
    peer: str
    scheme: str
    body: str
    """`13`, `16k`, or `url` for a --target URL taken as given."""
    mode: str
    """`keepalive` or `close` (a new connection per request)."""

    @property
    def config(self) -> str:
        """What the case measures, without the peer: the column ratios compare across."""
        return f"{self.scheme} {self.body} {self.mode}"


@dataclass(frozen=True)
class Measurement:
    case: Case
    round: int
    result: wrk.WrkResult
    proxy_cpu_pct: float | None
    proxy_cpu_s: float | None
    proxy_rss_kib: int | None
    backend_cpu_pct: float | None
    backend_cpu_s: float | None
    wrk_cpu_pct: float
    other_cpu_pct: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"]["p99_ms"] = self.result.p99_ms
        return d


@dataclass(frozen=True)
class Summary:
    case: Case
    rounds: int
    rps_median: float
    rps_min: float
    rps_max: float
    p99_ms_median: float
    proxy_cpu_pct: float | None
    proxy_rss_mib: float | None
    req_per_cpu_s: float | None
    """Requests per CPU-second of the proxy: less sensitive to a busy load core."""
    backend_cpu_pct: float | None
    req_per_backend_cpu_s: float | None
    wrk_cpu_pct: float
    other_cpu_pct: float
    errors: int


@dataclass
class Options:
    peers: Sequence[str]
    schemes: Sequence[str] = SCHEMES
    bodies: Sequence[str] = ("13", "16k")
    modes: Sequence[str] = MODES
    rounds: int = 3
    duration: int = 5
    warmup: int = 1
    connections: int = 50
    backend: str = "nginx"
    proxy_cpus: str = "0"
    load_cpus: str = "1"
    wrk_cpus: str | None = None
    """Cores for wrk when not the load cores (the `backends` check gives wrk its own core)."""
    targets: Sequence[tuple[str, str]] = ()
    """(name, URL) pairs: measure these instead of starting local peers."""
    skipped: dict[str, str] = field(default_factory=dict)


def _opt_median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return median(vals) if vals else None


def summarize(measurements: Sequence[Measurement]) -> list[Summary]:
    """One summary per case, in the order cases first appear."""
    by_case: dict[Case, list[Measurement]] = {}
    for m in measurements:
        by_case.setdefault(m.case, []).append(m)
    out = []
    for case, ms in by_case.items():
        rps = [m.result.rps for m in ms]
        rss = [m.proxy_rss_kib for m in ms if m.proxy_rss_kib is not None]
        per_cpu = [m.result.requests / m.proxy_cpu_s if m.proxy_cpu_s else None for m in ms]
        per_backend_cpu = [
            m.result.requests / m.backend_cpu_s if m.backend_cpu_s else None for m in ms
        ]
        out.append(
            Summary(
                case=case,
                rounds=len(ms),
                rps_median=median(rps),
                rps_min=min(rps),
                rps_max=max(rps),
                p99_ms_median=median([m.result.p99_ms for m in ms]),
                proxy_cpu_pct=_opt_median([m.proxy_cpu_pct for m in ms]),
                proxy_rss_mib=max(rss) / 1024 if rss else None,
                req_per_cpu_s=_opt_median(per_cpu),
                backend_cpu_pct=_opt_median([m.backend_cpu_pct for m in ms]),
                req_per_backend_cpu_s=_opt_median(per_backend_cpu),
                wrk_cpu_pct=median([m.wrk_cpu_pct for m in ms]),
                other_cpu_pct=median([m.other_cpu_pct for m in ms]),
                errors=sum(m.result.error_count for m in ms),
            )
        )
    return out


def ratios(
    summaries: Sequence[Summary],
    subject: str = "edgeproxy",
    baselines: Sequence[str] = ("nginx", "haproxy"),
) -> list[dict[str, Any]]:
    """Per config: subject ÷ each baseline for median req/s, p99 and req per CPU-second."""
    index = {(s.case.peer, s.case.config): s for s in summaries}
    configs = list(dict.fromkeys(s.case.config for s in summaries))
    rows = []
    for config in configs:
        mine = index.get((subject, config))
        if mine is None:
            continue
        row: dict[str, Any] = {"config": config, "subject": subject}
        for base in baselines:
            other = index.get((base, config))
            row[f"rps_vs_{base}"] = ratio(mine.rps_median, other.rps_median if other else None)
            row[f"p99_vs_{base}"] = ratio(
                mine.p99_ms_median, other.p99_ms_median if other else None
            )
            row[f"per_cpu_vs_{base}"] = ratio(
                mine.req_per_cpu_s, other.req_per_cpu_s if other else None
            )
        rows.append(row)
    return rows


def cases_for(opts: Options, peers: Sequence[Target]) -> list[Case]:
    cases = []
    for peer in peers:
        for scheme in opts.schemes:
            if peer.url(scheme, "/") is None:
                continue
            bodies = ["url"] if opts.targets else list(opts.bodies)
            for body in bodies:
                for mode in opts.modes:
                    cases.append(Case(peer.name, scheme, body, mode))
    return cases


def rotated(cases: Sequence[Case], round_no: int) -> list[Case]:
    """The cases in a different order each round (rotation by round x a stride)."""
    if not cases:
        return []
    k = (round_no * max(1, len(cases) // 3 + 1)) % len(cases)
    return [*cases[k:], *cases[:k]]


def measure(
    case: Case,
    target: Target,
    backend: Target | None,
    opts: Options,
    round_no: int,
    duration: int,
) -> Measurement:
    path = "" if case.body == "url" else BODY_PATHS[case.body]
    url = target.url(case.scheme, path)
    assert url is not None
    procs = [p for p in (target.proc, backend.proc if backend else None) if p is not None]
    before = [p.sample() for p in procs]
    sys_before = SystemSample.take()
    kids_before = children_cpu_seconds()
    result = wrk.run(
        url,
        cpus=opts.wrk_cpus or opts.load_cpus or None,
        connections=opts.connections,
        duration=duration,
        close=case.mode == "close",
    )
    kids = children_cpu_seconds() - kids_before
    sys_after = SystemSample.take()
    after = [p.sample() for p in procs]
    samples = dict(zip([p.name for p in procs], zip(before, after, strict=True), strict=True))
    proxy = samples.get(target.proc.name) if target.proc else None
    back = samples.get(backend.proc.name) if backend and backend.proc else None
    ours = kids + sum(cpu_seconds(b, a) for b, a in samples.values())
    wall = sys_after.at - sys_before.at
    return Measurement(
        case=case,
        round=round_no,
        result=result,
        proxy_cpu_pct=cpu_percent(*proxy) if proxy else None,
        proxy_cpu_s=cpu_seconds(*proxy) if proxy else None,
        proxy_rss_kib=proxy[1].rss_kib if proxy else None,
        backend_cpu_pct=cpu_percent(*back) if back else None,
        backend_cpu_s=cpu_seconds(*back) if back else None,
        wrk_cpu_pct=100.0 * kids / wall if wall > 0 else math.nan,
        other_cpu_pct=other_cpu_percent(sys_before, sys_after, ours),
    )


def remote_targets(pairs: Sequence[tuple[str, str]]) -> list[Target]:
    out = []
    for name, url in pairs:
        scheme = urlsplit(url).scheme
        if scheme not in SCHEMES:
            raise BenchError(f"--target {url!r}: use an http:// or https:// URL")
        out.append(
            Target(name, url if scheme == "http" else None, url if scheme == "https" else None)
        )
    return out


def run(
    opts: Options,
    workdir: Path | None = None,
    on_ready: Callable[[list[Target]], None] | None = None,
) -> dict[str, Any]:
    """Start the peers, run every case `rounds` times, stop everything; return the JSON doc.

    `on_ready(targets)` runs once every peer answers, before the first measurement.
    """
    started = time.time()
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeproxy-bench-"))
            )
        backend: Target | None = None
        if opts.targets:
            peers = remote_targets(opts.targets)
            log(f"measuring remote targets only: {', '.join(u for _, u in opts.targets)}")
        else:
            cert = make_selfsigned(workdir)
            backend = stack.enter_context(
                start_backend(
                    opts.backend, workdir, Listen(free_port(), free_port()), cert, opts.load_cpus
                )
            )
            wrk_cpus = opts.wrk_cpus or opts.load_cpus
            log(
                f"pinning: proxies on core {opts.proxy_cpus} (taskset -c {opts.proxy_cpus}); "
                f"wrk on core {wrk_cpus}, the {opts.backend} backend on core {opts.load_cpus}"
            )
            peers = []
            for kind in opts.peers:
                try:
                    peers.append(
                        stack.enter_context(
                            start_peer(
                                kind,
                                workdir,
                                Listen(free_port(), free_port()),
                                backend,
                                cert,
                                opts.proxy_cpus,
                            )
                        )
                    )
                except BenchError as e:
                    opts.skipped[kind] = str(e).splitlines()[0]
                    log(f"skipping {kind}: {e}")
        by_name = {p.name: p for p in peers}
        if on_ready is not None:
            on_ready(peers)
        cases = cases_for(opts, peers)
        log(
            f"{len(cases)} configurations x {opts.rounds} rounds x {opts.duration:g} s "
            f"≈ {len(cases) * opts.rounds * (opts.duration + 0.5) / 60:.1f} min"
        )
        measurements: list[Measurement] = []
        failures: list[dict[str, Any]] = []
        for round_no in range(opts.rounds):
            for i, case in enumerate(rotated(cases, round_no)):
                target = by_name[case.peer]
                try:
                    if round_no == 0 and opts.warmup > 0:
                        measure(case, target, backend, opts, -1, opts.warmup)
                    m = measure(case, target, backend, opts, round_no, opts.duration)
                except BenchError as e:
                    # One broken run (a proxy that crashed, wrk that could not connect)
                    # must not throw away the others: record it and go on.
                    failures.append({"case": asdict(case), "round": round_no, "error": str(e)})
                    log(f"round {round_no + 1} {case.peer} {case.config} failed: {e}")
                    if target.proc is not None and target.proc.popen.poll() is not None:
                        log(f"{case.peer} has exited:\n{target.proc.log_tail()}")
                    continue
                measurements.append(m)
                cpu = f", proxy CPU {m.proxy_cpu_pct:.0f}%" if m.proxy_cpu_pct is not None else ""
                log(
                    f"round {round_no + 1}/{opts.rounds} [{i + 1}/{len(cases)}] "
                    f"{case.peer:<13} {case.config:<20} {m.result.rps:>9,.0f} req/s  "
                    f"p99 {m.result.p99_ms:.2f} ms{cpu}, other load {m.other_cpu_pct:.0f}%"
                    + (f", {m.result.error_count} errors" if m.result.error_count else "")
                )
    summaries = summarize(measurements)
    return {
        "command": "throughput",
        "started": started,
        "finished": time.time(),
        "options": {k: v for k, v in asdict(opts).items() if k != "skipped"},
        "pinning": {
            "proxies": f"taskset -c {opts.proxy_cpus}",
            "wrk_and_backend": f"taskset -c {opts.load_cpus}",
        },
        "skipped": opts.skipped,
        "failed_runs": failures,
        "summaries": [asdict(s) for s in summaries],
        "ratios": ratios(summaries),
        "ratios_access_log": ratios(summaries, subject="edgeproxy-log"),
        "measurements": [m.to_json() for m in measurements],
    }
