"""An HTTP/2 client for tests: the `h2` library over a real TLS socket (ALPN h2).

It can behave (requests, reading responses, flow control) and misbehave: raw
frames built with hyperframe go out as they are (floods, oversized header
blocks, bad headers), and `events()` returns what edgeproxy answered.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame

from tests.proxy_fixtures import site

__all__ = ["H2Client", "H2Response", "h2_edge_config", "site"]


@dataclass
class H2Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: int | None = None
    """The error code of a RST_STREAM that ended the stream, if one did."""


class H2Client:
    """One HTTP/2 connection to edgeproxy's TLS listener."""

    def __init__(
        self,
        port: int,
        ca: Path,
        *,
        sni: str = "a.test",
        alpn: tuple[str, ...] = ("h2",),
        validate: bool = True,
        settings: dict[int, int] | None = None,
        timeout: float = 5.0,
        source: str | None = None,
    ) -> None:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(list(alpn))
        raw = socket.create_connection(
            ("127.0.0.1", port),
            timeout=timeout,
            source_address=(source, 0) if source is not None else None,
        )
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        self.alpn = self.sock.selected_alpn_protocol()
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=True,
        )
        self.conn = h2.connection.H2Connection(config=config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.closed = False
        self.broken = False
        self.rx = b""
        self.goaway_code: int | None = None
        self.goaway_last: int | None = None
        self.resets: dict[int, int] = {}
        """Error code of each RST_STREAM received, by stream id (from the raw frames)."""
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.responses: dict[int, H2Response] = {}
        self.ended: set[int] = set()
        self.auto_ack = True
        """Reopen windows as data arrives (False: a client that never reads)."""
        self.flush()

    # -- sending -------------------------------------------------------------------
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the socket, past the client's own state machine."""
        self.flush()
        self.sock.sendall(data)

    def send_frames(self, frames: list[Frame]) -> None:
        self.send_raw(b"".join(f.serialize() for f in frames))

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        authority: str = "a.test",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        fields += [(n.encode(), v.encode()) for n, v in headers or []]
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        if body is not None:
            self.conn.send_data(sid, body, end_stream=end)
        self.responses[sid] = H2Response()
        self.flush()
        return sid

    # -- receiving -----------------------------------------------------------------
    def read(self, timeout: float = 5.0) -> list[h2.events.Event]:
        """One read's worth of events ([] once the connection is closed)."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        except (ssl.SSLError, ConnectionResetError):
            data = b""
        if not data:
            self.closed = True
            return []
        events: list[h2.events.Event] = []
        for raw in self._frames(data):
            if not self.broken:
                try:
                    events += self.conn.receive_data(raw)
                    continue
                except h2.exceptions.ProtocolError:
                    # The library's client refuses every frame after a GOAWAY (and
                    # answers to raw frames it never sent): from here on, by hand.
                    self.broken = True
            self._by_hand(raw)
        for ev in events:
            self._note(ev)
        if not self.broken:
            self.flush()
        return events

    def _frames(self, data: bytes) -> list[bytes]:
        """Whole frames received so far; GOAWAY and RST_STREAM noted on the way."""
        self.rx += data
        buf = self.rx
        out = []
        while len(buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
            if len(buf) < 9 + length:
                break
            frame.parse_body(memoryview(buf[9 : 9 + length]))
            out.append(buf[: 9 + length])
            buf = buf[9 + length :]
            if isinstance(frame, GoAwayFrame):
                self.goaway_code = frame.error_code
                self.goaway_last = frame.last_stream_id
            elif isinstance(frame, RstStreamFrame):
                self.resets[frame.stream_id] = frame.error_code
        self.rx = buf
        return out

    def _by_hand(self, raw: bytes) -> None:
        """HEADERS and DATA of a response, past a state machine that gave up."""
        frame, _length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:]))
        sid = frame.stream_id
        if isinstance(frame, HeadersFrame):
            r = self.responses.setdefault(sid, H2Response())
            for name, value in self.conn.decoder.decode(frame.data, raw=True):
                if name == b":status":
                    r.status = int(value)
                else:
                    r.headers[name.decode()] = value.decode()
        elif isinstance(frame, DataFrame):
            self.responses.setdefault(sid, H2Response()).body += frame.data
        elif isinstance(frame, RstStreamFrame):
            self.ended.add(sid)
        if "END_STREAM" in frame.flags:
            self.ended.add(sid)

    def _note(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id is not None:
            r = self.responses.setdefault(ev.stream_id, H2Response())
            for name, value in ev.headers or []:
                n, v = bytes(name).decode(), bytes(value).decode()
                if n == ":status":
                    r.status = int(v)
                else:
                    r.headers[n] = v if n not in r.headers else r.headers[n] + ", " + v
        elif isinstance(ev, h2.events.DataReceived) and ev.stream_id is not None:
            self.responses.setdefault(ev.stream_id, H2Response()).body += ev.data or b""
            if self.auto_ack and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id is not None:
            self.ended.add(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset) and ev.stream_id is not None:
            self.responses.setdefault(ev.stream_id, H2Response()).reset = int(ev.error_code or 0)
            self.ended.add(ev.stream_id)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev

    def wait(self, *sids: int, timeout: float = 10.0) -> list[H2Response]:
        """Read until each stream has ended (or the connection did)."""
        deadline = time.monotonic() + timeout
        while not all(s in self.ended for s in sids) and not self.closed:
            if self.goaway is not None and all(
                s in self.ended or s > (self.goaway.last_stream_id or 0) for s in sids
            ):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"streams {[s for s in sids if s not in self.ended]} open")
            self.read(min(left, 1.0))
        return [self.responses[s] for s in sids]

    def get(self, path: str = "/", **kw: Any) -> H2Response:
        return self.wait(self.request(path, **kw))[0]

    def read_until_closed(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the server did not close the connection")
            self.read(min(left, 0.5))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def h2_edge_config(tls_files: dict[str, Path], **conf: Any) -> dict[str, Any]:
    """An HTTPS listener with the test certificate (a.test, *.example.test), plus `conf`."""
    base: dict[str, Any] = {
        "listen": {"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
        "tls": {"certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]},
    }
    base.update(conf)
    return base
