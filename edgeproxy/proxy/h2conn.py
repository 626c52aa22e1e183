"""HTTP/2 to clients: one asyncio Protocol per connection, on our own wire codec.

Chosen by ALPN on the TLS listener (`edgeproxy/proxy/alpn.py`). The frames,
stream states, windows and HPACK are `h2wire.H2Wire`'s (sans-IO, compiled with
the hot path), which calls this class back once per event (`WireSink`).
Request heads are validated by `h2stream.request_head` and `check_trailers`
(RFC 9113 §8.2: uppercase names, connection-specific fields; §8.3
pseudo-header rules); a malformed request is a stream error: RST_STREAM
PROTOCOL_ERROR for it alone, the connection and its other streams go on.
This class does the I/O around the wire and what a server adds to it:

- caps per connection (`h2guard.FrameGuard`, fed by the wire frame by frame):
  rapid reset, SETTINGS/PING/PRIORITY and empty-DATA floods, header blocks
  across CONTINUATION frames; the decoded header list is capped by HPACK
  (`MAX_HEADER_LIST_SIZE`);
- at most `MAX_CONCURRENT_STREAMS` streams (advertised; the wire refuses more
  with RST_STREAM REFUSED_STREAM);
- bounded memory: a stream's request body is acknowledged (its window
  reopened) only as its upstream takes it; its response is held up to
  `STREAM_BUFFER` bytes beyond what the client's window lets out, then its
  upstream is paused; and every upstream pauses while the socket's own write
  buffer is full (the client does not read);
- a send timeout per stream (window closed, no progress for `timeouts.send`:
  RST_STREAM) and per connection (nothing written for `timeouts.send` while
  there is output: GOAWAY and close);
- graceful stop (`shutdown()`, or the client's own GOAWAY NO_ERROR): GOAWAY
  with the last stream processed; streams up to it finish, later ones are
  refused (REFUSED_STREAM: the client retries them elsewhere), then the
  connection closes.

Each stream becomes one exchange through `edgeproxy/proxy/h2stream.py`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, cast

from edgeproxy.proxy.context import ADMITTED, ProxyContext
from edgeproxy.proxy.h2guard import FrameGuard
from edgeproxy.proxy.h2stream import (
    H2Stream,
    MalformedRequest,
    StreamOwner,
    check_trailers,
    request_head,
)
from edgeproxy.proxy.h2wire import (
    ENHANCE_YOUR_CALM,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Error,
    H2Wire,
    WireStream,
)

log = logging.getLogger("edgeproxy.h2")

MAX_CONCURRENT_STREAMS: Final = 128
STREAM_WINDOW: Final = 65535
"""Request body bytes a stream may send ahead of its upstream (the RFC's default window)."""
CONNECTION_WINDOW: Final = 1 << 20
"""Request body bytes all streams of a connection may send ahead of their upstreams."""
WRITE_HIGH: Final = 256 * 1024
"""The socket's write buffer above which every upstream of the connection pauses."""
MAX_RESETS_PER_SECOND: Final = 200
MAX_CONTROL_PER_SECOND: Final = 100
MAX_EMPTY_DATA_PER_SECOND: Final = 100
HEADER_LIST_OVERHEAD: Final = 32
"""HPACK counts 32 bytes per header beyond its name and value (RFC 7541 §4.1)."""


class H2Connection(StreamOwner):
    """An asyncio protocol for one HTTP/2 client connection (duck-typed like ClientConnection)."""

    __slots__ = (
        "admitted",
        "closing",
        "ctx",
        "flush_scheduled",
        "goaway_sent",
        "last_write",
        "loop",
        "reading_paused",
        "started",
        "streams",
        "timer",
        "tls",
        "to_pump",
        "transport",
    )

    def __init__(self, ctx: ProxyContext, *, local_port: int) -> None:
        super().__init__(local_port)
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.never_index = frozenset({ctx.request_id_header, b"set-cookie"})
        self.tls = True
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.closing = False
        self.goaway_sent = False
        self.streams: dict[int, H2Stream] = {}
        self.flush_scheduled = False
        self.to_pump: list[H2Stream] = []
        """Streams whose small response bodies go out at the next flush."""
        self.reading_paused = False
        self.last_write = 0.0
        """When the socket last took bytes (or had none to take)."""
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        limits = ctx.limits
        guard = FrameGuard(
            max_resets=MAX_RESETS_PER_SECOND,
            max_control=MAX_CONTROL_PER_SECOND,
            max_empty_data=MAX_EMPTY_DATA_PER_SECOND,
            max_header_block=limits.max_header_bytes,
        )
        self.wire = H2Wire(
            self,
            guard,
            max_streams=MAX_CONCURRENT_STREAMS,
            header_list_size=limits.max_header_bytes + HEADER_LIST_OVERHEAD * limits.max_headers,
            stream_window=STREAM_WINDOW,
            connection_window=CONNECTION_WINDOW,
        )

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_ip = peer[0]
        self.ctx = ctx = self.ctx.newest()
        self.peer_ip_b = self.peer_ip.encode()
        self.peer_trusted = ctx.is_trusted(self.peer_ip)
        ssl_obj = transport.get_extra_info("ssl_object")
        if ssl_obj is not None:
            self.sni = getattr(ssl_obj, "edgeproxy_sni", None)
            self.tls_version = ssl_obj.version()
            self.sni_site = ctx.router.site_for_sni(self.sni)
            self.sni_router = ctx.router
        now = self.loop.time()
        if ctx.caps.admit(self.peer_ip, len(ctx.connections), now) != ADMITTED:
            # Over a connection cap: GOAWAY, closed at once (h2 clients retry later).
            self.closing = True
            self.wire.start()
            self.wire.goaway(REFUSED_STREAM)
            self.transport.write(self.wire.data_to_send())
            self.transport.close()
            return
        self.admitted = True
        ctx.connections.add(self)
        ctx.accepted[True] += 1
        ctx.h2_accepted += 1
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.started = self.last_write = now
        self.wire.start()
        self.flush()
        self._arm_timer()

    def owner_ctx(self) -> ProxyContext:
        return self.ctx

    def owner_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def sni_site_now(self) -> Any:
        """The site of the SNI name under the config in force (as ClientConnection's)."""
        router = self.ctx.router
        if self.sni_router is not router:
            self.sni_site = router.site_for_sni(self.sni)
            self.sni_router = router
        return self.sni_site

    def data_received(self, data: bytes) -> None:
        if self.closing and self.transport is None:
            return
        try:
            self.wire.receive(data, self.loop.time())
        except H2Error as e:
            if e.code == ENHANCE_YOUR_CALM:
                log.warning(
                    "HTTP/2 connection from %s: %s; GOAWAY ENHANCE_YOUR_CALM", self.peer_ip, e.why
                )
            else:
                log.info("HTTP/2 connection from %s ended: %s", self.peer_ip, e.why)
            self._end_connection()
            return
        self.schedule_flush()

    def eof_received(self) -> bool | None:
        return None  # a half-closed HTTP/2 connection is over: close it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ctx.connections.discard(self)
        if self.admitted:
            self.admitted = False
            self.ctx.caps.release(self.peer_ip)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for stream in list(self.streams.values()):
            stream.client_gone()
        self.streams.clear()
        self.to_pump.clear()
        self.transport = None

    def pause_writing(self) -> None:
        # The client does not read: hold every upstream (and stop reading its
        # requests, whose answers would only pile up: PING and SETTINGS acks too).
        self.writing_paused = True
        for stream in self.streams.values():
            stream.pause_upstream()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.last_write = self.loop.time()
        self._resume_reading()
        for stream in list(self.streams.values()):
            if stream.send_buf:
                stream.pump()
            stream.maybe_resume_upstream()

    # -- events from the wire (WireSink) ----------------------------------------------
    def on_request(self, ws: WireStream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        sid = ws.sid
        if self.goaway_sent or self.closing:
            # After our GOAWAY: refused, never processed (the client may retry it).
            self.wire.reset(sid, REFUSED_STREAM)
            return
        try:
            head = request_head(fields, ends_stream=end)
        except MalformedRequest as e:
            log.info("HTTP/2 stream %d from %s: malformed request: %s", sid, self.peer_ip, e)
            self.wire.reset(sid, PROTOCOL_ERROR)
            return
        stream = H2Stream(self, ws)
        self.streams[sid] = stream
        stream.begin(head, end)

    def on_data(self, sid: int, data: bytes, flow_len: int, end: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            self.wire.ack_connection(flow_len)
            return
        stream.on_data(data, flow_len)
        if end:
            stream.on_end()

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        # Request trailers are not forwarded (HTTP/1.1 upstreams rarely take them),
        # but malformed ones make the request malformed as a malformed head does.
        try:
            check_trailers(fields)
        except MalformedRequest as e:
            log.info("HTTP/2 stream %d from %s: malformed trailers: %s", sid, self.peer_ip, e)
            self.on_reset(sid, PROTOCOL_ERROR)
            self.wire.reset(sid, PROTOCOL_ERROR)
            return
        stream = self.streams.get(sid)
        if stream is not None:
            stream.on_end()

    def on_window(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None:
                stream.pump()
        else:
            self.on_initial_window_changed()

    def on_initial_window_changed(self) -> None:
        for stream in list(self.streams.values()):
            stream.pump()

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.client_gone()

    def on_goaway(self, code: int) -> None:
        """The client's GOAWAY: it opens no more streams. NO_ERROR: the streams in
        flight are answered, then the connection closes (as `shutdown()`); an error
        code: they end as the client's (499) and the connection closes now."""
        if code == NO_ERROR:
            self.shutdown()
            return
        log.info("HTTP/2 connection from %s: GOAWAY from the client, code %d", self.peer_ip, code)
        self._end_connection()

    # -- used by streams ----------------------------------------------------------
    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        if self.closing and not self.streams:
            if not self.goaway_sent and self.transport is not None:
                self._send_graceful_goaway()
            self._close_transport()

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        self.wire.reset(stream.sid, code)
        self.schedule_flush()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            # Coalesced per loop iteration, as on HTTP/1.1: one send(), one TLS record.
            self.loop.call_soon(self.flush)

    def queue_pump(self, stream: H2Stream) -> None:
        self.to_pump.append(stream)
        self.schedule_flush()

    def flush(self) -> None:
        if self.to_pump:
            self.flush_scheduled = True  # what these pumps queue goes out below
            queued, self.to_pump = self.to_pump, []
            for stream in queued:
                stream.pump_queued = False
                stream.pump()
        self.flush_scheduled = False
        self.unflushed = 0
        data = self.wire.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)
            if not self.writing_paused:
                self.last_write = self.loop.time()
        if self.send_blocked and not self.writing_paused:
            self.send_blocked = False
            for stream in list(self.streams.values()):
                if stream.send_buf:
                    stream.pump()

    def room(self) -> int:
        """DATA bytes the connection takes now: what keeps the socket's buffer, plus
        what this loop iteration queued, under WRITE_HIGH. Without it, 100 upstream
        reads in one iteration (up to 256 KiB each) all went into one write."""
        if self.writing_paused or self.transport is None:
            return 0
        return WRITE_HIGH - self.unflushed - self.transport.get_write_buffer_size()

    # -- flow control of the client's reads -----------------------------------------
    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    # -- ending -----------------------------------------------------------------------
    def _send_graceful_goaway(self) -> None:
        """GOAWAY NO_ERROR while streams go on: those up to the last one processed are
        still answered, their windows still updated; newer ones are refused."""
        self.goaway_sent = True
        self.wire.goaway(NO_ERROR)
        self.flush()

    def _end_connection(self) -> None:
        """An error ends the connection: GOAWAY out (queued by now), streams cut, closed."""
        self.closing = True
        self.goaway_sent = True
        for stream in list(self.streams.values()):
            stream.client_gone()
        self.streams.clear()
        self.flush()
        self._close_transport()

    def _close_transport(self) -> None:
        self.closing = True
        self.flush()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def shutdown(self) -> None:
        """Stop gracefully (server shutdown, hand-over): GOAWAY with the last stream
        processed; streams up to it finish, then the connection closes. Later
        streams the client had in flight are refused with REFUSED_STREAM."""
        if self.closing and self.goaway_sent:
            return
        self.closing = True
        if self.transport is None:
            return
        if not self.goaway_sent:
            self._send_graceful_goaway()
        if not self.streams:
            self._close_transport()
        else:
            self.flush()

    def step_back(self) -> None:
        """Another edgeproxy process took the listeners over (edgeproxy/handover.py):
        GOAWAY now, so the client opens its next streams on a new connection (to the
        new process), and the streams in flight finish here."""
        self.shutdown()

    # -- timers --------------------------------------------------------------------------
    def _arm_timer(self) -> None:
        t = self.ctx.timeouts
        tick = min(t.send, t.client_idle, self.ctx.limits.client_header_timeout) / 4
        self.timer = self.loop.call_later(max(tick, 0.25), self._on_timer)

    def _on_timer(self) -> None:
        """Send timeouts (per stream, per connection) and the idle close; re-armed."""
        self.timer = None
        transport = self.transport
        if transport is None:
            return
        now = self.loop.time()
        t = self.ctx.timeouts
        if transport.get_write_buffer_size() and now - self.last_write >= t.send:
            log.info("HTTP/2 connection from %s: nothing read for %.0f s", self.peer_ip, t.send)
            transport.abort()
            return
        for stream in list(self.streams.values()):
            stream.check_send_timeout(now, t.send)
        if not self.streams:
            idle = now - max(self.last_write, self.started)
            limit = (
                t.client_idle if self.wire.last_stream else self.ctx.limits.client_header_timeout
            )
            if idle >= limit and not self.closing:
                self.shutdown()
        self.schedule_flush()
        if self.transport is not None:
            self._arm_timer()
