"""RFC 9113 conformance of the HTTP/2 listener, section by section.

Raw frames from the `h2` library (and hyperframe) as the client, over a real
TLS connection to a real edgeproxy and a real HTTP/1.1 backend. A stream
error (§5.4.2: a malformed request, DATA on a closed stream, a stream window
overflow) resets that stream alone and the connection goes on; a connection
error (§5.4.1) ends it with GOAWAY and the code the RFC names.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame, WindowUpdateFrame

from tests.h2_fixtures import H2Client, H2Response, h2_edge_config, site
from tests.proxy_fixtures import Backend, Edge

PROTOCOL_ERROR = int(ErrorCodes.PROTOCOL_ERROR)


@pytest.fixture
def h2edge(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> tuple[Edge, Backend, Path]:
    back = backend("blue")
    e = edge(
        h2_edge_config(
            tls_files,
            apps={"shop": {"colors": {"blue": {"upstreams": [back.url]}}}},
            sites=[site("shop", ("a.test",))],
        )
    )
    return e, back, tls_files["ca"]


def client(h2edge: tuple[Edge, Backend, Path], **kw: Any) -> H2Client:
    e, _, ca = h2edge
    return H2Client(e.https_port, ca, **kw)


def block(fields: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hpack.Encoder().encode(fields))


BASE: list[tuple[bytes, bytes]] = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"a.test"),
    (b":path", b"/"),
]


def connection_error(c: H2Client) -> int | None:
    c.read_until_closed()
    return c.goaway_code


def stream_error(c: H2Client, sid: int, timeout: float = 5.0) -> int | None:
    """The code of the RST_STREAM the server sent for `sid` (None if none came)."""
    deadline = time.monotonic() + timeout
    while sid not in c.resets and not c.closed and time.monotonic() < deadline:
        c.read(0.5)
    return c.resets.get(sid)


def sibling_completes(c: H2Client, sid: int) -> None:
    """Stream `sid` (sent by hand beside a bad one) is answered; the connection is open."""
    deadline = time.monotonic() + 5
    while sid not in c.ended and not c.closed and time.monotonic() < deadline:
        c.read(0.5)
    assert c.responses[sid].status == 200, c.responses.get(sid)
    assert c.goaway_code is None and not c.closed


def bad_and_good(c: H2Client, bad: list[tuple[bytes, bytes]]) -> None:
    """HEADERS of a request with `bad` fields on stream 1, a good GET / on stream 3."""
    enc = hpack.Encoder()
    c.responses[3] = H2Response()
    c.send_frames(
        [
            HeadersFrame(1, bytes(enc.encode(bad)), flags=["END_HEADERS", "END_STREAM"]),
            HeadersFrame(3, bytes(enc.encode(BASE)), flags=["END_HEADERS", "END_STREAM"]),
        ]
    )


# -- §3.4 preface, §6.5 SETTINGS, §6.7 PING -------------------------------------------


def test_3_4_the_server_preface_is_a_settings_frame(h2edge) -> None:
    with client(h2edge) as c:
        c.read(2.0)
        assert True  # parsed: the first frame the scan saw
        assert c.conn.remote_settings.max_concurrent_streams == 128
        assert c.conn.remote_settings.enable_push == 0


def test_3_4_a_bad_connection_preface_ends_the_connection(h2edge) -> None:
    e, back, ca = h2edge
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", e.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="a.test") as s:
        assert s.selected_alpn_protocol() == "h2"
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Pad: 0123456789\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    # SETTINGS (the server preface), then GOAWAY (type 7) with an error code, then the close.
    goaway = got.find(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00")
    assert goaway > 0
    assert got[goaway + 13 : goaway + 17] != b"\x00\x00\x00\x00"
    assert back.seen == []


def test_6_7_ping_is_answered_with_the_same_payload(h2edge) -> None:
    with client(h2edge) as c:
        c.conn.ping(b"8 bytes!")
        c.flush()
        got = []
        for _ in range(10):
            got += [ev for ev in c.read(2.0) if type(ev).__name__ == "PingAckReceived"]
            if got:
                break
        assert got and got[0].ping_data == b"8 bytes!"


def test_6_7_a_ping_on_a_stream_is_a_connection_error(h2edge) -> None:
    with client(h2edge) as c:
        # hyperframe refuses to build it: by hand (length 8, type PING, stream 1).
        c.send_raw(b"\x00\x00\x08\x06\x00\x00\x00\x00\x01" + b"12345678")
        assert connection_error(c) == PROTOCOL_ERROR


# -- §4.2 frame size --------------------------------------------------------------------


def test_4_2_a_frame_over_max_frame_size_is_a_frame_size_error(h2edge) -> None:
    with client(h2edge) as c:
        sid = c.request("/echo", method="POST", end=False)
        c.send_frames([DataFrame(sid, b"x" * 16385)])
        assert connection_error(c) == int(ErrorCodes.FRAME_SIZE_ERROR)


def test_4_2_a_frame_header_announcing_too_much_is_refused_before_its_payload(h2edge) -> None:
    with client(h2edge) as c:
        sid = c.request("/echo", method="POST", end=False)
        # A DATA frame header announcing 16 MiB, and only 1 KiB of it.
        c.send_raw(b"\xff\xff\xff\x00\x00" + sid.to_bytes(4, "big") + b"x" * 1024)
        assert connection_error(c) == int(ErrorCodes.FRAME_SIZE_ERROR)


def test_4_2_bodies_larger_than_a_frame_are_split_to_the_clients_max_frame_size(h2edge) -> None:
    with client(h2edge) as c:
        r = c.get("/big?n=100000")
        assert r.status == 200 and len(r.body) == 100000


# -- §5.1 stream states and identifiers --------------------------------------------------


def test_5_1_data_on_an_idle_stream_is_a_connection_error(h2edge) -> None:
    with client(h2edge) as c:
        c.send_frames([DataFrame(1, b"hello")])
        assert connection_error(c) == PROTOCOL_ERROR


def test_5_1_1_a_client_stream_with_an_even_id_is_a_connection_error(h2edge) -> None:
    with client(h2edge) as c:
        c.send_frames([HeadersFrame(2, block(BASE), flags=["END_HEADERS", "END_STREAM"])])
        assert connection_error(c) == PROTOCOL_ERROR


def test_5_1_1_stream_ids_must_increase(h2edge) -> None:
    with client(h2edge) as c:
        enc = hpack.Encoder()
        c.send_frames(
            [
                HeadersFrame(5, bytes(enc.encode(BASE)), flags=["END_HEADERS", "END_STREAM"]),
                HeadersFrame(3, bytes(enc.encode(BASE)), flags=["END_HEADERS", "END_STREAM"]),
            ]
        )
        assert connection_error(c) == PROTOCOL_ERROR


def test_5_1_data_after_end_stream_is_refused(h2edge) -> None:
    with client(h2edge) as c:
        c.send_frames(
            [
                HeadersFrame(1, block(BASE), flags=["END_HEADERS", "END_STREAM"]),
                DataFrame(1, b"late"),
            ]
        )
        deadline = time.monotonic() + 5
        while 1 not in c.resets and not c.closed and time.monotonic() < deadline:
            c.read(0.5)
        # STREAM_CLOSED as a stream error: the connection goes on.
        assert c.resets.get(1) == int(ErrorCodes.STREAM_CLOSED)
        assert c.goaway_code is None and not c.closed


def test_5_1_data_after_the_stream_is_over_both_ways_is_refused_as_stream_closed(h2edge) -> None:
    with client(h2edge) as c:
        sid = c.request("/")
        c.wait(sid)
        c.send_frames([DataFrame(sid, b"late")])
        assert stream_error(c, sid) == int(ErrorCodes.STREAM_CLOSED)
        assert c.get("/").status == 200


def test_5_1_headers_on_a_stream_that_is_over_is_a_stream_closed_connection_error(h2edge) -> None:
    with client(h2edge) as c:
        sid = c.request("/")
        c.wait(sid)
        c.send_frames([HeadersFrame(sid, block(BASE), flags=["END_HEADERS", "END_STREAM"])])
        assert connection_error(c) == int(ErrorCodes.STREAM_CLOSED)


def test_8_1_1_a_malformed_request_resets_its_stream_while_a_sibling_completes(h2edge) -> None:
    _e, back, _ = h2edge
    with client(h2edge, validate=False) as c:
        bad_and_good(c, [*BASE[:3]])  # no :path
        assert stream_error(c, 1) == PROTOCOL_ERROR
        sibling_completes(c, 3)
        assert [r.path for r in back.seen] == ["/"]


def test_6_5_settings_with_a_bad_value_are_connection_errors(h2edge) -> None:
    for settings, code in [
        ({0x2: 2}, ErrorCodes.PROTOCOL_ERROR),  # ENABLE_PUSH not 0 or 1
        ({0x4: 2**31}, ErrorCodes.FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE too large
        ({0x5: 100}, ErrorCodes.PROTOCOL_ERROR),  # MAX_FRAME_SIZE below 16384
    ]:
        with client(h2edge) as c:
            c.read(0.5)
            frame = SettingsFrame(0)
            frame.settings = settings
            c.send_frames([frame])
            assert connection_error(c) == int(code), settings


def test_5_1_many_streams_on_one_connection_each_get_their_own_answer(h2edge) -> None:
    with client(h2edge) as c:
        sids = [c.request(f"/status/{200 + i}") for i in range(20)]
        rs = c.wait(*sids)
        assert [r.status for r in rs] == [200 + i for i in range(20)]


# -- §6.9 flow control ---------------------------------------------------------------------


def stalled_at_1000(c: H2Client) -> int:
    """A 5000-byte response on a client whose windows let 1000 bytes out: its stream id."""
    c.auto_ack = False
    sid = c.request("/big?n=5000")
    for _ in range(6):
        c.read(0.5)
    assert len(c.responses[sid].body) == 1000
    assert sid not in c.ended
    return sid


def test_6_9_the_server_sends_no_more_than_the_clients_stream_window(h2edge) -> None:
    with client(h2edge, settings={0x4: 1000}) as c:
        sid = stalled_at_1000(c)
        c.conn.increment_flow_control_window(4000, stream_id=sid)
        c.flush()
        c.auto_ack = True
        (r,) = c.wait(sid)
        assert len(r.body) == 5000


def test_6_9_a_window_update_of_zero_is_a_protocol_error(h2edge) -> None:
    with client(h2edge) as c:
        c.send_frames([WindowUpdateFrame(0, window_increment=0)])
        assert connection_error(c) == PROTOCOL_ERROR


def test_6_9_1_a_window_beyond_2_31_minus_1_is_a_flow_control_error(h2edge) -> None:
    with client(h2edge) as c:
        c.send_frames([WindowUpdateFrame(0, window_increment=2**31 - 1)])
        assert connection_error(c) == int(ErrorCodes.FLOW_CONTROL_ERROR)


def test_6_9_1_a_stream_window_beyond_2_31_minus_1_resets_that_stream_only(h2edge) -> None:
    with client(h2edge, settings={0x4: 0}) as c:
        sid = c.request("/big?n=10000000")  # held: the client's stream window is 0
        c.read(0.5)
        big = WindowUpdateFrame(sid, window_increment=2**31 - 1)
        c.send_frames([big, big])
        assert stream_error(c, sid) == int(ErrorCodes.FLOW_CONTROL_ERROR)
        assert c.goaway_code is None and not c.closed


def test_6_9_a_client_sending_past_the_stream_window_is_a_flow_control_error(h2edge) -> None:
    with client(h2edge) as c:
        # /slow never reads its body: once the upstream's socket is full, the server
        # stops acknowledging and the stream's window stays shut.
        sid = c.request("/slow", method="POST", end=False)
        chunk = b"x" * 16384
        shut_since = None
        deadline = time.monotonic() + 60
        while shut_since is None or time.monotonic() - shut_since < 1.0:
            assert time.monotonic() < deadline, "the window never shut"
            window = min(c.conn.local_flow_control_window(sid), 16384)
            if window > 0:
                shut_since = None
                c.conn.send_data(sid, chunk[:window])
                c.flush()
            else:
                shut_since = shut_since or time.monotonic()
                c.read(0.2)
        c.send_frames([DataFrame(sid, b"over")])
        assert connection_error(c) == int(ErrorCodes.FLOW_CONTROL_ERROR)


def test_6_9_2_a_larger_initial_window_lets_a_stalled_response_go_on(h2edge) -> None:
    with client(h2edge, settings={0x4: 1000}) as c:
        sid = stalled_at_1000(c)
        # §6.9.2: the change applies to the stream already open, by the difference.
        c.conn.update_settings({0x4: 65535})
        c.flush()
        c.auto_ack = True
        (r,) = c.wait(sid)
        assert len(r.body) == 5000


def test_6_9_a_request_body_larger_than_the_window_arrives_whole(h2edge) -> None:
    _e, back, _ = h2edge
    with client(h2edge) as c:
        body = bytes(range(256)) * 4096  # 1 MiB: many window updates
        sid = c.request("/echo", method="POST", end=False)
        sent = 0
        while sent < len(body):
            window = min(c.conn.local_flow_control_window(sid), c.conn.max_outbound_frame_size)
            if window <= 0:
                c.read(1.0)
                continue
            c.conn.send_data(sid, body[sent : sent + window])
            sent += window
            c.flush()
        c.conn.end_stream(sid)
        c.flush()
        (r,) = c.wait(sid)
        assert r.status == 200 and r.body == body
        assert back.bodies[-1] == body
        # Unknown length on HTTP/2: chunked to the HTTP/1.1 upstream.
        assert back.seen[-1].headers.get("Transfer-Encoding") == "chunked"


# -- §8.2 fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        (b"X-Upper", b"1"),  # §8.2.1 uppercase name
        (b"connection", b"keep-alive"),  # §8.2.2 connection-specific
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),  # §8.2.2 TE other than trailers
        (b"x-bad", b"a\r\nb"),  # §8.2.1 CR/LF in a value
        (b"x-bad", b"a\x00b"),  # §8.2.1 NUL in a value
        (b"x-bad", b" lead"),  # §8.2.1 whitespace around a value
        (b"x-bad", b"trail\t"),
        (b"x:colon", b"1"),  # §8.2.1 a colon in a regular name
        (b"x bad", b"1"),  # §8.2.1 a space in a name
    ],
)
def test_8_2_a_malformed_field_makes_the_request_malformed(h2edge, field) -> None:
    _e, back, _ = h2edge
    with client(h2edge, validate=False) as c:
        bad_and_good(c, [*BASE, field])
        # §8.1.1: a stream error; the request next to it is answered.
        assert stream_error(c, 1) == PROTOCOL_ERROR
        sibling_completes(c, 3)
        assert len(back.seen) == 1


def test_8_2_2_te_trailers_is_allowed(h2edge) -> None:
    with client(h2edge) as c:
        assert c.get("/", headers=[("te", "trailers")]).status == 200


def test_8_2_3_cookie_crumbs_are_joined_for_the_http11_upstream(h2edge) -> None:
    _e, back, _ = h2edge
    with client(h2edge) as c:
        r = c.get("/headers", headers=[("cookie", "a=1"), ("cookie", "b=2")])
        assert r.status == 200
        assert back.seen[-1].headers.getall("Cookie") == ["a=1; b=2"]


# -- §8.3 pseudo-header fields -----------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test")],  # no :path
        [(b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")],  # no :method
        [*BASE, (b":method", b"GET")],  # duplicate pseudo-header
        [*BASE, (b":foo", b"bar")],  # unknown pseudo-header
        [(b":method", b"GET"), (b"x-a", b"1"), (b":path", b"/"), (b":scheme", b"https")],
        [*BASE, (b":status", b"200")],  # a response pseudo-header in a request
        [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"")],
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a.test")],  # no :scheme
        [*BASE, (b":protocol", b"websocket")],  # :protocol without CONNECT (RFC 8441 §4)
        [(b":method", b"CONNECT"), (b":authority", b"a.test"), (b":path", b"/")],  # §8.5
        [*BASE, (b"host", b"a.test"), (b"host", b"a.test")],  # §8.3.1 more than one Host
        [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")],  # no authority, no Host
    ],
    ids=[
        "no-path",
        "no-method",
        "duplicate",
        "unknown",
        "after-regular",
        "status",
        "empty-path",
        "no-scheme",
        "protocol-without-connect",
        "connect-with-path",
        "two-hosts",
        "no-authority",
    ],
)
def test_8_3_pseudo_header_rules_are_enforced(h2edge, fields) -> None:
    _e, back, _ = h2edge
    with client(h2edge, validate=False) as c:
        bad_and_good(c, fields)
        assert stream_error(c, 1) == PROTOCOL_ERROR
        sibling_completes(c, 3)
        assert len(back.seen) == 1


def post_with_trailers(c: H2Client, trailers: list[tuple[bytes, bytes]]) -> None:
    """POST /echo with a 3-byte body, then a trailer block ending the stream."""
    head = [(b":method", b"POST"), *BASE[1:3], (b":path", b"/echo"), (b"content-length", b"3")]
    c.send_frames(
        [
            HeadersFrame(1, block(head), flags=["END_HEADERS"]),
            DataFrame(1, b"abc"),
            HeadersFrame(1, block(trailers), flags=["END_HEADERS", "END_STREAM"]),
        ]
    )


def test_8_1_a_pseudo_header_in_request_trailers_makes_the_request_malformed(h2edge) -> None:
    with client(h2edge, validate=False) as c:
        post_with_trailers(c, [(b":path", b"/x")])
        assert stream_error(c, 1) == PROTOCOL_ERROR
        assert c.goaway_code is None and not c.closed


def test_8_1_well_formed_request_trailers_are_accepted(h2edge) -> None:
    with client(h2edge, validate=False) as c:
        post_with_trailers(c, [(b"x-sum", b"1")])
        deadline = time.monotonic() + 5
        while 1 not in c.ended and not c.closed and time.monotonic() < deadline:
            c.read(1.0)
        assert c.responses[1].status == 200 and c.responses[1].body == b"abc"
        assert c.goaway_code is None


def test_8_3_1_authority_is_the_host_upstream(h2edge) -> None:
    _e, back, _ = h2edge
    with client(h2edge) as c:
        assert c.get("/", authority="a.test").status == 200
        assert back.seen[-1].headers["Host"] == "a.test"


def test_8_3_1_a_host_field_other_than_authority_makes_the_request_malformed(h2edge) -> None:
    _e, back, _ = h2edge
    with client(h2edge, validate=False) as c:
        bad_and_good(c, [*BASE, (b"host", b"other.test")])
        assert stream_error(c, 1) == PROTOCOL_ERROR
        sibling_completes(c, 3)
        assert len(back.seen) == 1


@pytest.mark.parametrize("body", [b"abc", b"x" * 11], ids=["less", "more"])
def test_8_1_1_content_length_that_disagrees_with_the_body_is_malformed(h2edge, body) -> None:
    _e, _back, _ = h2edge
    with client(h2edge, validate=False) as c:
        fields = [*BASE[:3], (b":path", b"/echo"), (b"content-length", b"10")]
        fields[0] = (b":method", b"POST")
        c.send_frames(
            [
                HeadersFrame(1, block(fields), flags=["END_HEADERS"]),
                DataFrame(1, body, flags=["END_STREAM"]),
            ]
        )
        assert stream_error(c, 1) == PROTOCOL_ERROR
        assert c.goaway_code is None and not c.closed


def test_8_1_a_head_response_has_headers_and_no_data(h2edge) -> None:
    with client(h2edge) as c:
        r = c.get("/", method="HEAD")
        assert r.status == 200 and r.body == b""


def test_8_2_2_no_connection_specific_field_reaches_the_client(h2edge) -> None:
    with client(h2edge) as c:
        r = c.get("/big?n=1000")  # chunked from the upstream
        assert r.status == 200 and len(r.body) == 1000
        assert not {"connection", "transfer-encoding", "keep-alive"} & set(r.headers)


# -- §6.8 GOAWAY -------------------------------------------------------------------------------


def test_6_8_after_the_clients_goaway_the_server_closes_the_connection(h2edge) -> None:
    with client(h2edge) as c:
        assert c.get("/").status == 200
        c.conn.close_connection()
        c.flush()
        c.read_until_closed(timeout=5)
        assert c.closed


def test_the_request_id_and_set_cookie_go_out_as_never_indexed_hpack_literals(h2edge) -> None:
    with client(h2edge) as c:
        sid = c.request("/respond-header?name=Set-Cookie&value=s%3D1")
        events: list[Any] = []
        while sid not in c.ended:
            events += c.read(2.0)
        (head,) = [ev for ev in events if isinstance(ev, h2.events.ResponseReceived)]
        kinds = {bytes(n): type(f).__name__ for f in head.headers for n in [f[0]]}
        assert kinds[b"x-request-id"] == "NeverIndexedHeaderTuple"
        assert kinds[b"set-cookie"] == "NeverIndexedHeaderTuple"
        assert kinds[b"content-type"] == "HeaderTuple"
