"""The client side: one asyncio Protocol per downstream connection, I/O only.

Requests are parsed with httptools (llhttp, strict). Each request becomes an
`Exchange`, for which this connection is the `Downstream` (proxy/exchange.py):
it feeds the exchange the request and writes what the exchange sends, framed
as HTTP/1.1. Exchanges run one at a time in arrival order (pipelined requests
are answered in order; reading pauses while one waits behind another). Flow
control: when the client can't keep up the exchange pauses its upstream, and
when the upstream can't keep up the exchange pauses reading here. This module
never touches an upstream connection's state, only the exchange's methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Final, cast

import httptools

from edgeproxy.errors import ClientProtocolError
from edgeproxy.proxy.context import ADMITTED, ProxyContext
from edgeproxy.proxy.exchange import REQ_DONE, Downstream, Exchange
from edgeproxy.proxy.framing import (
    CHUNKED,
    LAST_CHUNK,
    LENGTH,
    NOBODY,
    RECHUNK,
    UNTIL_CLOSE,
    chunk,
)
from edgeproxy.proxy.headers import ResponseHead
from edgeproxy.proxy.responses import build_response
from edgeproxy.proxy.tunnel import Tunnel, close_lingering
from edgeproxy.proxy.upstream import UpstreamConnection

log = logging.getLogger("edgeproxy.client")

# Why reading from the client is paused (bits; reading resumes when none is left).
# PAUSE_UPSTREAM: the upstream's write buffer is full (request body or tunnel);
# PAUSE_UPGRADE: an upgrade waits for the upstream's answer (101 or not).
PAUSE_PIPELINE, PAUSE_UPSTREAM, PAUSE_BUFFER, PAUSE_REJECTED, PAUSE_UPGRADE = 1, 2, 4, 8, 16

TOO_MANY_CONNECTIONS: Final = build_response(
    503,
    b"503 Service Unavailable: too many connections; retry shortly\n",
    [(b"retry-after", b"5")],
    close=True,
)


class ClientConnection(Downstream):
    """An asyncio protocol for one client connection (duck-typed: see `as_protocol`);
    the HTTP/1.1 `Downstream` of its exchanges (the connection facts live there)."""

    # Slots: ~1 KiB less per connection than an instance dict (10k idle clients).
    __slots__ = (
        "admitted",
        "body_bytes",
        "body_limit",
        "chunk_len",
        "corked",
        "cur",
        "head_begin_chunk",
        "head_bytes",
        "head_started",
        "in_head",
        "last_activity",
        "max_header_bytes",
        "max_headers",
        "out",
        "parser",
        "pause_mask",
        "pending_error",
        "queue",
        "read_fresh",
        "req_headers",
        "resp_mode",
        "tasks",
        "timer",
        "transport",
        "tunnel",
        "upgrade_buffer",
        "url_bytes",
        "url_parts",
    )

    def __init__(self, ctx: ProxyContext, *, tls: bool, local_port: int) -> None:
        super().__init__(ctx, asyncio.get_running_loop(), tls=tls, local_port=local_port)
        # -- shared / fixed
        self.max_header_bytes = ctx.limits.max_header_bytes
        self.max_headers = ctx.limits.max_headers
        # -- per connection
        self.transport: asyncio.Transport | None = None
        self.parser: Any = httptools.HttpRequestParser(self)
        self.admitted = False
        """Counted by the connection caps (released when it closes)."""
        self.last_activity = 0.0
        self.head_started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] | None = None  # made on first use (memory)
        # -- flow control: reading is paused while any reason bit is set
        self.pause_mask = 0
        # -- per request
        # A list, not a deque: rarely more than one entry, and 560 bytes less per connection.
        self.queue: list[Exchange] = []
        self.out: list[bytes] = []
        self.corked = False
        """True while an upstream read is being relayed: it flushes at its end."""
        self.cur: Exchange | None = None
        """The exchange whose request is being read."""
        self.req_headers: list[tuple[bytes, bytes]] = []
        """The header fields of the request being read."""
        self.resp_mode = LENGTH
        """How the body of the response being written is framed (set by its head)."""
        self.url_parts: list[bytes] = []
        self.url_bytes = 0
        # Request head size, counted per read rather than per header (cheaper,
        # and it bounds a single header trickled in forever, which httptools
        # would otherwise buffer whole): `head_bytes` is an upper bound, the
        # reads since the head began, counting all of the read it began in.
        self.in_head = False
        self.head_bytes = 0
        self.head_begin_chunk = 0
        self.chunk_len = 0
        self.read_fresh = False
        """True until a message begins in a read that began with no message in progress."""
        self.body_bytes = 0
        self.body_limit = 0.0
        self.pending_error: ClientProtocolError | None = None
        self.upgrade_buffer: list[bytes] | None = None
        """Bytes after an upgrade request, held (one read at most: reading pauses) until the 101."""
        self.tunnel: Tunnel | None = None

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but quack alike.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = peer[0]
        self.ctx = ctx = self.ctx.newest()
        self.peer_ip_b = self.peer_ip.encode()
        self.peer_trusted = ctx.is_trusted(self.peer_ip)
        if self.tls:
            ssl_obj = transport.get_extra_info("ssl_object")
            if ssl_obj is not None:
                self.sni = getattr(ssl_obj, "edgeproxy_sni", None)
                self.tls_version = ssl_obj.version()
                self.sni_site = ctx.router.site_for_sni(self.sni)
                self.sni_router = ctx.router
        now = self.loop.time()
        if ctx.caps.admit(self.peer_ip, len(ctx.connections), now) != ADMITTED:
            self._refuse_connection()
            return
        self.admitted = True
        ctx.connections.add(self)
        ctx.accepted[self.tls] += 1
        self.last_activity = now
        t = ctx.timeouts
        self._arm_timer(min(t.client_idle, t.send, ctx.limits.client_header_timeout))

    def _refuse_connection(self) -> None:
        """Over a connection cap (logged and counted by ctx.caps): 503, closed at once."""
        self.closing = True
        self.pause_reading(PAUSE_REJECTED)
        assert self.transport is not None
        self.transport.write(TOO_MANY_CONNECTIONS)
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.upgrade_buffer is not None:
            # Reading paused at the upgrade; what a TLS transport had already
            # decrypted may still arrive, one read at most.
            self.upgrade_buffer.append(data)
            return
        self.chunk_len = len(data)
        self.read_fresh = self.cur is None
        try:
            self.parser.feed_data(data)
            if self.in_head:  # a request head is still arriving
                self.head_bytes += len(data)
                if self.head_bytes > self.max_header_bytes:
                    self._check_partial_head()
        except httptools.HttpParserUpgrade as e:
            tail = data[e.args[0] :]
            ex = self.queue[-1] if self.queue else None
            if ex is not None and ex.upgrade:
                # Hold what follows until the upstream answers: a 101 makes it the
                # tunnel's first bytes; anything else ends the connection after
                # the response (its keep_alive is off, see on_headers_complete).
                self.upgrade_buffer = [tail] if tail else []
                self.pause_reading(PAUSE_UPGRADE)
            else:
                # Upgrade we declined (or CONNECT): answer what is queued, then close.
                self.closing = True
                self.pause_reading(PAUSE_REJECTED)
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, ClientProtocolError):
                self.reject(cause)
            else:
                log.exception("internal error while parsing a request", exc_info=cause)
                self.reject(ClientProtocolError(500, "internal error"))
        except httptools.HttpParserInvalidMethodError:
            # llhttp knows every registered method; anything else is not implemented
            # (RFC 9110 §9.1), not malformed.
            self.reject(ClientProtocolError(501, "unknown request method"))
        except httptools.HttpParserError as e:
            self.reject(ClientProtocolError(400, str(e)))

    def eof_received(self) -> bool | None:
        # Half-close from the client: finish what is in flight, then close.
        if self.queue:
            self.closing = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ctx.connections.discard(self)
        if self.admitted:
            self.admitted = False
            self.ctx.caps.release(self.peer_ip)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for ex in self.queue:
            ex.downstream_lost()
        self.queue.clear()
        if self.tunnel is not None:
            self.tunnel.end()
        self.upgrade_buffer = None
        for t in self.tasks or ():
            t.cancel()
        # Break protocol <-> parser cycles so closed connections are freed at
        # once instead of piling up for the GC (measured: ~12 MB/s under TLS churn).
        self.parser = None
        self.cur = None

    def pause_writing(self) -> None:
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.upstream is not None:
            ex.pause_response()
        elif self.tunnel is not None:
            self.tunnel.upstream.pause_reading()

    def resume_writing(self) -> None:
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.upstream is not None:
            ex.resume_response()
        elif self.tunnel is not None:
            self.tunnel.upstream.resume_reading()

    # -- httptools callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        self.cur = Exchange(self)
        self.req_headers = []
        self.head_started = self.loop.time()
        self.url_parts = []
        self.url_bytes = 0
        self.body_bytes = 0
        self.in_head = True
        self.head_bytes = 0
        # A head that begins a read starts at its first byte; a later one somewhere in it.
        self.head_begin_chunk = 0 if self.read_fresh else self.chunk_len
        self.read_fresh = False

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)
        self.url_bytes += len(url)
        if self.url_bytes > self.ctx.limits.max_request_line:
            raise ClientProtocolError(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called once per header, so only the count is checked here; the size
        # is checked per read (data_received) and once per head (below).
        headers = self.req_headers
        headers.append((name, value))
        if len(headers) > self.max_headers:
            raise ClientProtocolError(431, "too many request headers")

    def _head_size(self) -> int:
        """The size limits.max_header_bytes is about: target + each header's name and value."""
        return self.url_bytes + sum(len(n) + len(v) + 4 for n, v in self.req_headers)

    def _check_partial_head(self) -> None:
        """An incomplete head whose upper bound passed the limit: 431 once it surely has."""
        ex = self.cur
        # Every read after the first was all head: a lower bound. So is what is parsed.
        if self.head_bytes - self.head_begin_chunk > self.max_header_bytes or (
            ex is not None and self._head_size() > self.max_header_bytes
        ):
            self.reject(ClientProtocolError(431, "request headers too large"))

    def on_headers_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        self.in_head = False
        if (
            self.head_bytes + self.chunk_len > self.max_header_bytes
            and self._head_size() > self.max_header_bytes
        ):
            raise ClientProtocolError(431, "request headers too large")
        parser = self.parser
        version: str = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ClientProtocolError(505, f"HTTP/{version} is not supported")
        upgrade: bool = parser.should_upgrade()
        # After an upgrade request the parser reads nothing more as HTTP: if the
        # upstream declines it (no 101), the connection ends after the response.
        # stepping_back: another process took over (handover.py): this response says
        # Connection: close, and the client's next request goes to the new process.
        ex.on_request_head(
            parser.get_method(),
            version,
            b"".join(self.url_parts),
            self.req_headers,
            upgrade=upgrade,
            keep_alive=parser.should_keep_alive()
            and not self.closing
            and not upgrade
            and not self.ctx.stepping_back,
        )
        self.body_limit = self._body_limit(ex)
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        else:
            # Pipelined behind another request: hold further input until its turn.
            self.pause_reading(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        assert ex is not None
        self.body_bytes += len(body)
        if self.body_bytes > self.body_limit:
            raise ClientProtocolError(413, "request body over the limit")
        ex.on_request_body(body)

    def on_message_complete(self) -> None:
        ex, self.cur = self.cur, None
        assert ex is not None
        ex.on_request_complete()

    # -- Downstream: what exchanges send ----------------------------------------------
    def send_continue(self) -> None:
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def send_local(self, data: bytes) -> None:
        self.write(data)

    def send_head(self, head: ResponseHead) -> None:
        self.resp_mode = head.mode
        self.write(head.data)

    def send_body(self, data: bytes) -> None:
        mode = self.resp_mode
        if mode in (LENGTH, UNTIL_CLOSE):
            self.write(data)
        elif mode != NOBODY:
            self.write(chunk(data))

    def send_end(self) -> None:
        mode = self.resp_mode
        if mode in (CHUNKED, RECHUNK):
            self.write(LAST_CHUNK)

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        self.flush()

    def write(self, data: bytes) -> None:
        # Writes are coalesced per loop iteration: a response head and its body
        # usually arrive in one upstream read and leave in one send() (one TLS
        # record) instead of two. Measured: send() was a third of the CPU.
        out = self.out
        out.append(data)
        if len(out) == 1 and not self.corked:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None:
            self.transport.write(data)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task tied to this connection (named, referenced, cancelled with it)."""
        task = self.loop.create_task(coro, name=name)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def exchange_finished(self, ex: Exchange, *, keep_alive: bool) -> None:
        """Called once per exchange, when its response is complete (or failed)."""
        if self.queue and self.queue[0] is ex:
            del self.queue[0]
        if not keep_alive or ex.req_phase != REQ_DONE:
            # Connection: close, or a body we did not read to the end: nothing
            # after this on the connection can be trusted as a new request.
            self._close_after_write()
            return
        self._next()

    def _next(self) -> None:
        queue = self.queue
        if queue:
            nxt = queue[0]
            if not nxt.response_begun():
                nxt.start()
            if len(self.queue) <= 1:
                self.resume_reading(PAUSE_PIPELINE)
            return
        self.resume_reading(PAUSE_PIPELINE)
        if self.pending_error is not None:
            err, self.pending_error = self.pending_error, None
            self._write_error(err)
        elif self.closing:
            self._close_after_write()

    def abort(self, ex: Exchange) -> None:
        """The response can't be completed (truncated upstream, drain cut): close now."""
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def reject(self, err: ClientProtocolError) -> None:
        """A malformed request: answer its status once earlier responses are out, then close."""
        log.info("rejected request from %s: %s", self.peer_ip, err)
        self.pause_reading(PAUSE_REJECTED)  # never resumed: the connection ends after the error
        cur, self.cur = self.cur, None
        if cur is not None and cur in self.queue:
            # Broken mid-body: the upstream got a partial body; abandon it.
            if cur.response_begun():
                cur.cut_short()
                return
            cur.drop()
            self.queue.remove(cur)
        if cur is not None:
            err.headers = cur.error_headers()
        if self.queue:
            self.pending_error = err
        else:
            self._write_error(err)

    def _write_error(self, err: ClientProtocolError) -> None:
        self.write(build_response(err.status, headers=err.headers, close=True))
        self._close_after_write()

    def _close_after_write(self) -> None:
        self.flush()
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes buffered writes first

    # -- flow control ------------------------------------------------------------
    def pause_reading(self, reason: int) -> None:
        if not self.pause_mask and self.transport is not None:
            self.transport.pause_reading()
        self.pause_mask |= reason

    def resume_reading(self, reason: int) -> None:
        if not self.pause_mask & reason:
            return
        self.pause_mask &= ~reason
        if not self.pause_mask and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def pause_reading_for_upstream(self) -> None:
        self.pause_reading(PAUSE_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self.resume_reading(PAUSE_UPSTREAM)

    def pause_reading_for_buffer(self) -> None:
        self.pause_reading(PAUSE_BUFFER)

    def resume_reading_for_buffer(self) -> None:
        self.resume_reading(PAUSE_BUFFER)

    # -- WebSocket tunnel ------------------------------------------------------
    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, tail: bytes) -> None:
        """The upstream answered 101: the connection becomes a byte tunnel (proxy/tunnel.py)."""
        assert self.transport is not None
        self.flush()  # the 101 head goes out before any tunnelled byte
        tunnel = Tunnel(self, conn, ex)
        self.tunnel = tunnel
        conn.tunnel = tunnel
        if self.queue and self.queue[0] is ex:
            del self.queue[0]  # nothing can follow an upgrade on this connection
        if tail:
            tunnel.from_upstream(tail)
        buffered, self.upgrade_buffer = self.upgrade_buffer or [], None
        for data in buffered:
            tunnel.from_client(data)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.resume_reading(PAUSE_UPGRADE)

    def end_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.end()

    def tunnel_write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def tunnel_ended(self, ex: Exchange) -> None:
        """Called once by the tunnel when it ends (either side, a drain cut or shutdown)."""
        self.tunnel = None
        close_lingering(self.transport, self.loop)
        self.closing = True
        ex.tunnel_over()

    # -- timers --------------------------------------------------------------------
    def _arm_timer(self, delay: float) -> None:
        self.timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        # One timer per connection, re-armed lazily: cheaper than resetting it per read.
        self.timer = None
        if self.closing or self.tunnel is not None or self.transport is None:
            return
        t = self.ctx.timeouts
        header_timeout = self.ctx.limits.client_header_timeout
        idle = self.loop.time() - self.last_activity
        if self.cur is not None and (not self.queue or self.queue[-1] is not self.cur):
            # A request head is arriving: it must be complete within
            # client_header_timeout (or `send`, if lower) of its first byte,
            # however slowly it trickles (slowloris).
            head_limit = min(t.send, header_timeout)
            elapsed = self.loop.time() - self.head_started
            if elapsed >= head_limit:
                self.reject(ClientProtocolError(408, "request head not completed in time"))
                return
            self._arm_timer(head_limit - elapsed)
        elif self.cur is not None and idle >= t.send:
            # A request body stalled for `send` seconds.
            self.reject(ClientProtocolError(408, "request body stalled"))
            return
        elif self.cur is not None:
            self._arm_timer(t.send - idle)
        elif self.queue:
            self._arm_timer(t.client_idle)  # exchanges keep their own timers
        elif self.head_started == 0.0 and idle >= header_timeout:
            # Silent since it connected (no request ever began): nginx's
            # client_header_timeout. Nothing to answer; just close.
            self._close_after_write()
        elif idle >= t.client_idle:
            self._close_after_write()
        else:
            # Wake in time for whichever comes first: idle close, a silent new
            # connection, or a head that may begin meanwhile.
            head_limit = min(t.send, header_timeout)
            wait = min(t.client_idle - idle, head_limit)
            if self.head_started == 0.0:
                wait = min(wait, header_timeout - idle)
            self._arm_timer(wait)

    def _body_limit(self, ex: Exchange) -> float:
        policy = ex.policy
        if policy is None:
            return self.ctx.limits.max_body or float("inf")
        return policy.max_body if policy.max_body is not None else float("inf")

    # -- shutdown -------------------------------------------------------------------
    def shutdown(self) -> None:
        """Server stopping: close now if idle, else after the current response.

        An idle connection is cut at once (a TLS close would wait for the
        client's close_notify); a tunnel gets a WebSocket close frame 1001.
        """
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.go_away()
        elif not self.queue and self.cur is None:
            self.flush()
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                close_lingering(transport, self.loop)  # a last response still leaving
            elif transport is not None:
                transport.abort()
