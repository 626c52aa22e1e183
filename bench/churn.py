"""Memory under TLS connection churn: does a proxy's RSS stay flat?

    python -m bench.churn [--peer edgeproxy] [--duration 300] [--interval 15]

Starts the shared nginx backend and one proxy (proxy on core 0, wrk and the
backend on core 1), then runs wrk with `Connection: close` against the proxy's
HTTPS listener for `--duration` seconds: every request is a new TLS connection
(session tickets are off in the bench configs, so full handshakes). RSS of the
proxy is sampled every `--interval` seconds. Prints the samples, the connection
rate, and the drift: last sample vs the first one after warm-up.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from bench import wrk
from bench.peers import Listen, start_backend, start_peer
from bench.procs import free_port, log, pinned
from bench.tlscert import make_selfsigned


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer", default="edgeproxy")
    parser.add_argument("--duration", type=int, default=300)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument(
        "--warmup", type=float, default=20.0, help="seconds before the reference sample"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-churn-") as tmp:
        work = Path(tmp)
        cert = make_selfsigned(work)
        backend_listen = Listen(free_port(), free_port())
        proxy_listen = Listen(free_port(), free_port())
        with (
            start_backend("nginx", work, backend_listen, cert, "1") as backend,
            start_peer(args.peer, work, proxy_listen, backend, cert, "0") as peer,
        ):
            assert peer.proc is not None
            url = peer.url("https", "/13")
            assert url is not None
            cmd = pinned("1", wrk.argv(url, duration=args.duration, close=True, timeout=5))
            log(f"churn: {' '.join(cmd)}")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            start = time.monotonic()
            samples: list[tuple[float, float]] = []
            while proc.poll() is None:
                t = time.monotonic() - start
                rss = peer.proc.sample().rss_kib / 1024
                samples.append((t, rss))
                log(f"t={t:5.0f}s  RSS {rss:6.1f} MiB")
                time.sleep(args.interval)
            out, _ = proc.communicate()
            result = wrk.parse(out)
    ref = next((r for t, r in samples if t >= args.warmup), samples[0][1])
    last = samples[-1][1]
    peak = max(r for _, r in samples)
    print(
        f"| peer | connections/s | RSS after {args.warmup:.0f}s MiB | RSS at end MiB | peak MiB | drift |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    print(
        f"| {args.peer} | {result.rps:,.0f} | {ref:.1f} | {last:.1f} | {peak:.1f} | "
        f"{(last - ref) / ref * 100:+.1f} % |"
    )
    print(
        f"\nwrk errors: {result.errors or 'none'}; {result.requests:,} connections in {result.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
