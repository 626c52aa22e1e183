"""Upstream connections and the keep-alive pool per upstream address.

An `UpstreamConnection` only does I/O: it parses the response with httptools
and hands each event to the `ResponseSink` it currently serves (an exchange),
or, once the connection is a WebSocket tunnel, its bytes to a `ByteSink`. It
never names the client side: back-pressure goes through the sink too. Idle connections go
back to their pool and are closed after `upstream_idle` seconds (below Node's
5 s keep-alive timeout, so we close first and never reuse a socket the server
is about to drop).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any, Final, cast

import httptools

from edgeproxy.config import Upstream
from edgeproxy.errors import UpstreamProtocolError

log = logging.getLogger("edgeproxy.upstream")

MAX_RESPONSE_HEAD: Final = 65536
"""A larger upstream response head is a 502 (nginx: "upstream sent too big header")."""


def as_protocol(proto: object) -> asyncio.Protocol:
    """A protocol object for `create_server`/`create_connection`, typed as the loop wants it.

    The connection classes implement asyncio's protocol methods without
    inheriting `asyncio.Protocol` (uvloop and asyncio only call them): a class
    with a Python base can't be compiled to a native class by mypyc, and native
    classes are what make the compiled hot path fast (docs/architecture.md).
    """
    return cast(asyncio.Protocol, proto)


class ResponseSink:
    """Where an upstream connection delivers a response (an `Exchange`).

    A native base class rather than a Protocol: once compiled, the calls below
    stay native (vtable) calls (docs/architecture.md, hot-path notes).
    """

    __slots__ = ()

    def upstream_read_begins(self) -> None:
        """A read from the upstream is about to be parsed (what it produces leaves together)."""
        raise NotImplementedError

    def upstream_read_ends(self) -> None:
        """The read is parsed: send on what it produced."""
        raise NotImplementedError

    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], up_keep_alive: bool
    ) -> None:
        raise NotImplementedError

    def on_response_body(self, body: bytes) -> None:
        raise NotImplementedError

    def on_response_complete(self) -> None:
        raise NotImplementedError

    def on_upstream_upgrade(self, tail: bytes) -> None:
        """The upstream switched protocols; `tail` is what followed its 101 head."""
        raise NotImplementedError

    def on_upstream_failed(self, status: int, why: str) -> None:
        """The upstream's response is refused (`status` for the client, 502 mostly)."""
        raise NotImplementedError

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        raise NotImplementedError

    def upstream_write_paused(self) -> None:
        """The upstream's write buffer is full: stop reading what is sent to it."""
        raise NotImplementedError

    def upstream_write_resumed(self) -> None:
        raise NotImplementedError


class ByteSink:
    """Where an upgraded upstream connection sends its bytes (a WebSocket `Tunnel`)."""

    __slots__ = ()

    def from_upstream(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_closed(self) -> None:
        raise NotImplementedError

    def upstream_write_paused(self) -> None:
        raise NotImplementedError

    def upstream_write_resumed(self) -> None:
        raise NotImplementedError


class UpstreamConnection:
    """An asyncio protocol for one upstream connection (duck-typed: see `as_protocol`)."""

    __slots__ = (
        "closed",
        "exchange",
        "head_bytes",
        "headers",
        "idle_since",
        "parser",
        "pool",
        "reason",
        "reused",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpResponseParser(self)
        self.exchange: ResponseSink | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.head_bytes = 0
        """Bytes read since the response began, until its head ends (-1 while in the body)."""
        self.reused = False
        self.closed = False
        self.idle_since = 0.0
        self.tunnel: ByteSink | None = None
        """Set once this connection is a WebSocket tunnel's upstream side."""

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        ex = self.exchange
        if ex is None:
            # An idle keep-alive connection must not talk; if it does, drop it.
            self.close()
            return
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
        ex.upstream_read_begins()  # what this read produces leaves in one write, below
        try:
            self.parser.feed_data(data)
            if self.head_bytes > MAX_RESPONSE_HEAD:
                # Counted per read, so a head that ends within its first 64 KiB
                # read passes whatever follows it; one that keeps coming doesn't.
                log.warning(
                    "response head over %d bytes from %s", MAX_RESPONSE_HEAD, self.pool.upstream.url
                )
                ex.on_upstream_failed(502, "upstream response head too large")
                self.close()
        except httptools.HttpParserUpgrade as e:
            ex.on_upstream_upgrade(data[e.args[0] :])
        except httptools.HttpParserError as e:
            refused = e.__context__
            if isinstance(refused, UpstreamProtocolError):
                log.warning("refused response from %s: %s", self.pool.upstream.url, refused.reason)
                ex.on_upstream_failed(refused.status, f"upstream response: {refused.reason}")
            else:
                log.warning("bad response from %s: %s", self.pool.upstream.url, e)
                ex.on_upstream_failed(502, f"malformed response: {e}")
            self.close()  # a parser that failed can't frame another response
        finally:
            ex.upstream_read_ends()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        ex, self.exchange = self.exchange, None
        tunnel, self.tunnel = self.tunnel, None
        # Break the protocol <-> parser cycle so the GC need not: closed connections
        # are freed at once (docs/architecture.md, hot-path notes).
        self.parser = None
        if ex is not None:
            ex.on_upstream_lost(self, exc)
        elif tunnel is not None:
            tunnel.upstream_closed()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_paused()
        elif self.tunnel is not None:
            self.tunnel.upstream_write_paused()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_write_resumed()
        elif self.tunnel is not None:
            self.tunnel.upstream_write_resumed()

    # -- httptools callbacks ------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(headers) > self.pool.max_headers:
            # Like a request's (431): limits.max_headers, here a 502.
            raise UpstreamProtocolError(502, f"more than {self.pool.max_headers} header fields")

    def on_headers_complete(self) -> None:
        headers, self.headers = self.headers, []
        reason, self.reason = self.reason, b""
        assert self.exchange is not None
        status = self.parser.get_status_code()
        if not 100 <= status < 200 or status == 101:
            self.head_bytes = -1  # the body follows (an informational head: another head)
        self.exchange.on_response_head(status, reason, headers, self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        self.head_bytes = 0
        if self.exchange is not None:
            self.exchange.on_response_complete()

    # -- used by the exchange ----------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections to one upstream address (LIFO, bounded, swept)."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        idle_timeout: float,
        connect_timeout: float,
        max_idle: int = 512,
        max_headers: int = 100,
    ) -> None:
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.max_headers = max_headers
        """More header fields in a response is a 502 (`limits.max_headers`)."""
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.connect_errors = 0
        self.local_errors = 0
        """Connects that failed for lack of local resources (EMFILE, ENOBUFS...): not counted above."""
        self.opened = 0

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, proto = await loop.create_connection(
                lambda: as_protocol(UpstreamConnection(self)),
                self.upstream.host,
                self.upstream.port,
            )
        self.opened += 1
        return cast(UpstreamConnection, proto)

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        conn.exchange = None
        if len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = monotonic()
        self.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(
                self.idle_timeout / 4, self._sweep
            )

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        # Close a little early rather than late: the sweep runs every timeout/4.
        cutoff = monotonic() - self.idle_timeout * 0.75
        keep = []
        for conn in self.idle:
            if conn.idle_since <= cutoff:
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
            else:
                keep.append(conn)
        self.idle = keep
        if keep:
            self._sweeper = loop.call_later(self.idle_timeout / 4, self._sweep)

    def close_idle(self) -> int:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        return len(idle)
