"""One HTTP/2 stream as one exchange: the request in, the response out, flow-controlled.

Each stream runs the same `Exchange` the HTTP/1.1 path runs (validation,
routing, the switch decision, policies, upstream pool, metrics, access log),
so nothing about a request depends on the protocol the client chose.

The exchange talks to its client as to an HTTP/1.1 connection: it calls
`write()` with response bytes (a head, a body, chunked or not; or one of
edgeproxy's own prebuilt responses) and the flow-control methods. `H2Stream`
is that client for one stream: a `ClientConnection` subclass (so the compiled
exchange takes it) whose `write()` parses those bytes back into a status,
headers and body with httptools' response parser and sends them as HEADERS
and DATA frames. That costs a second parse of the response head per request;
it is the smallest adapter onto the exchange as it is today, and the place a
native downstream interface would replace (docs/architecture.md).

Flow control, both ways:
- request body: DATA is acknowledged to the client (its window reopens) only
  while the exchange takes more; when the upstream's write buffer is full,
  or the exchange buffers before its upstream is connected, the
  acknowledgements are held, so the client can be at most one window ahead;
- response body: sent as fast as the client's windows allow; beyond
  `STREAM_BUFFER` bytes held here the upstream is paused, and so is every
  upstream while the connection's socket buffer is full.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import h2.exceptions
import httptools
from h2.errors import ErrorCodes

from edgeproxy.errors import ClientProtocolError
from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.exchange import Exchange
from edgeproxy.proxy.h2conn import STREAM_BUFFER
from edgeproxy.proxy.responses import build_response

if TYPE_CHECKING:
    from edgeproxy.proxy.h2conn import H2Connection

log = logging.getLogger("edgeproxy.h2")

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    }
)
"""Response fields an HTTP/2 response must not carry (RFC 9113 §8.2.2)."""

# Why acknowledging request DATA is held (bits, like ClientConnection's pause reasons).
HOLD_UPSTREAM: Final = 1
HOLD_BUFFER: Final = 2


class RequestHead:
    """The request of a HEADERS frame in HTTP/1.1 terms: method, target, fields with Host."""

    __slots__ = ("headers", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.headers = headers


def request_head(fields: list[tuple[bytes, bytes]], *, ends_stream: bool) -> RequestHead:
    """Pseudo-headers to method/target/Host; cookies joined (RFC 9113 §8.2.3); a body of
    unknown length is sent upstream chunked. The h2 library has already checked the
    pseudo-header rules and refused connection-specific and uppercase fields."""
    method = b""
    target = b""
    authority: bytes | None = None
    host: bytes | None = None
    cookies: list[bytes] = []
    headers: list[tuple[bytes, bytes]] = []
    has_length = False
    for name, value in fields:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            host = value
        elif name == b"content-length":
            has_length = True
        headers.append((name, value))
    if authority is not None:
        if host is None:
            headers.insert(0, (b"host", authority))
        elif host.lower() != authority.lower():
            raise ClientProtocolError(400, ":authority and Host name different hosts")
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if not ends_stream and not has_length:
        headers.append((b"transfer-encoding", b"chunked"))
    return RequestHead(method, target, headers)


class H2Stream(ClientConnection):
    """One stream of an `H2Connection`: the client its `Exchange` writes to."""

    def __init__(self, conn: H2Connection, sid: int) -> None:
        super().__init__(conn.ctx, tls=True, local_port=0)
        self.h2 = conn
        self.sid = sid
        self.local_port_b = conn.local_port_b
        self.peer_ip = conn.peer_ip
        self.peer_ip_b = conn.peer_ip_b
        self.peer_trusted = conn.peer_trusted
        self.sni = conn.sni
        self.sni_site = conn.sni_site
        self.sni_router = conn.sni_router
        self.tls_version = conn.tls_version
        self.exchange: Exchange | None = None
        self.resp_parser: httptools.HttpResponseParser | None = None
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_head_sent = False
        self.resp_ended = False
        self.head_only = False
        self.send_buf: list[bytes] = []
        self.send_bytes = 0
        self.end_pending = False
        self.last_progress = conn.loop.time()
        self.up_paused = False
        self.hold = 0
        self.held = 0
        """Request DATA bytes received but not yet acknowledged (window kept closed)."""
        self.req_ended = False
        self.stop_request = False
        self.finished = False
        self.gone = False

    # -- request --------------------------------------------------------------------
    def begin(self, fields: list[tuple[bytes, bytes]], ends_stream: bool) -> None:
        ex = Exchange(self)
        self.exchange = ex
        self.cur = ex
        self.head_started = self.loop.time()
        try:
            head = request_head(fields, ends_stream=ends_stream)
            if len(head.headers) > self.max_headers:
                raise ClientProtocolError(431, "too many request headers")
            ex.method = head.method
            ex.target = head.target
            ex.headers = head.headers
            ex.version = "1.1"
            ex.keep_alive = True
            ex.prepare()
        except ClientProtocolError as e:
            log.info("rejected HTTP/2 request from %s: %s", self.peer_ip, e)
            ex.local = build_response(e.status, headers=e.headers or ex.error_headers())
            ex.keep_alive = True
        self.body_limit = self._body_limit(ex)
        self.queue.append(ex)
        ex.start()
        if ends_stream:
            self.on_end()

    def on_data(self, data: bytes, flow_size: int) -> None:
        ex = self.exchange
        if ex is None or self.req_ended:
            self.h2.conn.acknowledge_received_data(flow_size, self.sid)
            return
        self.last_activity = self.loop.time()
        self.body_bytes += len(data)
        if self.body_bytes > self.body_limit:
            self.h2.conn.acknowledge_received_data(flow_size, self.sid)
            self._refuse_body(ex)
            return
        if ex.local is None and not ex.done and data:
            ex.on_request_body(data)
        if self.hold:
            self.held += flow_size
        else:
            self.h2.conn.acknowledge_received_data(flow_size, self.sid)

    def _refuse_body(self, ex: Exchange) -> None:
        """Over the body limit: 413 if nothing was answered yet, else cut; no more DATA."""
        self.req_ended = True
        self.stop_request = True
        if not ex.resp_started:
            ex.abandon()
            self.ctx.tracker.discard(ex)
            ex.local = build_response(413, headers=ex.error_headers())
            ex.done = False
            ex.req_done = True
            ex.start()
        else:
            ex.error = "request body over the limit"
            ex.abandon()
            self.abort(ex)

    def on_end(self) -> None:
        if self.req_ended:
            return
        self.req_ended = True
        self.cur = None
        ex = self.exchange
        if ex is not None and not ex.req_done:
            ex.on_request_complete()

    # -- flow control (called by the exchange and its upstream) ---------------------------
    def _hold_acks(self, reason: int) -> None:
        self.hold |= reason

    def _release_acks(self, reason: int) -> None:
        self.hold &= ~reason
        if not self.hold and self.held and not self.gone:
            held, self.held = self.held, 0
            self.h2.conn.acknowledge_received_data(held, self.sid)
            self.h2._schedule_flush()

    def pause_reading_for_upstream(self) -> None:
        self._hold_acks(HOLD_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._release_acks(HOLD_UPSTREAM)

    def pause_reading_for_buffer(self) -> None:
        self._hold_acks(HOLD_BUFFER)

    def resume_reading_for_buffer(self) -> None:
        self._release_acks(HOLD_BUFFER)

    def pause_upstream(self) -> None:
        ex = self.exchange
        if not self.up_paused and ex is not None and ex.upstream is not None:
            self.up_paused = True
            ex.upstream.pause_reading()

    def maybe_resume_upstream(self) -> None:
        if self.up_paused and self.send_bytes <= STREAM_BUFFER and not self.h2.writing_paused:
            self.up_paused = False
            ex = self.exchange
            if ex is not None and ex.upstream is not None:
                ex.upstream.resume_reading()

    # -- response: bytes from the exchange, parsed back into HEADERS and DATA ----------------
    def write(self, data: bytes) -> None:
        if self.gone or self.resp_ended:
            return
        parser = self.resp_parser
        if parser is None:
            parser = self.resp_parser = httptools.HttpResponseParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as e:
            log.error("HTTP/2 stream %d: cannot frame the response: %s", self.sid, e)
            self._reset(ErrorCodes.INTERNAL_ERROR)

    def flush(self) -> None:
        self.h2._schedule_flush()

    def on_status(self, status: bytes) -> None:
        pass

    def on_message_begin(self) -> None:
        self.resp_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.resp_parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            return  # 100 Continue written for an Expect: HTTP/2 clients do without
        ex = self.exchange
        self.head_only = (ex is not None and ex.method == b"HEAD") or status in (204, 304)
        fields = [(b":status", str(status).encode())]
        for name, value in self.resp_headers:
            name = name.lower()
            if name not in HOP_BY_HOP:
                fields.append((name, value))
        self.resp_head_sent = True
        try:
            self.h2.conn.send_headers(self.sid, fields, end_stream=self.head_only)
        except h2.exceptions.ProtocolError:
            # The client reset the stream or ended the connection meanwhile: not
            # the upstream's fault (an exception here would blame its response).
            self._client_went_away()
            return
        if self.head_only:
            self.resp_ended = True
            self._maybe_done()
        self.h2._schedule_flush()

    def on_body(self, body: bytes) -> None:
        if self.resp_ended:
            return
        self.send_buf.append(body)
        self.send_bytes += len(body)
        self.pump()
        # Checked per upstream read: an upstream attached after the connection's
        # socket filled up was not there to be paused then.
        if self.send_bytes > STREAM_BUFFER or self.h2.writing_paused:
            self.pause_upstream()

    def on_message_complete(self) -> None:
        parser = self.resp_parser
        if parser is not None and parser.get_status_code() < 200:
            return
        if self.resp_ended:
            return
        self.end_pending = True
        self.pump()

    def pump(self) -> None:
        """Send what the client's windows allow; END_STREAM once all is out."""
        if self.gone:
            return
        owner = self.h2
        conn = owner.conn
        buf = self.send_buf
        sent = False
        while buf:
            try:
                window = conn.local_flow_control_window(self.sid)
            except h2.exceptions.ProtocolError:
                self._client_went_away()
                return
            if window <= 0:
                break
            room = owner.room()
            if room <= 0:
                owner.send_blocked = True
                break
            chunk = buf[0]
            n = min(window, room, conn.max_outbound_frame_size, len(chunk))
            if n == len(chunk):
                del buf[0]
            else:
                buf[0] = chunk[n:]
                chunk = chunk[:n]
            try:
                conn.send_data(self.sid, chunk)
            except h2.exceptions.ProtocolError:
                self._client_went_away()
                return
            owner.unflushed += n
            self.send_bytes -= n
            sent = True
        if sent:
            self.last_progress = self.loop.time()
            self.h2._schedule_flush()
            self.maybe_resume_upstream()
        if not buf and self.end_pending:
            self.end_pending = False
            self.resp_ended = True
            try:
                conn.end_stream(self.sid)
            except h2.exceptions.ProtocolError:
                self._client_went_away()
                return
            self.h2._schedule_flush()
            self._maybe_done()

    def check_send_timeout(self, now: float, limit: float) -> None:
        """The client's window stayed shut with a response waiting: cut this stream."""
        if self.send_buf and now - self.last_progress >= limit:
            log.info(
                "HTTP/2 stream %d from %s: client window closed for %.0f s; reset",
                self.sid,
                self.peer_ip,
                limit,
            )
            ex = self.exchange
            if ex is not None and not ex.reported:
                ex.error = "client window closed (send timeout)"
                ex.abandon()
                self.abort(ex, ErrorCodes.CANCEL)
            else:
                self._reset(ErrorCodes.CANCEL)

    # -- end of the exchange ------------------------------------------------------------
    def exchange_finished(self, ex: Exchange, *, keep_alive: bool) -> None:
        self.ctx.tracker.discard(ex)
        self._record(ex)
        self.queue.clear()
        self.finished = True
        if not self.req_ended:
            # Answered before the request body ended (e.g. 401 on an upload): once the
            # response is out, RST_STREAM NO_ERROR tells the client to stop (RFC 9113 §8.1).
            self.req_ended = True
            self.stop_request = True
        self._maybe_done()

    def abort(self, ex: Exchange, code: ErrorCodes = ErrorCodes.INTERNAL_ERROR) -> None:
        """The response can't be completed (truncated upstream, drain cut): reset the stream."""
        ex.reported = True
        self.ctx.tracker.discard(ex)
        self._record(ex)
        self.queue.clear()
        self.finished = True
        self._reset(code)

    def _give_back_window(self) -> None:
        """The stream is over: request DATA whose acknowledgement was held still counts
        against the connection's window, so acknowledge it now."""
        if self.held:
            held, self.held = self.held, 0
            self.h2.conn.acknowledge_received_data(held, self.sid)

    def _reset(self, code: ErrorCodes) -> None:
        if self.gone:
            return
        self._give_back_window()
        self.gone = True
        self.send_buf.clear()
        self.send_bytes = 0
        self.h2.reset_stream(self, code)
        self.h2.stream_done(self)
        self._drop_tasks()

    def _maybe_done(self) -> None:
        if self.finished and self.resp_ended and not self.gone:
            if self.stop_request:
                self.h2.reset_stream(self, ErrorCodes.NO_ERROR)
            self._give_back_window()
            self.gone = True
            self.h2.stream_done(self)
            self._drop_tasks()

    def _client_went_away(self) -> None:
        """The library refuses to send on this stream any more: the client is gone."""
        self.client_gone()
        self.h2.stream_done(self)

    def client_reset(self) -> None:
        """RST_STREAM from the client (or its connection ended): abandon the exchange."""
        self.client_gone()

    def client_gone(self) -> None:
        if self.gone and self.finished:
            return
        self.gone = True
        ex = self.exchange
        if ex is not None and not ex.done:
            ex.status = ex.status or 499
            ex.abandon()
            self.ctx.tracker.discard(ex)
            self._record(ex)
        elif ex is not None and not ex.reported:
            self.ctx.tracker.discard(ex)
            self._record(ex)
        self.queue.clear()
        self._drop_tasks()

    def _drop_tasks(self) -> None:
        for t in self.tasks or ():
            t.cancel()
        self.parser = None
        self.resp_parser = None
