"""HTTP/2 to clients: one asyncio Protocol per connection, on the `h2` library.

Chosen by ALPN on the TLS listener (`edgeproxy/proxy/alpn.py`). The `h2`
library is sans-IO: it holds the connection and stream state machines, HPACK
decoding and flow-control windows. Request heads are validated by
`h2stream.request_head` and `check_trailers` (RFC 9113 §8.2: uppercase names,
connection-specific fields; §8.3 pseudo-header rules; a malformed request ends
the connection with PROTOCOL_ERROR, which §5.4.1 allows for any stream error)
and response heads HPACK-encoded by `h2hpack.StaticEncoder`, both compiled with
the hot path: the library's own validation and encoder were a third of an
HTTP/2 request's CPU. This class does the I/O around it and what the library
leaves to a server:

- caps per connection (`h2guard.FrameGuard`): rapid reset, SETTINGS/PING/
  PRIORITY and empty-DATA floods, header blocks across CONTINUATION frames;
  the decoded header list is capped by HPACK (`MAX_HEADER_LIST_SIZE`);
- at most `MAX_CONCURRENT_STREAMS` streams (advertised; the library refuses more);
- bounded memory: a stream's request body is acknowledged (its window
  reopened) only as its upstream takes it; its response is held up to
  `STREAM_BUFFER` bytes beyond what the client's window lets out, then its
  upstream is paused; and every upstream pauses while the socket's own write
  buffer is full (the client does not read);
- a send timeout per stream (window closed, no progress for `timeouts.send`:
  RST_STREAM) and per connection (nothing written for `timeouts.send` while
  there is output: GOAWAY and close);
- graceful stop (`shutdown()`): GOAWAY with the last stream processed; streams
  up to it finish, later ones are refused (REFUSED_STREAM: the client retries
  them elsewhere), then the connection closes.

Each stream becomes one exchange through `edgeproxy/proxy/h2stream.py`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from edgeproxy.proxy.context import ADMITTED, ProxyContext
from edgeproxy.proxy.h2guard import FRAME_TOO_LARGE, WHY, FrameGuard
from edgeproxy.proxy.h2hpack import StaticEncoder
from edgeproxy.proxy.h2stream import (
    H2Stream,
    MalformedRequest,
    StreamOwner,
    check_trailers,
    request_head,
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


class _Silent:
    """A logger that drops debug records without looking at its level."""

    def debug(self, *args: object, **kwargs: object) -> None:
        pass


# The HPACK codec logs at debug level per integer and per header (27 calls a request,
# each through Logger.isEnabledFor: 5 % of the CPU of an HTTP/2 request, measured
# with cProfile under h2load). Its debug output is of no use here.
hpack.hpack.log = _Silent()  # type: ignore[assignment]


def _h2_config() -> h2.config.H2Configuration:
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        # Validated (§8.2, §8.3) and normalised (cookies) by h2stream.request_head and
        # check_trailers in one compiled pass: the library's generator chain cost a
        # tenth of an HTTP/2 request's CPU.
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,  # we build them: lowercase, no connection fields
        normalize_outbound_headers=False,
    )


class H2Connection(StreamOwner):
    """An asyncio protocol for one HTTP/2 client connection (duck-typed like ClientConnection)."""

    __slots__ = (
        "admitted",
        "closing",
        "ctx",
        "flush_scheduled",
        "goaway_sent",
        "guard",
        "last_stream",
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
        super().__init__(h2.connection.H2Connection(config=_h2_config()), local_port)
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.never_index = frozenset({ctx.request_id_header, b"set-cookie"})
        self.tls = True
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.closing = False
        self.goaway_sent = False
        self.last_stream = 0
        """The highest stream id processed (the last_stream_id of our GOAWAY)."""
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
        self.guard = FrameGuard(
            max_resets=MAX_RESETS_PER_SECOND,
            max_control=MAX_CONTROL_PER_SECOND,
            max_empty_data=MAX_EMPTY_DATA_PER_SECOND,
            max_header_block=limits.max_header_bytes,
        )
        conn = self.conn
        conn.encoder = StaticEncoder()  # type: ignore[assignment]  # duck-typed: see h2hpack
        header_list = limits.max_header_bytes + HEADER_LIST_OVERHEAD * limits.max_headers
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # In force from the first frame, not only once the client acknowledges our SETTINGS.
        conn.decoder.max_header_list_size = header_list

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
            self.conn.initiate_connection()
            self.conn.close_connection(ErrorCodes.REFUSED_STREAM, additional_data=b"too many")
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        self.admitted = True
        ctx.connections.add(self)
        ctx.accepted[True] += 1
        ctx.h2_accepted += 1
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        self.started = self.last_write = now
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
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
        why = self.guard.feed(data, self.loop.time())
        if why:
            if why == FRAME_TOO_LARGE:
                log.info("HTTP/2 connection from %s: %s", self.peer_ip, WHY[why])
                self._send_goaway(ErrorCodes.FRAME_SIZE_ERROR)
                self._end_connection()
            else:
                self._calm_down(WHY[why])
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            # The library has queued GOAWAY with the right code (PROTOCOL_ERROR,
            # FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM for an HPACK bomb, ...).
            log.info("HTTP/2 connection from %s ended: %s", self.peer_ip, e)
            self._end_connection()
            return
        try:
            for event in events:
                self._event(event)
        except MalformedRequest as e:
            log.info("HTTP/2 connection from %s ended: malformed request: %s", self.peer_ip, e)
            self._send_goaway(ErrorCodes.PROTOCOL_ERROR)
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

    # -- events ----------------------------------------------------------------
    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id) if event.stream_id is not None else None
            size = event.flow_controlled_length or 0
            if stream is None:
                if size and event.stream_id is not None:
                    self.conn.acknowledge_received_data(size, event.stream_id)
                return
            stream.on_data(event.data or b"", size)
            if event.stream_ended is not None:
                stream.on_end()
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.WindowUpdated):
            if not event.stream_id:
                for stream in list(self.streams.values()):
                    stream.pump()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.pump()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None:
                stream.client_gone()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                for stream in list(self.streams.values()):
                    stream.pump()
        elif isinstance(event, h2.events.TrailersReceived):
            # Request trailers are not forwarded (HTTP/1.1 upstreams rarely take them),
            # but malformed ones end the connection as a malformed head does.
            check_trailers(event.headers or [])
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and event.stream_ended is not None:
                stream.on_end()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client said GOAWAY. The library sends nothing after that (its
            # state machine is closed), so streams still in flight cannot be
            # answered: they end as the client's (499), and the connection closes.
            self.closing = True
            self.goaway_sent = True
            for stream in list(self.streams.values()):
                stream.client_gone()
            self.streams.clear()
            self._close_transport()

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id or 0
        if self.goaway_sent or self.closing:
            # After our GOAWAY: refused, never processed (the client may retry it).
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        ends_stream = event.stream_ended is not None
        head = request_head(event.headers or [], ends_stream=ends_stream)  # MalformedRequest
        self.last_stream = sid
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        stream.begin(head, ends_stream)

    # -- used by streams ----------------------------------------------------------
    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
        if self.closing and not self.streams:
            if not self.goaway_sent and self.transport is not None:
                self._send_graceful_goaway()
            self._close_transport()

    def reset_stream(self, stream: H2Stream, code: ErrorCodes) -> None:
        try:
            self.conn.reset_stream(stream.sid, code)
        except h2.exceptions.StreamClosedError:
            pass
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
        data = self.conn.data_to_send()
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
    def _calm_down(self, why: str) -> None:
        log.warning("HTTP/2 connection from %s: %s; GOAWAY ENHANCE_YOUR_CALM", self.peer_ip, why)
        self._send_goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        self._end_connection()

    def _send_goaway(self, code: ErrorCodes) -> None:
        """GOAWAY that ends the connection now (the library's state goes CLOSED)."""
        self.goaway_sent = True
        try:
            self.conn.close_connection(code, last_stream_id=self.last_stream)
        except h2.exceptions.ProtocolError:
            pass

    def _send_graceful_goaway(self) -> None:
        """GOAWAY NO_ERROR while streams go on: written past the library, whose state
        machine would refuse every frame after its own GOAWAY (the streams up to
        `last_stream` must still be answered, their windows still updated)."""
        self.goaway_sent = True
        self.flush()
        frame = GoAwayFrame(0, last_stream_id=self.last_stream, error_code=0)
        if self.transport is not None:
            self.transport.write(frame.serialize())

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
            limit = t.client_idle if self.last_stream else self.ctx.limits.client_header_timeout
            if idle >= limit and not self.closing:
                self.shutdown()
        self.schedule_flush()
        if self.transport is not None:
            self._arm_timer()
