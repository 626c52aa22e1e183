"""The Python ceiling: a bare uvloop + httptools reverse proxy, for reference only.

`python -m bench.probe --listen 127.0.0.1:8080 [--tls-listen 127.0.0.1:8443
--cert C --key K] --upstream 127.0.0.1:9000`

It relays request and response bytes unmodified (no header rewriting, no
routing, no policies, no logging) and uses httptools only to find where each
message ends, with one keep-alive pool to the upstream. What edgeproxy adds on
top of this is what its features cost; what nginx does beyond it is C.
Requests with bodies, pipelining and upgrades are not supported.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path
from typing import cast

import httptools
import uvloop

from bench.serving import parse_addr, serve_until_signal, server_tls_context

CONNECTION_HEADER = re.compile(rb"(?im)^connection:[^\r\n]*\r\n")


class Pool:
    """Idle upstream connections, reused last-in first-out."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[UpstreamProtocol] = []


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientProtocol | None = None
        self.done = False
        self.head_pending = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        client = self.client
        # Relay first, then let the parser say whether the response ended here.
        if client is not None and client.transport is not None:
            if self.head_pending and not client.keep_alive:
                # Tell the client we close (the upstream was asked to keep alive).
                client.transport.write(data.replace(b"\r\n", b"\r\nConnection: close\r\n", 1))
            else:
                client.transport.write(data)
        self.head_pending = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.done:
            self.done = False
            self.head_pending = True
            self.parser = httptools.HttpResponseParser(self)
            self.client = None
            self.pool.idle.append(self)
            if client is not None:
                client.response_done()

    def on_message_complete(self) -> None:
        self.done = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class ClientProtocol(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buffer: list[bytes] = []
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        request = b"".join(self.buffer)
        self.buffer.clear()
        self.keep_alive = bool(self.parser.should_keep_alive())
        if not self.keep_alive:
            # The client's `Connection: close` is for us; the upstream connection stays pooled.
            request = CONNECTION_HEADER.sub(b"", request)
        if self.transport is not None:
            self.transport.pause_reading()
        if self.pool.idle:
            self.send(self.pool.idle.pop(), request)
        else:
            asyncio.get_running_loop().create_task(self.connect_and_send(request))

    async def connect_and_send(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(
                lambda: UpstreamProtocol(self.pool), self.pool.host, self.pool.port
            )
        except OSError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()
            return
        self.send(upstream, request)

    def send(self, upstream: UpstreamProtocol, request: bytes) -> None:
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(request)

    def response_done(self) -> None:
        if self.transport is None:
            return
        if self.keep_alive:
            self.transport.resume_reading()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    pool = Pool(*parse_addr(args.upstream))
    servers = [
        await loop.create_server(
            lambda: ClientProtocol(pool), *parse_addr(args.listen), backlog=4096
        )
    ]
    if args.tls_listen:
        ctx = server_tls_context(args.cert, args.key)
        servers.append(
            await loop.create_server(
                lambda: ClientProtocol(pool), *parse_addr(args.tls_listen), ssl=ctx, backlog=4096
            )
        )
    await serve_until_signal(servers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__)
    p.add_argument("--listen", required=True, help="HOST:PORT for plain HTTP")
    p.add_argument("--tls-listen", help="HOST:PORT for HTTPS (needs --cert and --key)")
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the backend")
    uvloop.run(serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
