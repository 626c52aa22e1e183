"""`python -m bench.h2`: HTTP/2 vs HTTP/1.1 over TLS through edgeproxy and nginx, with h2load.

Both proxies run at once (1 nginx worker with `listen ... ssl http2`, one
edgeproxy process) in front of the same nginx backend (HTTP/1.1 keep-alive
upstream), pinned to the proxy core; h2load and the backend share the other.
For each round, each peer, body (13 B, 16 KiB) and protocol:

- h2:  `h2load -c 10 -m 10` (10 connections, 10 concurrent streams each);
- h1:  `h2load --h1 -c 10 -m 1` (10 keep-alive connections, one request in
  flight each: h2load's `-m` means pipelining over HTTP/1.1, which no browser does).

Reported per case (median of the rounds): requests/s, p99 latency (from
h2load's per-request log), and requests per proxy CPU-second (the CPU the
proxy process used during the run, from /proc). Configurations rotate every
round so background drift spreads over all of them.

    .venv/bin/python -m bench.h2 [--rounds 3] [--requests 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.peers import (
    Listen,
    Target,
    answers,
    edgeproxy_argv,
    edgeproxy_conf,
    nginx_argv,
    nginx_proxy_conf,
    start_backend,
)
from bench.procs import BenchError, ProcSample, cpu_seconds, free_port, log, running
from bench.stats import median
from bench.tlscert import make_selfsigned

BODIES = {"13": "/13", "16k": "/16k"}
PROTOS = ("h2", "h1")
PEERS = ("edgeproxy", "nginx")


@dataclass(frozen=True)
class Run:
    peer: str
    proto: str
    body: str
    round: int
    requests: int
    failed: int
    seconds: float
    rps: float
    p99_ms: float
    cpu_s: float

    @property
    def per_cpu_second(self) -> float:
        return self.requests / self.cpu_s if self.cpu_s > 0 else 0.0


def h2load_argv(url: str, proto: str, requests: int, log_file: Path) -> list[str]:
    argv = ["h2load", "-n", str(requests), "-c", "10", "--log-file", str(log_file)]
    argv += ["-m", "10"] if proto == "h2" else ["--h1", "-m", "1"]
    return [*argv, url]


def parse_h2load(out: str) -> tuple[int, int, float, float]:
    """(succeeded, failed, seconds, req/s) from h2load's summary."""
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out)
    done = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out
    )
    if m is None or done is None:
        raise BenchError(f"cannot read h2load's output:\n{out[-2000:]}")
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    return int(done.group(1)), int(done.group(2)), seconds, float(m.group(3))


def p99_ms(log_file: Path) -> float:
    """The 99th percentile of h2load's per-request times (third column, microseconds)."""
    times = sorted(int(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line)
    if not times:
        return 0.0
    return times[min(len(times) - 1, int(len(times) * 0.99))] / 1000


def nginx_h2_conf(workdir: Path, listen: Listen, upstream: str, cert: object) -> str:
    """bench/peers.py's nginx proxy, with `http2` on its TLS listener (Debian 12's 1.22 syntax)."""
    conf = nginx_proxy_conf(workdir, listen, upstream, cert)  # type: ignore[arg-type]
    return conf.replace(f"{listen.https} ssl backlog", f"{listen.https} ssl http2 backlog")


@contextlib.contextmanager
def start_proxy(kind: str, workdir: Path, backend: Target, cert: object, cpus: str | None):  # type: ignore[no-untyped-def]
    listen = Listen(free_port(), free_port())
    assert backend.http is not None
    upstream = backend.http.removeprefix("http://")
    pdir = workdir / kind
    pdir.mkdir(exist_ok=True)
    if kind == "nginx":
        conf = pdir / "nginx.conf"
        conf.write_text(nginx_h2_conf(pdir, listen, upstream, cert))
        argv = nginx_argv(pdir, conf)
    else:
        conf = pdir / "edgeproxy.yml"
        conf.write_text(edgeproxy_conf(pdir, listen, {"blue": upstream}, cert))  # type: ignore[arg-type]
        argv = edgeproxy_argv(conf)
    https = f"https://127.0.0.1:{listen.https}"
    with running(
        kind,
        argv,
        log_dir=pdir,
        cpus=cpus,
        ready=lambda: answers(f"http://127.0.0.1:{listen.http}/13") and answers(https + "/13"),
        timeout=30,
    ) as proc:
        yield Target(kind, f"http://127.0.0.1:{listen.http}", https, proc)


def measure(target: Target, proto: str, body: str, requests: int, rnd: int, tmp: Path) -> Run:
    assert target.https is not None and target.proc is not None
    url = target.https + BODIES[body]
    log_file = tmp / f"{target.name}-{proto}-{body}-{rnd}.tsv"
    before = ProcSample.take(target.proc.pid)
    out = subprocess.run(
        h2load_argv(url, proto, requests, log_file),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    ).stdout
    after = ProcSample.take(target.proc.pid)
    ok, failed, seconds, rps = parse_h2load(out)
    if proto == "h2" and "Application protocol: h2" not in out:
        raise BenchError(f"{target.name}: h2 was not negotiated:\n{out[-1500:]}")
    return Run(
        target.name,
        proto,
        body,
        rnd,
        ok,
        failed,
        seconds,
        rps,
        p99_ms(log_file),
        cpu_seconds(before, after),
    )


def summarize(runs: list[Run]) -> list[dict[str, object]]:
    rows = []
    for peer in PEERS:
        for proto in PROTOS:
            for body in BODIES:
                rs = [r for r in runs if (r.peer, r.proto, r.body) == (peer, proto, body)]
                if not rs:
                    continue
                rows.append(
                    {
                        "peer": peer,
                        "proto": proto,
                        "body": body,
                        "rps": round(median([r.rps for r in rs])),
                        "p99_ms": round(median([r.p99_ms for r in rs]), 2),
                        "req_per_cpu_s": round(median([r.per_cpu_second for r in rs])),
                        "failed": sum(r.failed for r in rs),
                        "rounds": len(rs),
                    }
                )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| peer | proto | body | req/s | p99 ms | req per proxy CPU-s | failed |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['peer']} | {r['proto']} | {r['body']} | {r['rps']} | {r['p99_ms']} | "
            f"{r['req_per_cpu_s']} | {r['failed']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--proxy-cpus", default="0", help="cores the proxies are pinned to")
    ap.add_argument("--load-cpus", default="1", help="cores for the backend")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    proxy_cpus = args.proxy_cpus if ncpu > 1 else None
    load_cpus = args.load_cpus if ncpu > 1 else None
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as d:
        work = Path(d)
        cert = make_selfsigned(work, ("localhost", "127.0.0.1"))
        with contextlib.ExitStack() as stack:
            backend = stack.enter_context(
                start_backend("nginx", work, Listen(free_port(), free_port()), cert, load_cpus)
            )
            peers = [
                stack.enter_context(start_proxy(p, work, backend, cert, proxy_cpus)) for p in PEERS
            ]
            cases = [(p, proto, body) for p in peers for proto in PROTOS for body in BODIES]
            for rnd in range(args.rounds):
                shift = rnd % len(cases)
                for peer, proto, body in cases[shift:] + cases[:shift]:
                    run = measure(peer, proto, body, args.requests, rnd, work)
                    log(
                        f"round {rnd} {peer.name} {proto} {body}: {run.rps:.0f} req/s, "
                        f"p99 {run.p99_ms:.2f} ms, {run.per_cpu_second:.0f} req/CPU-s, "
                        f"{run.failed} failed"
                    )
                    runs.append(run)
    rows = summarize(runs)
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"runs": [asdict(r) for r in runs], "summary": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
