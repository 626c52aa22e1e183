"""One HTTP/2 stream as one exchange: the request in, the response out, flow-controlled.

Each stream runs the same `Exchange` the HTTP/1.1 path runs (validation,
routing, the switch decision, policies, upstream pool, metrics, access log),
so nothing about a request depends on the protocol the client chose.
`H2Stream` is the exchange's second `Downstream` (proxy/exchange.py): the
exchange hands it a response head (in HTTP/1.1 form), unframed body bytes and
the end, or one of edgeproxy's own prebuilt responses; the stream sends them
as HEADERS and DATA frames through its connection (`StreamOwner`, which
`H2Connection` in proxy/h2conn.py implements).

Flow control, both ways:
- request body: DATA is acknowledged to the client (its window reopens) only
  while the exchange takes more; when the upstream's write buffer is full, or
  the exchange buffers before its upstream is connected, the acknowledgements
  are held, so the client can be at most one window ahead;
- response body: sent as fast as the client's windows and the connection's
  room allow; beyond `STREAM_BUFFER` bytes held here the exchange pauses its
  upstream, and so does every stream while the connection's socket is full.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

from edgeproxy.errors import ClientProtocolError
from edgeproxy.proxy.exchange import REQ_BODY, Downstream, Exchange
from edgeproxy.proxy.framing import NOBODY
from edgeproxy.proxy.h2wire import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    H2Wire,
    WireSink,
    WireStream,
)
from edgeproxy.proxy.responses import build_response

if TYPE_CHECKING:
    from edgeproxy.proxy.context import ProxyContext
    from edgeproxy.proxy.headers import ResponseHead
    from edgeproxy.proxy.upstream import UpstreamConnection

log = logging.getLogger("edgeproxy.h2")

STREAM_BUFFER: Final = 65536
"""Response bytes held per stream beyond the client's window before its upstream pauses."""
SMALL_BODY: Final = 16384
"""Response body bytes (one default-sized DATA frame) held until the connection's flush."""

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

    __slots__ = ("headers", "length", "method", "target")

    def __init__(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], length: int
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.length = length
        """The Content-Length, -1 if none: the DATA frames must add up to it (§8.1.1)."""


class MalformedRequest(Exception):
    """A header block RFC 9113 §8.1.1 calls malformed: a stream error, RST_STREAM
    PROTOCOL_ERROR for that stream only (§8.1.1, §5.4.2)."""


_NAME_BYTES: Final = bytes(b for b in range(0x21, 0x7F) if not 0x41 <= b <= 0x5A and b != 0x3A)
"""The bytes of a field name RFC 9113 §8.2.1 allows: none in 0x00-0x20, 0x41-0x5a
(uppercase) or 0x7f-0xff, and no colon but a pseudo-header's leading one."""
GOOD_NAMES_KEPT: Final = 1024
_good_names: set[bytes] = set()
"""Field names found well-formed and not connection-specific (names repeat request
after request: each is checked once); emptied when full."""
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
"""Fields that make an HTTP/2 request malformed (§8.2.2; TE is checked apart)."""
REQUEST_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":protocol"})


def check_field(name: bytes, value: bytes) -> None:
    """§8.2.1 and §8.2.2 for one field of a request or its trailers."""
    if name not in _good_names:
        _check_name(name, value)
    # §8.2.1: no NUL, CR or LF in a value, no SP/HTAB around it. A memchr for each
    # (a regular expression, or bytes.translate, cost 3 % of an HTTP/2 request). By
    # int: `b"\r" in value` first tries b"\r" as an int, and raises and clears a
    # TypeError (2 µs).
    if value and (
        0x0D in value
        or 0x0A in value
        or 0x00 in value
        or value[0] in (0x20, 0x09)
        or value[-1] in (0x20, 0x09)
    ):
        raise MalformedRequest(f"malformed value of field {name!r}")


def _check_name(name: bytes, value: bytes) -> None:
    if (not name or name.translate(None, _NAME_BYTES)) and (
        len(name) < 2 or name[0] != 0x3A or name[1:].translate(None, _NAME_BYTES)
    ):
        raise MalformedRequest(f"malformed field name {name!r}")
    if name in CONNECTION_SPECIFIC:
        raise MalformedRequest(f"connection-specific field {name!r}")
    if name == b"te":
        if value.lower() != b"trailers":
            raise MalformedRequest("TE other than trailers")
        return  # its value matters: checked every time
    if len(_good_names) >= GOOD_NAMES_KEPT:
        _good_names.clear()
    _good_names.add(name)


def check_trailers(fields: list[tuple[bytes, bytes]]) -> None:
    """Request trailers: the same field rules, and no pseudo-header (§8.1)."""
    for name, value in fields:
        check_field(name, value)
        if name[:1] == b":":
            raise MalformedRequest(f"pseudo-header {name!r} in trailers")


def request_head(fields: list[tuple[bytes, bytes]], *, ends_stream: bool) -> RequestHead:
    """Pseudo-headers to method/target/Host; cookies joined (RFC 9113 §8.2.3); a body of
    unknown length is sent upstream chunked.

    The header block is validated here, in one pass (compiled with the hot path),
    instead of by the h2 library (its `validate_inbound_headers`, a chain of
    generators: a tenth of an HTTP/2 request's CPU): §8.2.1 field names and values,
    §8.2.2 connection-specific fields and TE, §8.3 pseudo-headers (known, request
    ones only, none repeated, none after a regular field; :method, and :scheme and
    :path unless CONNECT; :protocol only with CONNECT; :path not empty) and §8.3.1
    (:authority or Host, one Host, equal to :authority). `MalformedRequest` if not."""
    method: bytes | None = None
    target: bytes | None = None
    authority: bytes | None = None
    scheme = False
    protocol = False
    host: bytes | None = None
    seen_regular = False
    cookies: list[bytes] = []
    headers: list[tuple[bytes, bytes]] = []
    length = -1
    for name, value in fields:
        check_field(name, value)
        if name[:1] == b":":
            if seen_regular:
                raise MalformedRequest(f"pseudo-header {name!r} after a regular field")
            if name == b":method":
                if method is not None:
                    raise MalformedRequest("repeated :method")
                method = value
            elif name == b":path":
                if target is not None:
                    raise MalformedRequest("repeated :path")
                target = value
            elif name == b":authority":
                if authority is not None:
                    raise MalformedRequest("repeated :authority")
                authority = value
            elif name == b":scheme":
                if scheme:
                    raise MalformedRequest("repeated :scheme")
                scheme = True
            elif name == b":protocol":
                if protocol:
                    raise MalformedRequest("repeated :protocol")
                protocol = True
            else:
                raise MalformedRequest(f"pseudo-header {name!r} in a request")
            continue
        seen_regular = True
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                raise MalformedRequest("more than one Host")
            host = value
        elif name == b"content-length":
            if not value.isdigit() or (length >= 0 and int(value) != length):
                raise MalformedRequest("malformed Content-Length")
            length = int(value)
        headers.append((name, value))
    if method is None:
        raise MalformedRequest("no :method")
    if method == b"CONNECT" and not protocol:
        if scheme or target is not None:
            raise MalformedRequest("CONNECT with :scheme or :path")
    else:
        if not scheme or target is None:
            raise MalformedRequest("no :scheme or :path")
        if protocol and method != b"CONNECT":
            raise MalformedRequest(":protocol without CONNECT")
    if target is not None and not target:
        raise MalformedRequest("empty :path")
    if authority is None and host is None:
        raise MalformedRequest("neither :authority nor Host")
    if authority is not None and host is not None and authority != host:
        raise MalformedRequest(":authority and Host differ")
    if authority is not None and host is None:
        headers.insert(0, (b"host", authority))
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if ends_stream and length > 0:
        raise MalformedRequest("Content-Length without a body")
    if not ends_stream and length < 0:
        headers.append((b"transfer-encoding", b"chunked"))
    return RequestHead(method, target or b"", headers, length)


class StreamOwner(WireSink):
    """What a stream needs of its HTTP/2 connection (`H2Connection`, proxy/h2conn.py)."""

    __slots__ = (
        "local_port_b",
        "never_index",
        "peer_ip",
        "peer_ip_b",
        "peer_trusted",
        "send_blocked",
        "sni",
        "sni_router",
        "sni_site",
        "tls_version",
        "unflushed",
        "wire",
        "writing_paused",
    )

    wire: H2Wire
    """The connection's frames both ways (set by H2Connection)."""

    def __init__(self, local_port: int) -> None:
        self.local_port_b = str(local_port).encode()
        self.never_index: frozenset[bytes] = frozenset()
        """Response fields sent as HPACK never-indexed literals (see `_send_head`)."""
        self.peer_ip = ""
        self.peer_ip_b = b""
        self.peer_trusted = False
        self.sni: str | None = None
        self.sni_site: Any = None
        self.sni_router: Any = None
        self.tls_version: str | None = None
        self.unflushed = 0
        """DATA bytes handed to the wire since the last flush."""
        self.send_blocked = False
        """A stream held its DATA back for want of room (pumped again after a flush)."""
        self.writing_paused = False
        """The socket's write buffer is over its high-water mark."""

    def owner_ctx(self) -> ProxyContext:
        raise NotImplementedError

    def owner_loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    def room(self) -> int:
        """DATA bytes the connection takes now."""
        raise NotImplementedError

    def schedule_flush(self) -> None:
        raise NotImplementedError

    def reset_stream(self, stream: H2Stream, code: int) -> None:
        raise NotImplementedError

    def stream_done(self, stream: H2Stream) -> None:
        raise NotImplementedError

    def queue_pump(self, stream: H2Stream) -> None:
        """Pump `stream` at the next flush (this loop iteration)."""
        raise NotImplementedError


class H2Stream(Downstream):
    """One stream of an HTTP/2 connection: the `Downstream` of its `Exchange`."""

    __slots__ = (
        "abort_code",
        "body_bytes",
        "body_limit",
        "end_pending",
        "exchange",
        "expect_len",
        "finished",
        "gone",
        "held",
        "hold",
        "last_progress",
        "owner",
        "pump_queued",
        "rejected",
        "req_ended",
        "resp_ended",
        "send_buf",
        "send_bytes",
        "sid",
        "stop_request",
        "tasks",
        "up_paused",
        "ws",
    )

    def __init__(self, owner: StreamOwner, ws: WireStream) -> None:
        loop = owner.owner_loop()
        super().__init__(owner.owner_ctx(), loop, tls=True, local_port=0)
        self.owner = owner
        self.ws = ws
        """The stream's windows and state on the wire."""
        self.sid = ws.sid
        self.local_port_b = owner.local_port_b
        self.peer_ip = owner.peer_ip
        self.peer_ip_b = owner.peer_ip_b
        self.peer_trusted = owner.peer_trusted
        self.sni = owner.sni
        self.sni_site = owner.sni_site
        self.sni_router = owner.sni_router
        self.tls_version = owner.tls_version
        self.exchange: Exchange | None = None
        self.tasks: set[asyncio.Task[None]] | None = None
        # -- request
        self.body_bytes = 0
        self.expect_len = -1
        """The request's Content-Length (-1: none)."""
        self.body_limit = 0.0
        self.hold = 0
        self.held = 0
        """Request DATA bytes received but not yet acknowledged (window kept closed)."""
        self.req_ended = False
        self.rejected = False
        """Refused before routing (a ClientProtocolError): answered here, no exchange runs."""
        self.stop_request = False
        """Answered before the request ended: RST_STREAM NO_ERROR once the response is out."""
        # -- response
        self.send_buf: list[bytes] = []
        self.send_bytes = 0
        self.end_pending = False
        self.resp_ended = False
        self.last_progress = loop.time()
        self.pump_queued = False
        """A small body waits for the connection's flush to be sent (see `send_body`)."""
        self.up_paused = False
        self.abort_code = INTERNAL_ERROR
        # -- end
        self.finished = False
        self.gone = False

    # -- request ----------------------------------------------------------------------
    def begin(self, head: RequestHead, ends_stream: bool) -> None:
        """Run the exchange of a request `request_head` found well-formed."""
        ex = Exchange(self)
        self.exchange = ex
        self.expect_len = head.length
        try:
            if len(head.headers) > self.ctx.limits.max_headers:
                raise ClientProtocolError(431, "too many request headers")
            ex.on_request_head(
                head.method, "1.1", head.target, head.headers, upgrade=False, keep_alive=True
            )
        except ClientProtocolError as e:
            log.info("rejected HTTP/2 request from %s: %s", self.peer_ip, e)
            self._refuse(ex, e.status)
            if ends_stream:
                self.req_ended = True
            return
        self.body_limit = self._body_limit(ex)
        ex.start()
        if ends_stream:
            self.on_end()

    def _body_limit(self, ex: Exchange) -> float:
        policy = ex.policy
        if policy is None:
            return self.ctx.limits.max_body or float("inf")
        return policy.max_body if policy.max_body is not None else float("inf")

    def _refuse(self, ex: Exchange, status: int) -> None:
        """Answer `status` here; the exchange is dropped (as HTTP/1.1's reject does)."""
        self.rejected = True
        if ex.req_phase == REQ_BODY:
            ex.drop()
        self.send_local(build_response(status, headers=ex.error_headers()))
        self.finished = True
        self.stop_request = not self.req_ended
        self._maybe_done()

    def on_data(self, data: bytes, flow_size: int) -> None:
        ex = self.exchange
        if ex is None or self.req_ended or self.rejected:
            self.owner.wire.ack(self.ws, flow_size)
            return
        self.body_bytes += len(data)
        if self.body_bytes > self.expect_len >= 0:
            self.owner.wire.ack(self.ws, flow_size)
            self._malformed("more DATA than its Content-Length")
            return
        if self.body_bytes > self.body_limit:
            self.owner.wire.ack(self.ws, flow_size)
            self.req_ended = True
            if ex.response_begun():
                ex.cut_short()
            else:
                self._refuse(ex, 413)
            return
        if data:
            ex.on_request_body(data)
        if self.hold:
            self.held += flow_size
        else:
            self.owner.wire.ack(self.ws, flow_size)

    def on_end(self) -> None:
        if self.req_ended:
            return
        if self.expect_len >= 0 and self.body_bytes != self.expect_len and not self.rejected:
            self._malformed("less DATA than its Content-Length")
            return
        self.req_ended = True
        ex = self.exchange
        if ex is not None and not self.rejected and ex.req_phase == REQ_BODY:
            ex.on_request_complete()

    # -- back-pressure on the request body (from the exchange) ---------------------------
    def _release_acks(self, reason: int) -> None:
        self.hold &= ~reason
        if not self.hold and self.held and not self.gone:
            held, self.held = self.held, 0
            self.owner.wire.ack(self.ws, held)
            self.owner.schedule_flush()

    def pause_reading_for_upstream(self) -> None:
        self.hold |= HOLD_UPSTREAM

    def resume_reading_for_upstream(self) -> None:
        self._release_acks(HOLD_UPSTREAM)

    def pause_reading_for_buffer(self) -> None:
        self.hold |= HOLD_BUFFER

    def resume_reading_for_buffer(self) -> None:
        self._release_acks(HOLD_BUFFER)

    # -- back-pressure on the response (from the client's windows and the socket) --------
    def pause_upstream(self) -> None:
        ex = self.exchange
        if not self.up_paused and ex is not None:
            self.up_paused = True
            ex.pause_response()

    def maybe_resume_upstream(self) -> None:
        if self.up_paused and self.send_bytes <= STREAM_BUFFER and not self.owner.writing_paused:
            self.up_paused = False
            ex = self.exchange
            if ex is not None:
                ex.resume_response()

    # -- the response (Downstream) ----------------------------------------------------------
    def send_continue(self) -> None:
        pass  # HTTP/2 clients send the body without waiting for a 100

    def send_local(self, data: bytes) -> None:
        if self.gone:
            return
        end = data.find(b"\r\n\r\n")
        body = b"" if end < 0 else data[end + 4 :]
        ex = self.exchange
        head_only = ex is not None and ex.method == b"HEAD"
        self._send_head(data, end, end_stream=head_only or not body)
        if not head_only and body:
            self.send_body(body)
            self.send_end()

    def send_head(self, head: ResponseHead) -> None:
        if self.gone:
            return
        data = head.data
        self._send_head(data, data.find(b"\r\n\r\n"), end_stream=head.mode == NOBODY)

    def _send_head(self, data: bytes, end: int, *, end_stream: bool) -> None:
        """HEADERS for the HTTP/1.1 head edgeproxy built (`data[:end]`, all of it if
        `end` < 0): names lowercased, hop-by-hop fields dropped, those in `never_index`
        as HPACK never-indexed literals (the request id: a value new every time;
        Set-Cookie: a secret, RFC 7541 §7.1.3)."""
        owner = self.owner
        wire = owner.wire
        ws = self.ws
        if not (ws.closed or ws.local_closed):  # encoding takes a pending table size update
            block = wire.encoder.encode_head(
                data, len(data) if end < 0 else end, HOP_BY_HOP, owner.never_index
            )
            wire.send_block(ws, block, end_stream)
        if end_stream:
            self.resp_ended = True
        owner.schedule_flush()

    def send_body(self, data: bytes) -> None:
        if self.gone or self.resp_ended:
            return
        self.send_buf.append(data)
        self.send_bytes += len(data)
        if self.send_bytes <= SMALL_BODY:
            # Sent at the flush: the end of the response (send_end), which mostly
            # follows in the same iteration, then rides on its last DATA frame
            # (END_STREAM) instead of an empty DATA frame of its own.
            if not self.pump_queued:
                self.pump_queued = True
                self.owner.queue_pump(self)
        else:
            self.pump()
        # Checked per upstream read: an upstream attached after the connection's
        # socket filled up was not there to be paused then.
        if self.send_bytes > STREAM_BUFFER or self.owner.writing_paused:
            self.pause_upstream()

    def send_end(self) -> None:
        if self.gone or self.resp_ended:
            return
        self.end_pending = True
        if not self.pump_queued:
            self.pump()

    def cork(self) -> None:
        pass  # frames are flushed once per loop iteration anyway (H2Connection.flush)

    def uncork(self) -> None:
        pass

    def pump(self) -> None:
        """Send what the client's windows allow; END_STREAM once all is out."""
        if self.gone:
            return
        owner = self.owner
        wire = owner.wire
        ws = self.ws
        buf = self.send_buf
        sent = False
        while buf:
            window = wire.window(ws)
            if window <= 0:
                break
            room = owner.room()
            if room <= 0:
                owner.send_blocked = True
                break
            chunk = buf[0]
            n = min(window, room, wire.peer_max_frame, len(chunk))
            if n == len(chunk):
                del buf[0]
            else:
                buf[0] = chunk[n:]
                chunk = chunk[:n]
            # The last DATA frame carries END_STREAM.
            last = not buf and self.end_pending
            if last:
                self.end_pending = False
                self.resp_ended = True
            wire.send_data(ws, chunk, last)
            owner.unflushed += n
            self.send_bytes -= n
            sent = True
        if not buf and self.end_pending:
            self.end_pending = False
            self.resp_ended = True
            wire.send_data(ws, b"", True)
            sent = True
        if sent:
            self.last_progress = self.loop.time()
            owner.schedule_flush()
            self.maybe_resume_upstream()
        if self.resp_ended:
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
            self.abort_code = CANCEL
            ex = self.exchange
            if ex is not None and not self.finished:
                ex.fail(504, "client window closed (send timeout)")  # cuts: abort() below
            self._reset(CANCEL)

    # -- the end (Downstream) ------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self.loop.create_task(coro, name=name)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def exchange_finished(self, ex: Exchange, *, keep_alive: bool) -> None:
        self.finished = True
        if not self.req_ended:
            # Answered before the request body ended (e.g. 401 on an upload): once the
            # response is out, RST_STREAM NO_ERROR tells the client to stop (RFC 9113 §8.1).
            self.req_ended = True
            self.stop_request = True
        self._maybe_done()

    def abort(self, ex: Exchange) -> None:
        """The response can't be completed (truncated upstream, drain cut): reset the stream."""
        self.finished = True
        self._reset(self.abort_code)

    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, tail: bytes) -> None:
        raise NotImplementedError("no upgrade on HTTP/2 (streams pass upgrade=False)")

    def end_tunnel(self) -> None:
        raise NotImplementedError("no tunnel on HTTP/2")

    def tunnel_write(self, data: bytes) -> None:
        raise NotImplementedError("no tunnel on HTTP/2")

    def tunnel_ended(self, ex: Exchange) -> None:
        raise NotImplementedError("no tunnel on HTTP/2")

    # -- ending the stream ------------------------------------------------------------------------
    def _give_back_window(self) -> None:
        """The stream is over: request DATA whose acknowledgement was held still counts
        against the connection's window, so acknowledge it now."""
        if self.held:
            held, self.held = self.held, 0
            self.owner.wire.ack(self.ws, held)

    def _reset(self, code: int) -> None:
        if self.gone:
            return
        self._give_back_window()
        self.gone = True
        self.send_buf.clear()
        self.send_bytes = 0
        self.owner.reset_stream(self, code)
        self.owner.stream_done(self)
        self._drop_tasks()

    def _malformed(self, why: str) -> None:
        """The body broke §8.1.1: a stream error, RST_STREAM PROTOCOL_ERROR."""
        log.info("HTTP/2 stream %d from %s: malformed request: %s", self.sid, self.peer_ip, why)
        self.abort_code = PROTOCOL_ERROR
        ex = self.exchange
        if ex is not None and not self.finished and not self.rejected:
            ex.downstream_lost()
        self._reset(PROTOCOL_ERROR)

    def _maybe_done(self) -> None:
        if self.finished and self.resp_ended and not self.gone:
            if self.stop_request:
                self.owner.reset_stream(self, NO_ERROR)
            self._give_back_window()
            self.gone = True
            self.owner.stream_done(self)
            self._drop_tasks()

    def client_gone(self) -> None:
        """RST_STREAM from the client, or its connection ended: 499 unless answered."""
        if self.gone:
            return
        self.gone = True
        ex = self.exchange
        if ex is not None and not self.finished and not self.rejected:
            ex.downstream_lost()
        self._drop_tasks()

    def _drop_tasks(self) -> None:
        for t in self.tasks or ():
            t.cancel()
        self.tasks = None
