"""The server side of an HTTP/2 connection on the wire (RFC 9113), compiled with the hot path.

`H2Wire` is sans-IO: `receive()` takes the client's bytes and calls a
`WireSink` (`H2Connection`, proxy/h2conn.py) once per event (a request, a
piece of request body, trailers, a window opened, a stream reset); the
`send_*` methods append frames to one output buffer that `data_to_send()`
hands over. It replaces the `h2` library at run time: its event objects,
frame objects and per-frame state-machine lookups were most of an HTTP/2
request's CPU (a pure-Python codec under a compiled proxy).

One pass over the bytes: the preface, then 9-byte frame headers, each checked
by `h2guard.FrameGuard` as it is read (floods, header blocks across
CONTINUATION, frames over SETTINGS_MAX_FRAME_SIZE refused at their header); a
frame split across reads is kept until it is whole (at most 16384 + 9 bytes).
What the RFC asks of a server, and what breaking it costs:

- §4.2, §6.x: each frame's length and stream-0 rules; PUSH_PROMISE from a
  client, a frame inside a header block, CONTINUATION of another stream: a
  connection error (GOAWAY with the code, then `H2Error`);
- §5.1: client stream ids odd and increasing; DATA on a stream the client
  ended or that is closed: RST_STREAM STREAM_CLOSED (the connection goes on);
  frames on a stream we reset are ignored, their DATA still counted for the
  connection's window (§6.9); HEADERS on a closed stream: STREAM_CLOSED;
- §5.1.2: a stream over `max_streams` open: RST_STREAM REFUSED_STREAM;
- §6.5: SETTINGS answered with ACK; INITIAL_WINDOW_SIZE changes every open
  stream's send window by the difference; HEADER_TABLE_SIZE goes to the HPACK
  encoder; §6.7 PING answered;
- §6.9: both windows each way; a client sending past ours: FLOW_CONTROL_ERROR.
  Received bytes are acknowledged (`ack()`) as the stream's consumer takes
  them, and WINDOW_UPDATE goes out once half a window is acknowledged
  (batched, as nghttp2 does), never for a stream the client ended;
- HPACK: request header blocks decoded (a decoding error: COMPRESSION_ERROR;
  a list over SETTINGS_MAX_HEADER_LIST_SIZE: ENHANCE_YOUR_CALM), response
  blocks encoded by `h2hpack.StaticEncoder` and split into CONTINUATION
  frames over the client's SETTINGS_MAX_FRAME_SIZE.

Per stream, only `WireStream` (windows and which side ended it) is kept here.
"""

from __future__ import annotations

from typing import Final, NoReturn

from edgeproxy.proxy.h2guard import (
    ACK,
    CONTINUATION,
    DATA,
    END_STREAM,
    FRAME_TOO_LARGE,
    HEADERS,
    OK,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WHY,
    FrameGuard,
)
from edgeproxy.proxy.h2hpack import Decoder, HeaderListTooLarge, HPACKDecodeError, StaticEncoder

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags beyond those the guard counts (h2guard.py).
PUSH_PROMISE: Final = 0x5
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (§7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

# Settings (§6.5.2).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

DEFAULT_WINDOW: Final = 65535
MAX_WINDOW: Final = 2**31 - 1
MIN_FRAME: Final = 16384
MAX_FRAME: Final = 2**24 - 1
CLOSED_KEPT: Final = 4096
"""Closed stream ids remembered (to tell a late frame from a protocol error); then forgotten."""


class H2Error(Exception):
    """A connection error (§5.4.1): GOAWAY with `code` is queued, the connection must end."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


class WireStream:
    """One stream's flow-control windows and state (§5.1), as the wire sees it."""

    __slots__ = (
        "closed",
        "local_closed",
        "recv_window",
        "remote_closed",
        "send_window",
        "sid",
        "unacked",
    )

    def __init__(self, sid: int, send_window: int, recv_window: int, remote_closed: bool) -> None:
        self.sid = sid
        self.send_window = send_window
        """DATA bytes the client's window for this stream lets out."""
        self.recv_window = recv_window
        """DATA bytes the client may still send on this stream."""
        self.unacked = 0
        """Received bytes acknowledged by the consumer, not yet given back by WINDOW_UPDATE."""
        self.remote_closed = remote_closed
        """The client ended its side (END_STREAM)."""
        self.local_closed = False
        """We ended ours."""
        self.closed = False
        """Both sides ended, or a RST_STREAM either way: nothing more is sent."""


class WireSink:
    """What `H2Wire` tells the connection (H2Connection implements it)."""

    def on_request(self, ws: WireStream, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        """A new stream's request header block (`end`: no body follows)."""
        raise NotImplementedError

    def on_data(self, sid: int, data: bytes, flow_len: int, end: bool) -> None:
        """Request body bytes; `flow_len` (padding included) is what `ack()` gives back."""
        raise NotImplementedError

    def on_trailers(self, sid: int, fields: list[tuple[bytes, bytes]]) -> None:
        """The request's trailer block, which ends the stream."""
        raise NotImplementedError

    def on_window(self, sid: int) -> None:
        """The client opened a send window: stream `sid`'s, or the connection's (0)."""
        raise NotImplementedError

    def on_reset(self, sid: int, code: int) -> None:
        """The stream is over without its end: RST_STREAM from the client, or a stream error."""
        raise NotImplementedError

    def on_initial_window_changed(self) -> None:
        """SETTINGS_INITIAL_WINDOW_SIZE changed every stream's send window."""
        raise NotImplementedError

    def on_goaway(self, code: int) -> None:
        """The client sent GOAWAY."""
        raise NotImplementedError


class H2Wire:
    """The frames of one server-side HTTP/2 connection, both ways."""

    __slots__ = (
        "block",
        "block_end",
        "block_self_dep",
        "block_sid",
        "checked",
        "closed_ids",
        "connection_window",
        "dead",
        "decoder",
        "encoder",
        "guard",
        "header_list_size",
        "highest",
        "inbuf",
        "last_stream",
        "max_streams",
        "out",
        "peer_max_frame",
        "peer_window",
        "preface",
        "recv_window",
        "refuse_new",
        "send_window",
        "settings_seen",
        "sink",
        "stream_window",
        "streams",
        "unacked",
    )

    def __init__(
        self,
        sink: WireSink,
        guard: FrameGuard,
        *,
        max_streams: int,
        header_list_size: int,
        stream_window: int,
        connection_window: int,
    ) -> None:
        self.sink = sink
        self.guard = guard
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.header_list_size = header_list_size
        self.encoder = StaticEncoder()
        # In force from the first frame, not only once the client acknowledges our SETTINGS.
        self.decoder = Decoder(header_list_size)
        self.out = bytearray()
        self.inbuf = b""
        """The start of a frame split across reads (or of the preface)."""
        self.checked = False
        """The frame header at the start of `inbuf` already went through the guard."""
        self.preface = True
        self.settings_seen = False
        self.dead = False
        self.streams: dict[int, WireStream] = {}
        """Streams open or half-closed (what MAX_CONCURRENT_STREAMS counts)."""
        self.closed_ids: dict[int, bool] = {}
        """Recently closed stream ids: True if we reset the stream (late frames are ignored)."""
        self.highest = 0
        """The highest stream id the client used."""
        self.last_stream = 0
        """The highest stream id handed to the sink (our GOAWAY's last_stream_id)."""
        self.refuse_new = False
        self.peer_window = DEFAULT_WINDOW
        self.peer_max_frame = MIN_FRAME
        self.send_window = DEFAULT_WINDOW
        self.recv_window = DEFAULT_WINDOW
        self.unacked = 0
        self.block = b""
        self.block_sid = 0
        self.block_end = False
        self.block_self_dep = False

    # -- output -----------------------------------------------------------------------------
    def _head(self, length: int, kind: int, flags: int, sid: int) -> None:
        self.out += ((length << 48) | (kind << 40) | (flags << 32) | sid).to_bytes(9, "big")

    def start(self) -> None:
        """Our SETTINGS (the server preface) and the connection window opened to its size."""
        settings = (
            (MAX_CONCURRENT_STREAMS << 32 | self.max_streams).to_bytes(6, "big")
            + (MAX_HEADER_LIST_SIZE << 32 | self.header_list_size).to_bytes(6, "big")
            + (INITIAL_WINDOW_SIZE << 32 | self.stream_window).to_bytes(6, "big")
            + (ENABLE_PUSH << 32).to_bytes(6, "big")
        )
        self._head(len(settings), SETTINGS, 0, 0)
        self.out += settings
        more = self.connection_window - DEFAULT_WINDOW
        if more > 0:
            self._window_update(0, more)
            self.recv_window += more

    def _window_update(self, sid: int, increment: int) -> None:
        self._head(4, WINDOW_UPDATE, 0, sid)
        self.out += increment.to_bytes(4, "big")

    def data_to_send(self) -> bytearray:
        """The frames queued since the last call (the buffer itself: not copied)."""
        out = self.out
        self.out = bytearray()
        return out

    def window(self, ws: WireStream) -> int:
        """DATA bytes that may go out on `ws` now (both send windows)."""
        if ws.send_window < self.send_window:
            return ws.send_window
        return self.send_window

    def send_block(self, ws: WireStream, block: bytes, end: bool) -> None:
        """A response header block already HPACK-encoded by `self.encoder`; CONTINUATION
        frames past the client's max frame size."""
        if ws.closed or ws.local_closed:
            return
        flags = END_STREAM if end else 0
        size = self.peer_max_frame
        n = len(block)
        sid = ws.sid
        if n <= size:
            self._head(n, HEADERS, flags | END_HEADERS, sid)
            self.out += block
        else:
            self._head(size, HEADERS, flags, sid)
            self.out += block[:size]
            pos = size
            while pos < n:
                chunk = block[pos : pos + size]
                pos += len(chunk)
                self._head(len(chunk), CONTINUATION, END_HEADERS if pos >= n else 0, sid)
                self.out += chunk
        if end:
            self._local_end(ws)

    def send_data(self, ws: WireStream, data: bytes, end: bool) -> None:
        """One DATA frame; the caller keeps it within `window()` and `peer_max_frame`."""
        if ws.closed or ws.local_closed:
            return
        n = len(data)
        ws.send_window -= n
        self.send_window -= n
        self._head(n, DATA, END_STREAM if end else 0, ws.sid)
        if n:
            self.out += data
        if end:
            self._local_end(ws)

    def _local_end(self, ws: WireStream) -> None:
        ws.local_closed = True
        if ws.remote_closed:
            self._forget(ws, False)

    def _forget(self, ws: WireStream, reset: bool) -> None:
        if ws.closed:
            return
        ws.closed = True
        sid = ws.sid
        self.streams.pop(sid, None)
        closed = self.closed_ids
        if len(closed) >= CLOSED_KEPT:
            closed.clear()
        closed[sid] = reset

    def _rst(self, sid: int, code: int) -> None:
        self._head(4, RST_STREAM, 0, sid)
        self.out += code.to_bytes(4, "big")

    def reset(self, sid: int, code: int) -> None:
        """RST_STREAM for an open stream (nothing if it is already closed)."""
        ws = self.streams.get(sid)
        if ws is None:
            return
        self._rst(sid, code)
        self._forget(ws, True)

    def goaway(self, code: int) -> None:
        """GOAWAY with the last stream handed over. NO_ERROR: those streams go on, newer
        ones are refused; an error code: the connection is over."""
        self._head(8, GOAWAY, 0, 0)
        self.out += ((self.last_stream << 32) | code).to_bytes(8, "big")
        self.refuse_new = True

    def ack(self, ws: WireStream, n: int) -> None:
        """`n` received DATA bytes of `ws` were consumed: their window space may go back."""
        if n <= 0:
            return
        self.ack_connection(n)
        if ws.remote_closed or ws.closed:
            return
        ws.unacked += n
        if ws.unacked >= self.stream_window >> 1:
            self._window_update(ws.sid, ws.unacked)
            ws.recv_window += ws.unacked
            ws.unacked = 0

    def ack_connection(self, n: int) -> None:
        """Received DATA bytes consumed (or thrown away): the connection's window only."""
        self.unacked += n
        if self.unacked >= self.connection_window >> 1:
            self._window_update(0, self.unacked)
            self.recv_window += self.unacked
            self.unacked = 0

    # -- input ------------------------------------------------------------------------------
    def _fail(self, code: int, why: str) -> NoReturn:
        if not self.dead:
            self.dead = True
            self.goaway(code)
        raise H2Error(code, why)

    def receive(self, data: bytes, now: float) -> None:
        """The client's next bytes: events to the sink, answers queued; `H2Error` on a
        connection error (GOAWAY queued)."""
        if self.dead:
            return
        self.guard.tick(now)
        if self.inbuf:
            data = self.inbuf + data
            self.inbuf = b""
        n = len(data)
        pos = 0
        if self.preface:
            if n < 24:
                if data != PREFACE[:n]:
                    self._fail(PROTOCOL_ERROR, "bad connection preface")
                self.inbuf = data
                return
            if data[:24] != PREFACE:
                self._fail(PROTOCOL_ERROR, "bad connection preface")
            self.preface = False
            pos = 24
        checked = self.checked
        self.checked = False
        guard = self.guard
        while n - pos >= 9:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            kind = data[pos + 3]
            flags = data[pos + 4]
            if checked:
                checked = False
            else:
                why = guard.frame(kind, flags, length)
                if why != OK:
                    code = FRAME_SIZE_ERROR if why == FRAME_TOO_LARGE else ENHANCE_YOUR_CALM
                    self._fail(code, WHY[why])
            end = pos + 9 + length
            if end > n:
                self.checked = True
                break
            sid = (
                ((data[pos + 5] & 0x7F) << 24)
                | (data[pos + 6] << 16)
                | (data[pos + 7] << 8)
                | data[pos + 8]
            )
            self._frame(kind, flags, sid, data, pos + 9, end)
            pos = end
        if pos < n:
            self.inbuf = data[pos:]

    def _frame(self, kind: int, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if self.block_sid and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a frame inside a header block")
        if kind == DATA:
            self._data(flags, sid, data, start, end)
        elif kind == HEADERS:
            self._headers(flags, sid, data, start, end)
        elif not self.settings_seen and kind != SETTINGS:
            self._fail(PROTOCOL_ERROR, "the first frame is not SETTINGS")
        elif kind == WINDOW_UPDATE:
            self._window(sid, data, start, end)
        elif kind == SETTINGS:
            self._settings(flags, sid, data, start, end)
        elif kind == RST_STREAM:
            self._rst_stream(sid, data, start, end)
        elif kind == PING:
            if sid:
                self._fail(PROTOCOL_ERROR, "PING on a stream")
            if end - start != 8:
                self._fail(FRAME_SIZE_ERROR, "PING not of 8 bytes")
            if not flags & ACK:
                self._head(8, PING, ACK, 0)
                self.out += data[start:end]
        elif kind == CONTINUATION:
            self._continuation(flags, sid, data, start, end)
        elif kind == PRIORITY:
            self._priority(sid, data, start, end)
        elif kind == GOAWAY:
            if sid:
                self._fail(PROTOCOL_ERROR, "GOAWAY on a stream")
            if end - start < 8:
                self._fail(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
            self.sink.on_goaway(int.from_bytes(data[start + 4 : start + 8], "big"))
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # Unknown frame types are ignored (§5.5).

    def _idle(self, sid: int) -> bool:
        """Never opened: above the highest client id, or a server (even) id."""
        return sid > self.highest or not sid & 1

    def _data(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if not self.settings_seen:
            self._fail(PROTOCOL_ERROR, "the first frame is not SETTINGS")
        if not sid:
            self._fail(PROTOCOL_ERROR, "DATA on stream 0")
        length = end - start
        if flags & PADDED:
            if not length or data[start] >= length:
                self._fail(PROTOCOL_ERROR, "DATA padding longer than the frame")
            body = data[start + 1 : end - data[start]]
        else:
            body = data[start:end]
        if length > self.recv_window:
            self._fail(FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self.recv_window -= length
        ws = self.streams.get(sid)
        if ws is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "DATA on an idle stream")
            self.ack_connection(length)
            if not self.closed_ids.get(sid, False):
                # Closed without our RST_STREAM (ended, or reset by the client): §5.1.
                self._rst(sid, STREAM_CLOSED)
                self.closed_ids[sid] = True
            return
        if ws.remote_closed:
            self.ack_connection(length)
            self._stream_error(ws, STREAM_CLOSED)
            return
        if length > ws.recv_window:
            self._fail(FLOW_CONTROL_ERROR, "DATA beyond the stream's window")
        ws.recv_window -= length
        ended = bool(flags & END_STREAM)
        if ended:
            ws.remote_closed = True
            if ws.local_closed:
                self._forget(ws, False)
        self.sink.on_data(sid, body, length, ended)

    def _stream_error(self, ws: WireStream, code: int) -> None:
        """§5.4.2: RST_STREAM, the stream is over for the sink too."""
        self._rst(ws.sid, code)
        self._forget(ws, True)
        self.sink.on_reset(ws.sid, code)

    def _headers(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if not self.settings_seen:
            self._fail(PROTOCOL_ERROR, "the first frame is not SETTINGS")
        if not sid or not sid & 1:
            self._fail(PROTOCOL_ERROR, "HEADERS on stream 0 or a server stream id")
        pos = start
        stop = end
        if flags & PADDED:
            if stop - pos < 1:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its padding")
            pad = data[pos]
            pos += 1
            if pad > stop - pos:
                self._fail(PROTOCOL_ERROR, "HEADERS padding longer than the frame")
            stop -= pad
        self_dep = False
        if flags & PRIORITY_FLAG:
            if stop - pos < 5:
                self._fail(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dep = int.from_bytes(data[pos : pos + 4], "big") & 0x7FFFFFFF == sid
            pos += 5
        fragment = data[pos:stop]
        ended = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block(sid, fragment, ended, self_dep)
        else:
            self.block = fragment
            self.block_sid = sid
            self.block_end = ended
            self.block_self_dep = self_dep

    def _continuation(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if not self.block_sid or sid != self.block_sid:
            self._fail(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        self.block += data[start:end]
        if flags & END_HEADERS:
            block = self.block
            self.block = b""
            self.block_sid = 0
            self._header_block(sid, block, self.block_end, self.block_self_dep)

    def _header_block(self, sid: int, block: bytes, ended: bool, self_dep: bool) -> None:
        try:
            # Decoded whatever becomes of the stream: the HPACK state is the connection's.
            fields = self.decoder.decode(block)
        except HeaderListTooLarge:
            self._fail(ENHANCE_YOUR_CALM, "header list over SETTINGS_MAX_HEADER_LIST_SIZE")
        except HPACKDecodeError as e:
            self._fail(COMPRESSION_ERROR, f"HPACK: {e}")
        ws = self.streams.get(sid)
        if ws is not None:
            # A second header block: the request's trailers (§8.1).
            if ws.remote_closed:
                self._stream_error(ws, STREAM_CLOSED)
            elif not ended or self_dep:
                self._stream_error(ws, PROTOCOL_ERROR)
            else:
                ws.remote_closed = True
                if ws.local_closed:
                    self._forget(ws, False)
                self.sink.on_trailers(sid, fields)
            return
        if sid <= self.highest:
            reset = self.closed_ids.get(sid)
            if reset is None:
                self._fail(PROTOCOL_ERROR, "a stream id lower than one already used")
            if not reset:
                self._fail(STREAM_CLOSED, "HEADERS on a closed stream")
            return  # a stream we reset: ignored
        self.highest = sid
        if self_dep:
            self._rst(sid, PROTOCOL_ERROR)
            self.closed_ids[sid] = True
            return
        if self.refuse_new or len(self.streams) >= self.max_streams:
            # §5.1.2 (and after our GOAWAY): refused, never processed; the client may retry.
            self._rst(sid, REFUSED_STREAM)
            self.closed_ids[sid] = True
            return
        ws = WireStream(sid, self.peer_window, self.stream_window, ended)
        self.streams[sid] = ws
        self.last_stream = sid
        self.sink.on_request(ws, fields, ended)

    def _window(self, sid: int, data: bytes, start: int, end: int) -> None:
        if end - start != 4:
            self._fail(FRAME_SIZE_ERROR, "WINDOW_UPDATE not of 4 bytes")
        increment = int.from_bytes(data[start:end], "big") & 0x7FFFFFFF
        if not sid:
            if not increment:
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                self._fail(FLOW_CONTROL_ERROR, "connection window beyond 2^31-1")
            self.sink.on_window(0)
            return
        ws = self.streams.get(sid)
        if ws is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # closed: may still come (§6.9)
        if not increment:
            self._stream_error(ws, PROTOCOL_ERROR)
            return
        ws.send_window += increment
        if ws.send_window > MAX_WINDOW:
            self._stream_error(ws, FLOW_CONTROL_ERROR)
            return
        self.sink.on_window(sid)

    def _rst_stream(self, sid: int, data: bytes, start: int, end: int) -> None:
        if end - start != 4:
            self._fail(FRAME_SIZE_ERROR, "RST_STREAM not of 4 bytes")
        if not sid:
            self._fail(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        ws = self.streams.get(sid)
        if ws is None:
            if self._idle(sid):
                self._fail(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        self._forget(ws, False)
        self.sink.on_reset(sid, int.from_bytes(data[start:end], "big"))

    def _priority(self, sid: int, data: bytes, start: int, end: int) -> None:
        if not sid:
            self._fail(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if end - start != 5:
            self._fail(FRAME_SIZE_ERROR, "PRIORITY not of 5 bytes")
        if int.from_bytes(data[start : start + 4], "big") & 0x7FFFFFFF == sid:
            ws = self.streams.get(sid)
            if ws is None:
                self._fail(PROTOCOL_ERROR, "a stream depending on itself")
            self._stream_error(ws, PROTOCOL_ERROR)

    def _settings(self, flags: int, sid: int, data: bytes, start: int, end: int) -> None:
        if sid:
            self._fail(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if not self.settings_seen:
                self._fail(PROTOCOL_ERROR, "the first frame is a SETTINGS ACK")
            if end != start:
                self._fail(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        self.settings_seen = True
        if (end - start) % 6:
            self._fail(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
        window_changed = False
        pos = start
        while pos < end:
            ident = (data[pos] << 8) | data[pos + 1]
            value = int.from_bytes(data[pos + 2 : pos + 6], "big")
            pos += 6
            if ident == HEADER_TABLE_SIZE:
                self.encoder.header_table_size = value
            elif ident == ENABLE_PUSH:
                if value > 1:
                    self._fail(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
            elif ident == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    self._fail(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.peer_window
                if delta:
                    self.peer_window = value
                    window_changed = True
                    for ws in self.streams.values():
                        ws.send_window += delta
                        if ws.send_window > MAX_WINDOW:
                            self._fail(FLOW_CONTROL_ERROR, "a stream window beyond 2^31-1")
            elif ident == MAX_FRAME_SIZE:
                if value < MIN_FRAME or value > MAX_FRAME:
                    self._fail(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.peer_max_frame = value
        self._head(0, SETTINGS, ACK, 0)
        if window_changed:
            self.sink.on_initial_window_changed()
