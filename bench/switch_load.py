"""`bench switch`, `bench drain`, `bench canary`: blue/green changes under load.

Each response is counted by status and color; the stage and the load client
live in `bench.stage`, the pure analysis in `bench.switch_analysis`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import BenchError, log
from bench.stage import Stage, StageOptions, load, stage
from bench.switch_analysis import (
    Flip,
    analyze_switch,
    canary_split,
    counts,
    same_color_share,
    timeline,
)
from switchctl.client import ClientError


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
