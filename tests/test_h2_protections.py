"""HTTP/2 protections, each against the attack that found servers without it.

Every test drives raw frames with the `h2` library as the client over a real
TLS connection to a real edgeproxy and a real backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.h2_fixtures import H2Client, h2_edge_config, site
from tests.proxy_fixtures import Backend, Edge

CALM = int(ErrorCodes.ENHANCE_YOUR_CALM)


def shop(back: Backend, **conf: Any) -> dict[str, Any]:
    return {
        "apps": {"shop": {"colors": {"blue": {"upstreams": [back.url]}}}},
        "sites": [site("shop", ("a.test",))],
        **conf,
    }


def start(
    edge: Callable[..., Edge],
    backend: Callable[[str], Backend],
    tls_files: dict[str, Path],
    **conf: Any,
) -> tuple[Edge, Backend]:
    back = backend("blue")
    return edge(h2_edge_config(tls_files, **shop(back, **conf))), back


def headers_block(path: str = "/", extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    fields = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"a.test"),
        (b":path", path.encode()),
        *(extra or []),
    ]
    return bytes(hpack.Encoder().encode(fields))


def assert_calmed(c: H2Client) -> None:
    c.read_until_closed()
    assert c.goaway_code == CALM
    assert c.closed


def test_rapid_reset_ends_the_connection_with_enhance_your_calm(edge, backend, tls_files) -> None:
    e, back = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        frames: list[Any] = []
        block = headers_block("/slow")
        for i in range(400):
            sid = 1 + 2 * i
            frames.append(HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]))
            frames.append(RstStreamFrame(sid, error_code=int(ErrorCodes.CANCEL)))
        c.send_frames(frames)
        assert_calmed(c)
        # The streams after the cap never reached an upstream.
        assert len(back.seen) < 400


def test_a_header_block_over_the_limit_across_continuation_frames_is_refused(
    edge, backend, tls_files
) -> None:
    e, back = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        frames: list[Any] = [HeadersFrame(1, headers_block("/"), flags=[])]
        # Endless CONTINUATION without END_HEADERS (CVE-2024-27316): 3 x 16 KB > 32 KiB.
        frames += [ContinuationFrame(1, b"\x40\x01a\x01b" * 3000, flags=[]) for _ in range(3)]
        c.send_frames(frames)
        assert_calmed(c)
        assert back.seen == []


def test_an_hpack_bomb_is_refused_before_it_inflates(edge, backend, tls_files) -> None:
    e, back = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        enc = hpack.Encoder()
        big = (b"x-bomb", b"a" * 4000)
        # One literal into the dynamic table, then 1-byte references to it: ~5 KB on
        # the wire, 8 MB decoded.
        block = bytes(
            enc.encode(
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", b"a.test"),
                    (b":path", b"/"),
                    *([big] * 2000),
                ]
            )
        )
        assert len(block) < 16384
        c.send_frames([HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])])
        assert_calmed(c)
        assert back.seen == []


def test_a_settings_flood_is_refused(edge, backend, tls_files) -> None:
    e, _ = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        c.send_frames([SettingsFrame(0, settings={0x4: 65535}) for _ in range(500)])
        assert_calmed(c)


def test_a_ping_flood_is_refused(edge, backend, tls_files) -> None:
    e, _ = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        c.send_frames([PingFrame(0, opaque_data=b"12345678") for _ in range(500)])
        assert_calmed(c)


def test_an_empty_data_flood_is_refused(edge, backend, tls_files) -> None:
    e, _ = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        sid = c.request("/echo", method="POST", end=False)
        c.send_frames([DataFrame(sid, b"") for _ in range(500)])
        assert_calmed(c)


def test_a_few_pings_and_settings_are_answered_as_usual(edge, backend, tls_files) -> None:
    e, _ = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        for _ in range(20):
            c.conn.ping(b"abcdefgh")
        c.flush()
        r = c.get("/")
        assert r.status == 200
        assert c.goaway is None


def test_the_server_advertises_128_concurrent_streams_and_refuses_the_129th_alone(
    edge, backend, tls_files
) -> None:
    e, back = start(edge, backend, tls_files)
    c = H2Client(e.https_port, tls_files["ca"], validate=False)
    try:
        c.read(2.0)
        assert c.conn.remote_settings.max_concurrent_streams == 128
        block_enc = hpack.Encoder()
        frames = []
        for i in range(129):
            block = bytes(
                block_enc.encode(
                    [
                        (b":method", b"GET"),
                        (b":scheme", b"https"),
                        (b":authority", b"a.test"),
                        (b":path", b"/slow"),
                    ]
                )
            )
            frames.append(HeadersFrame(1 + 2 * i, block, flags=["END_HEADERS", "END_STREAM"]))
        c.send_frames(frames)
        # §5.1.2: the 129th is refused as a stream error; the 128 others go on.
        deadline = time.monotonic() + 10
        while 257 not in c.resets and not c.closed and time.monotonic() < deadline:
            c.read(0.5)
        assert c.resets.get(257) == int(ErrorCodes.REFUSED_STREAM)
        assert all(c.resets.get(1 + 2 * i) is None for i in range(128))
        back.release_slow()
        sids = [1 + 2 * i for i in range(128)]
        while not all(s in c.ended for s in sids) and not c.closed:
            assert time.monotonic() < deadline + 20, "streams left open"
            c.read(0.5)
        assert [c.responses[s].status for s in sids] == [200] * 128
        assert c.goaway_code is None
    finally:
        back.release_slow()
        c.close()


def test_a_stream_whose_client_window_stays_shut_is_reset_after_the_send_timeout(
    edge, backend, tls_files
) -> None:
    e, _ = start(edge, backend, tls_files, timeouts={"send": 1.0})
    # The client's initial window is 0: nothing of the body can be sent.
    with H2Client(e.https_port, tls_files["ca"], settings={0x4: 0}) as c:
        sid = c.request("/big?n=1000000")
        t0 = time.monotonic()
        (r,) = c.wait(sid, timeout=10)
        assert r.status == 200
        assert r.body == b""
        assert r.reset == int(ErrorCodes.CANCEL)
        assert 0.9 <= time.monotonic() - t0 < 5
        # The connection itself is fine: the next stream is served.
        c.conn.update_settings({0x4: 65535})
        c.flush()
        assert c.get("/").status == 200


def test_a_client_that_stops_reading_the_socket_is_cut_after_the_send_timeout(
    edge, backend, tls_files
) -> None:
    e, _ = start(edge, backend, tls_files, timeouts={"send": 1.0})
    with H2Client(e.https_port, tls_files["ca"]) as c:
        c.conn.increment_flow_control_window(2**31 - 1 - 65535)
        c.conn.update_settings({0x4: 2**31 - 1})
        for _ in range(4):
            c.request("/big?n=50000000")
        c.read(1.0)
        time.sleep(4)  # never reading: the socket buffers fill on both sides
        c.read_until_closed(timeout=10)
        assert c.closed


def test_graceful_stop_sends_goaway_with_the_last_stream_and_finishes_it(
    edge, backend, tls_files
) -> None:
    e, back = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        slow = c.request("/slow")
        deadline = time.monotonic() + 5
        while not back.seen and time.monotonic() < deadline:
            time.sleep(0.02)

        async def stop() -> None:
            for conn in list(e.server.ctx.connections):
                conn.shutdown()

        e.run(stop())
        while c.goaway is None:
            assert c.read(5.0) or c.goaway is not None
        assert c.goaway.error_code == 0
        assert c.goaway.last_stream_id == slow
        back.release_slow()
        (r,) = c.wait(slow)
        assert (r.status, r.body) == (200, b"blue slow done\n")
        c.read_until_closed()
        assert c.closed


def test_streams_opened_after_goaway_are_refused_not_processed(edge, backend, tls_files) -> None:
    e, back = start(edge, backend, tls_files)
    with H2Client(e.https_port, tls_files["ca"]) as c:
        c.request("/slow")
        deadline = time.monotonic() + 5
        while not back.seen and time.monotonic() < deadline:
            time.sleep(0.02)

        async def stop() -> None:
            for conn in list(e.server.ctx.connections):
                conn.shutdown()
            await asyncio.sleep(0)

        e.run(stop())
        # A stream the client opens before it has read the GOAWAY.
        late = c.request("/late")
        while c.goaway is None:
            assert c.read(5.0) or c.goaway is not None
        back.release_slow()
        c.read_until_closed()
        assert c.resets.get(late) == int(ErrorCodes.REFUSED_STREAM)
        assert all(r.path != "/late" for r in back.seen)


# -- bounded memory: 100 streams that are never read ----------------------------------------


def _rss_growth_with_unread_streams(
    edge_process, backend, tls_files, *, window: int, read_socket: bool
) -> tuple[int, int]:
    """(RSS growth in KiB, bytes the client got) after 100 unread 20 MB responses for 3 s."""
    back = backend("blue")
    proc = edge_process(h2_edge_config(tls_files, **shop(back)))
    warm = H2Client(proc.https_port, tls_files["ca"])
    assert warm.get("/big?n=200000").status == 200
    warm.close()
    time.sleep(0.5)
    before = proc.rss_kib()
    with H2Client(proc.https_port, tls_files["ca"], settings={0x4: window}) as c:
        if window:
            c.conn.increment_flow_control_window(2**31 - 1 - 65535)
        c.auto_ack = False
        sids = [c.request("/big?n=20000000") for _ in range(100)]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if read_socket:
                c.read(0.2)
            else:
                time.sleep(0.2)
        growth = proc.rss_kib() - before
        got = sum(len(c.responses[s].body) for s in sids)
        return growth, got


def test_100_streams_with_shut_windows_do_not_grow_memory(edge_process, backend, tls_files):
    growth, got = _rss_growth_with_unread_streams(
        edge_process, backend, tls_files, window=0, read_socket=True
    )
    assert got == 0
    # 100 x 20 MB were on offer; each stream holds at most STREAM_BUFFER (64 KiB) plus
    # what one upstream read brings before its upstream is paused.
    assert growth < 48 * 1024, f"RSS grew {growth} KiB"


def test_a_client_that_never_reads_its_socket_does_not_grow_memory(
    edge_process, backend, tls_files
):
    growth, _ = _rss_growth_with_unread_streams(
        edge_process, backend, tls_files, window=2**31 - 1, read_socket=False
    )
    assert growth < 48 * 1024, f"RSS grew {growth} KiB"


def test_an_idle_connection_gets_goaway_after_client_idle(edge, backend, tls_files) -> None:
    e, _ = start(edge, backend, tls_files, timeouts={"client_idle": 1.0})
    with H2Client(e.https_port, tls_files["ca"]) as c:
        assert c.get("/").status == 200
        t0 = time.monotonic()
        c.read_until_closed(timeout=10)
        assert c.goaway_code == 0
        assert 0.9 <= time.monotonic() - t0 < 6


def test_a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout(
    edge, backend, tls_files
) -> None:
    e, back = start(edge, backend, tls_files, limits={"client_header_timeout": 1.0})
    with H2Client(e.https_port, tls_files["ca"]) as c:
        t0 = time.monotonic()
        c.read_until_closed(timeout=10)
        assert 0.9 <= time.monotonic() - t0 < 6
        assert back.seen == []
