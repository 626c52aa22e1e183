"""A tiny, fast HTTP/1.1 backend: a raw uvloop Protocol parsing with httptools.

`python -m bench.backend --http 127.0.0.1:9001 [--color blue] [--https PORT --cert C --key K]`

Paths: `/13` answers 13 bytes, `/16k` 16 KiB, `/health` "ok", `/slow/<ms>` waits
that long then answers the color, anything else answers the color name (or the
13-byte body when no color is set). With `--color`, every response carries
`X-Color: NAME`. Keep-alive follows the request (HTTP/1.1 default, `Connection:
close` honoured); pipelined requests are answered in order.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from pathlib import Path
from typing import cast

import httptools
import uvloop

from bench.serving import parse_addr, serve_until_signal, server_tls_context

BODY_13 = b"Hello, World!"
BODY_16K = b"x" * 16384
assert len(BODY_13) == 13


def response(body: bytes, color: str | None, *, close: bool = False) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Type: text/plain", b"Content-Length: %d" % len(body)]
    if color:
        head.append(b"X-Color: " + color.encode())
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Routes:
    """Precomputed responses: the hot path only looks bytes up."""

    def __init__(self, color: str | None) -> None:
        self.color = color
        default = color.encode() if color else BODY_13
        bodies = {b"/13": BODY_13, b"/16k": BODY_16K, b"/health": b"ok", b"/color": default}
        self.keep = {path: response(b, color) for path, b in bodies.items()}
        self.close = {path: response(b, color, close=True) for path, b in bodies.items()}
        self.default = (response(default, color), response(default, color, close=True))

    def lookup(self, path: bytes, keep_alive: bool) -> tuple[float, bytes]:
        """(delay in seconds, response bytes) for a request path."""
        path = path.split(b"?", 1)[0]
        delay = 0.0
        if path.startswith(b"/slow/"):
            try:
                delay = int(path[6:]) / 1000.0
            except ValueError:
                delay = 0.0
            path = b"/color"
        table = self.keep if keep_alive else self.close
        return delay, table.get(path, self.default[0 if keep_alive else 1])


class BackendProtocol(asyncio.Protocol):
    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.busy = False
        self.backlog: deque[tuple[float, bytes, bool]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport does not subclass asyncio.Transport: no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        keep = bool(self.parser.should_keep_alive())
        delay, data = self.routes.lookup(self.url, keep)
        self.url = b""
        self.respond(delay, data, keep)

    def respond(self, delay: float, data: bytes, keep: bool) -> None:
        if self.busy:
            self.backlog.append((delay, data, keep))
        elif delay > 0:
            self.busy = True
            asyncio.get_running_loop().call_later(delay, self.finish_slow, data, keep)
        else:
            self.write(data, keep)

    def finish_slow(self, data: bytes, keep: bool) -> None:
        self.busy = False
        self.write(data, keep)
        while self.backlog and not self.busy:
            self.respond(*self.backlog.popleft())

    def write(self, data: bytes, keep: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        if not keep:
            self.transport.close()


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    routes = Routes(args.color)
    servers = []
    for listen in args.http:
        servers.append(
            await loop.create_server(
                lambda: BackendProtocol(routes), *parse_addr(listen), backlog=4096
            )
        )
    if args.https:
        ctx = server_tls_context(args.cert, args.key)
        servers.append(
            await loop.create_server(
                lambda: BackendProtocol(routes), *parse_addr(args.https), ssl=ctx, backlog=4096
            )
        )
    await serve_until_signal(servers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__)
    p.add_argument("--http", action="append", default=[], help="HOST:PORT (repeatable)")
    p.add_argument("--https", help="HOST:PORT for TLS (needs --cert and --key)")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--color", help="answer this name and send X-Color: NAME")
    args = p.parse_args(argv)
    if not args.http and not args.https:
        p.error("give at least one --http or --https address")
    uvloop.run(serve(args))


if __name__ == "__main__":
    main()
