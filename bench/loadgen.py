"""An asyncio HTTP/1.1 load client that records every response (time, status, color).

`python -m bench.loadgen --url http://127.0.0.1:8080 --group keepalive:25:/color
--group close:25:/color --out FILE.json` runs until SIGTERM (or `--duration`),
then writes one record per request. Times are `time.monotonic()` (CLOCK_MONOTONIC,
shared by every process on the machine), so the switcher, running in another
process, can line its control calls up with the responses.

A group is `MODE:WORKERS:PATH[:REQUESTS]`: MODE `keepalive` reuses one connection
per worker, `close` opens a new one per request (with `Connection: close`);
REQUESTS caps each worker's count (default: until stopped). `--sources N` binds
each new connection to the next of N loopback addresses (127.1.0.1, …) so the
proxy sees N distinct clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvloop

MODES = ("keepalive", "close")


@dataclass(frozen=True)
class Group:
    mode: str
    workers: int
    path: str
    requests: int = 0
    """Requests per worker; 0 = until stopped."""

    @classmethod
    def parse(cls, spec: str) -> Group:
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[0] not in MODES or not parts[1].isdigit():
            raise ValueError(
                f"group {spec!r}: expected MODE:WORKERS:PATH[:REQUESTS], MODE keepalive|close"
            )
        if not parts[2].startswith("/"):
            raise ValueError(f"group {spec!r}: the path must start with /")
        reqs = int(parts[3]) if len(parts) == 4 else 0
        return cls(parts[0], int(parts[1]), parts[2], reqs)


def source_address(i: int) -> str:
    """The i-th client address in 127.1.0.0/16 and up (all loopback on Linux)."""
    n = 0x7F010001 + i
    if n >= 0x7FFFFFFF:
        raise ValueError("too many source addresses")
    return socket.inet_ntoa(n.to_bytes(4, "big"))


@dataclass
class Records:
    """One entry per request, column-wise (compact and quick to dump)."""

    t_sent: list[float] = field(default_factory=list)
    t_done: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    """0 when the request failed without a response."""
    color: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    error: list[str] = field(default_factory=list)

    def add(
        self, sent: float, status: int, color: str, group: int, source: int, error: str = ""
    ) -> None:
        self.t_sent.append(sent)
        self.t_done.append(time.monotonic())
        self.status.append(status)
        self.color.append(color)
        self.group.append(group)
        self.source.append(source)
        self.error.append(error)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Conn:
    """One client connection speaking just enough HTTP/1.1 for GET."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def get(self, request: bytes, color_header: bytes) -> tuple[int, str, bool]:
        """(status, color, server_keeps_alive) for one request; color from the header or body."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        color = b""
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == color_header:
                color = value.strip()
            elif name == b"connection" and b"close" in value.lower():
                keep = False
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                raise ValueError("chunked responses are not expected from the bench backends")
        if length >= 0:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            keep = False
        if not color and len(body) <= 32:
            color = body.strip()
        return status, color.decode(errors="replace"), keep

    def close(self) -> None:
        self.writer.close()


class LoadGen:
    def __init__(
        self,
        url: str,
        groups: Sequence[Group],
        *,
        sources: int = 0,
        headers: Sequence[str] = (),
        color_header: str = "x-color",
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl.create_default_context()
            self.ssl.check_hostname = False
            self.ssl.verify_mode = ssl.CERT_NONE
        self.host_header = parts.netloc
        self.groups = list(groups)
        self.sources = sources
        self.next_source = 0
        self.extra = "".join(f"{h}\r\n" for h in headers)
        self.color_header = color_header.lower().encode()
        self.timeout = timeout
        self.records = Records()
        self.stopping = asyncio.Event()

    def request(self, group: Group) -> bytes:
        conn = "Connection: close\r\n" if group.mode == "close" else ""
        return (
            f"GET {group.path} HTTP/1.1\r\nHost: {self.host_header}\r\n{conn}{self.extra}\r\n"
        ).encode()

    async def connect(self) -> tuple[Conn, int]:
        source = -1
        local: tuple[str, int] | None = None
        if self.sources:
            source = self.next_source % self.sources
            self.next_source += 1
            local = (source_address(source), 0)
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=self.ssl,
            local_addr=local,
            server_hostname=self.host if self.ssl else None,
        )
        return Conn(reader, writer), source

    async def worker(self, gi: int, group: Group) -> None:
        req = self.request(group)
        conn: Conn | None = None
        source = -1
        done = 0
        while not self.stopping.is_set() and (group.requests == 0 or done < group.requests):
            sent = time.monotonic()
            try:
                if conn is None:
                    conn, source = await self.connect()
                    sent = time.monotonic()
                status, color, keep = await asyncio.wait_for(
                    conn.get(req, self.color_header), self.timeout
                )
                self.records.add(sent, status, color, gi, source)
                if not keep or group.mode == "close":
                    conn.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                self.records.add(
                    sent, 0, "", gi, source, type(e).__name__ + (f": {e}" if str(e) else "")
                )
                if conn is not None:
                    conn.close()
                    conn = None
                await asyncio.sleep(0.005)  # a refused connect must not spin the loop
            done += 1
        if conn is not None:
            conn.close()

    async def run(self, duration: float | None = None) -> Records:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if duration:
            loop.call_later(duration, self.stopping.set)
        tasks = [
            asyncio.create_task(self.worker(gi, g), name=f"loadgen-{g.mode}-{gi}-{w}")
            for gi, g in enumerate(self.groups)
            for w in range(g.workers)
        ]
        await asyncio.gather(*tasks)
        return self.records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="http(s)://HOST:PORT of the proxy")
    p.add_argument(
        "--group",
        action="append",
        required=True,
        type=Group.parse,
        help="MODE:WORKERS:PATH[:REQUESTS]",
    )
    p.add_argument("--sources", type=int, default=0, help="distinct loopback source addresses")
    p.add_argument("--header", action="append", default=[], help="extra request header")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    started = time.monotonic()

    async def go() -> Records:
        gen = LoadGen(args.url, args.group, sources=args.sources, headers=args.header)
        return await gen.run(args.duration)

    records = uvloop.run(go())
    doc = {
        "url": args.url,
        "groups": [g.__dict__ for g in args.group],
        "started": started,
        "stopped": time.monotonic(),
        "records": records.to_json(),
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.rename(args.out)


if __name__ == "__main__":
    main()
