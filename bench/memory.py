"""`bench memory`: RSS of each proxy holding N idle keep-alive client connections.

Each connection sends one `GET /13`, reads the answer and then stays open and
idle (all proxies keep idle clients for 75 s here). RSS is summed over the
proxy's process tree (nginx: master + worker) and read from /proc after a
short settle; the proxy's open descriptors are counted as a cross-check that
the connections are really held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from bench.peers import HAPROXY_MAXCONN, Listen, Target, start_backend, start_peer
from bench.procs import BenchError, Proc, free_port, log, process_tree
from bench.tlscert import make_selfsigned


@dataclass
class Level:
    wanted: int
    held: int
    rss_kib: int
    fds: int
    failed: int


@dataclass
class PeerMemory:
    peer: str
    baseline_rss_kib: int
    levels: list[Level] = field(default_factory=list)
    after_close_rss_kib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def kib_per_connection(self) -> float | None:
        """Slope between the first and last level (what one more idle client costs)."""
        if len(self.levels) < 2:
            if self.levels and self.levels[0].held:
                lv = self.levels[0]
                return (lv.rss_kib - self.baseline_rss_kib) / lv.held
            return None
        a, b = self.levels[0], self.levels[-1]
        return (b.rss_kib - a.rss_kib) / (b.held - a.held) if b.held > a.held else None


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fd_count(pid: int) -> int:
    n = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            n += len(os.listdir(f"/proc/{p}/fd"))
    return n


def rss_kib(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


class IdleClients:
    """Opens keep-alive connections that each do one request and then sit idle."""

    def __init__(self, host: str, port: int, host_header: str) -> None:
        self.host = host
        self.port = port
        self.request = f"GET /13 HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode()
        self.writers: list[asyncio.StreamWriter] = []
        self.failed = 0

    async def one(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), 10
            )
        except (OSError, TimeoutError):
            self.failed += 1
            return
        try:
            writer.write(self.request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await asyncio.wait_for(reader.readexactly(length), 10)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.failed += 1
            writer.close()
            return
        self.writers.append(writer)

    async def open_until(self, total: int, concurrency: int = 200) -> None:
        while len(self.writers) + self.failed < total:
            batch = min(concurrency, total - len(self.writers) - self.failed)
            await asyncio.gather(*(self.one() for _ in range(batch)))

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        for w in self.writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
        self.writers.clear()


async def measure_peer(
    target: Target, proc: Proc, levels: Sequence[int], settle: float
) -> PeerMemory:
    assert target.http is not None
    port = int(target.http.rsplit(":", 1)[1])
    await asyncio.sleep(settle)
    result = PeerMemory(target.name, rss_kib(proc.pid))
    clients = IdleClients("127.0.0.1", port, f"127.0.0.1:{port}")
    cap = HAPROXY_MAXCONN if target.name == "haproxy" else None
    try:
        for wanted in levels:
            n = min(wanted, cap) if cap else wanted
            if n < wanted:
                result.notes.append(f"{wanted} capped at {n}: HAProxy maxconn (fd limit 20,000)")
            started = time.monotonic()
            await clients.open_until(n)
            await asyncio.sleep(settle)
            level = Level(
                wanted, len(clients.writers), rss_kib(proc.pid), fd_count(proc.pid), clients.failed
            )
            result.levels.append(level)
            log(
                f"{target.name}: {level.held} idle connections held "
                f"({level.failed} failed, {time.monotonic() - started:.1f} s), "
                f"RSS {level.rss_kib / 1024:.1f} MiB, {level.fds} fds"
            )
    finally:
        await clients.close()
    await asyncio.sleep(settle)
    result.after_close_rss_kib = rss_kib(proc.pid)
    return result


@dataclass
class MemoryOptions:
    peers: Sequence[str] = ("nginx", "haproxy", "edgeproxy")
    levels: Sequence[int] = (1000, 10000)
    settle: float = 1.0
    backend: str = "nginx"
    proxy_cpus: str = "0"
    load_cpus: str = "1"


def run(opts: MemoryOptions) -> dict[str, Any]:
    limit = raise_fd_limit()
    if max(opts.levels) + 100 > limit:
        raise BenchError(f"{max(opts.levels)} connections need more descriptors than {limit}")
    results: list[PeerMemory] = []
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeproxy-bench-mem-"))
        )
        cert = make_selfsigned(workdir)
        backend = stack.enter_context(
            start_backend(
                opts.backend, workdir, Listen(free_port(), free_port()), cert, opts.load_cpus
            )
        )
        for kind in opts.peers:
            try:
                with start_peer(
                    kind, workdir, Listen(free_port(), free_port()), backend, cert, opts.proxy_cpus
                ) as target:
                    assert target.proc is not None
                    results.append(
                        uvloop.run(measure_peer(target, target.proc, opts.levels, opts.settle))
                    )
            except BenchError as e:
                skipped[kind] = str(e).splitlines()[0]
                log(f"skipping {kind}: {e}")
    return {
        "command": "memory",
        "options": asdict(opts),
        "skipped": skipped,
        "results": [asdict(r) | {"kib_per_connection": r.kib_per_connection} for r in results],
    }
