"""An `Exchange` alone, driven through its phases with a fake client side.

Playbook style (mitmproxy's `tutils.Playbook`): each test feeds events to one
exchange and asserts what each side was told, in order. The client side is a
recording `Downstream`; the upstream side is a real `UpstreamConnection` over
an in-memory transport, fed response bytes as a socket would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

from edgeproxy.errors import IllegalTransition
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.exchange import (
    BUFFER_LIMIT,
    REQ_BODY,
    REQ_DONE,
    REQ_HEAD,
    RESP_CUT,
    RESP_DONE,
    RESP_LOCAL,
    RESP_PENDING,
    RESP_STREAMING,
    RESP_TUNNEL,
    RESPONSE_PHASES,
    RESPONSE_TRANSITIONS,
    Downstream,
    Exchange,
)
from edgeproxy.proxy.headers import ResponseHead
from edgeproxy.proxy.upstream import UpstreamConnection
from tests.proxy_fixtures import in_memory_config

Told = tuple[Any, ...]


class RecordingClient(Downstream):
    """The client side of an exchange: records every call, in order."""

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__(ctx, asyncio.get_running_loop(), tls=False, local_port=80)
        self.peer_ip = "203.0.113.7"
        self.peer_ip_b = b"203.0.113.7"
        self.told: list[Told] = []

    def send_continue(self) -> None:
        self.told.append(("continue",))

    def send_local(self, data: bytes) -> None:
        self.told.append(("local", int(data[9:12])))

    def send_head(self, head: ResponseHead) -> None:
        self.told.append(("head", int(head.data[9:12])))

    def send_body(self, data: bytes) -> None:
        self.told.append(("body", data))

    def send_end(self) -> None:
        self.told.append(("end",))

    def cork(self) -> None:
        pass  # coalescing only: nothing to observe

    def uncork(self) -> None:
        pass

    def pause_reading_for_upstream(self) -> None:
        self.told.append(("pause", "upstream"))

    def resume_reading_for_upstream(self) -> None:
        self.told.append(("resume", "upstream"))

    def pause_reading_for_buffer(self) -> None:
        self.told.append(("pause", "buffer"))

    def resume_reading_for_buffer(self) -> None:
        self.told.append(("resume", "buffer"))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        coro.close()  # not run: the test plays the upstream's part itself
        self.told.append(("spawn", name))

    def exchange_finished(self, ex: Exchange, *, keep_alive: bool) -> None:
        self.told.append(("finished", keep_alive))

    def abort(self, ex: Exchange) -> None:
        self.told.append(("abort",))

    def start_tunnel(self, ex: Exchange, conn: UpstreamConnection, tail: bytes) -> None:
        self.told.append(("tunnel", tail))

    def end_tunnel(self) -> None:
        self.told.append(("end tunnel",))


class MemoryTransport:
    """What the upstream connection writes, and whether it was closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass
class Play:
    ctx: ProxyContext
    client: RecordingClient
    up: UpstreamConnection
    wire: MemoryTransport

    def exchange(self) -> Exchange:
        return Exchange(self.client)

    def idle_upstream(self) -> None:
        """Put the upstream connection back in its pool (as after an earlier request)."""
        self.up.pool.release(self.up)

    def proxied_get(self) -> Exchange:
        """A GET whose whole request has reached an idle upstream connection."""
        self.idle_upstream()
        ex = self.exchange()
        get(ex)
        ex.start()
        ex.on_request_complete()
        return ex

    def sent_upstream(self) -> bytes:
        return b"".join(self.wire.written)


HOST = [(b"Host", b"a.test")]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
async def play() -> Play:
    ctx = ProxyContext(in_memory_config())
    client = RecordingClient(ctx)
    up = UpstreamConnection(ctx.colors[("shop", "blue")].pools[0])
    wire = MemoryTransport()
    up.connection_made(wire)  # type: ignore[arg-type]
    return Play(ctx, client, up, wire)


def get(ex: Exchange, target: bytes = b"/x", headers: list[tuple[bytes, bytes]] = HOST) -> None:
    ex.on_request_head(b"GET", "1.1", target, list(headers), upgrade=False, keep_alive=True)


async def test_a_proxied_request_runs_head_body_done_while_its_response_runs_pending_streaming_done(
    play: Play,
) -> None:
    play.idle_upstream()
    ex = play.exchange()
    assert (ex.req_phase, ex.resp_phase) == (REQ_HEAD, RESP_PENDING)
    get(ex)
    assert (ex.req_phase, ex.resp_phase) == (REQ_BODY, RESP_PENDING)
    ex.start()
    assert play.sent_upstream().startswith(b"GET /x HTTP/1.1\r\n")
    ex.on_request_complete()
    assert ex.req_phase == REQ_DONE
    assert play.client.told == []
    play.up.data_received(OK)
    assert play.client.told == [("head", 200), ("body", b"ok"), ("end",), ("finished", True)]
    assert ex.resp_phase == RESP_DONE
    assert play.up.pool.take_idle() is play.up  # kept alive for the next request
    assert ex.finished_at > 0.0


async def test_a_local_answer_is_sent_at_start_and_finishes_only_when_the_request_ends(
    play: Play,
) -> None:
    ex = play.exchange()
    get(ex, headers=[(b"Host", b"nowhere.test")])
    assert ex.resp_phase == RESP_LOCAL
    ex.start()
    assert play.client.told == [("local", 404)]
    assert not play.wire.written
    ex.on_request_body(b"dropped")
    ex.on_request_complete()
    assert play.client.told == [("local", 404), ("finished", True)]
    assert ex.resp_phase == RESP_DONE


async def test_a_malformed_upstream_response_before_any_byte_is_answered_502_and_finishes(
    play: Play,
) -> None:
    ex = play.proxied_get()
    play.up.data_received(b"HTTP/1.1 abc\r\n\r\n")
    assert play.client.told == [("local", 502), ("finished", True)]
    assert ex.resp_phase == RESP_DONE
    assert ex.error is not None and "malformed response" in ex.error
    assert play.wire.closed


async def test_an_upstream_closing_mid_body_cuts_the_response_and_the_client_sees_an_abort(
    play: Play,
) -> None:
    ex = play.proxied_get()
    play.up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    play.up.connection_lost(None)
    assert play.client.told == [("head", 200), ("body", b"ab"), ("abort",)]
    assert ex.resp_phase == RESP_CUT
    assert ex.status == 200
    assert ex.error == "upstream closed mid-response: EOF"


async def test_a_101_to_a_websocket_upgrade_hands_the_upstream_connection_to_a_tunnel(
    play: Play,
) -> None:
    play.idle_upstream()
    ex = play.exchange()
    ex.on_request_head(
        b"GET",
        "1.1",
        b"/ws",
        [*HOST, (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")],
        upgrade=True,
        keep_alive=False,
    )
    ex.start()
    ex.on_request_complete()
    assert b"upgrade: websocket\r\n" in play.sent_upstream()
    play.up.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    assert play.client.told == [("head", 101), ("tunnel", b"\x81\x02hi")]
    assert ex.resp_phase == RESP_TUNNEL and ex.in_tunnel()
    assert ex.upstream is None and play.up.exchange is None
    ex.cut()  # a drain's deadline
    assert play.client.told[-1] == ("end tunnel",)


async def test_back_pressure_from_the_upstream_pauses_and_resumes_reading_the_request(
    play: Play,
) -> None:
    play.idle_upstream()
    ex = play.exchange()
    ex.on_request_head(
        b"POST", "1.1", b"/up", [*HOST, (b"Content-Length", b"4")], upgrade=False, keep_alive=True
    )
    ex.start()
    play.up.pause_writing()
    ex.on_request_body(b"data")
    play.up.resume_writing()
    assert play.client.told == [("pause", "upstream"), ("resume", "upstream")]
    assert play.sent_upstream().endswith(b"\r\n\r\ndata")
    ex.pause_response()
    assert play.wire.paused
    ex.resume_response()
    assert not play.wire.paused


async def test_a_body_over_the_buffer_limit_pauses_the_client_until_the_upstream_is_connected(
    play: Play,
) -> None:
    ex = play.exchange()  # no idle upstream connection: start() connects
    size = BUFFER_LIMIT + 1
    ex.on_request_head(
        b"PUT",
        "1.1",
        b"/big",
        [*HOST, (b"Content-Length", str(size).encode())],
        upgrade=False,
        keep_alive=True,
    )
    ex.start()
    ex.on_request_body(b"a" * BUFFER_LIMIT)
    assert play.client.told == [("spawn", "upstream-connect")]
    ex.on_request_body(b"b")
    assert play.client.told[-1] == ("pause", "buffer")
    ex.attach(play.up)  # the connection is made
    assert play.client.told[-1] == ("resume", "buffer")
    assert play.sent_upstream().endswith(b"a" * BUFFER_LIMIT + b"b")
    assert ex.body_sent == size


async def test_a_drain_cut_answers_503_before_any_byte_and_aborts_after(play: Play) -> None:
    waiting = play.proxied_get()
    waiting.cut()
    assert play.client.told == [("local", 503), ("finished", False)]
    assert waiting.resp_phase == RESP_DONE and waiting.error == "drain deadline passed"

    play.client.told.clear()
    play.up = UpstreamConnection(play.up.pool)
    play.up.connection_made(MemoryTransport())  # type: ignore[arg-type]
    streaming = play.proxied_get()
    play.up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
    streaming.cut()
    assert play.client.told == [("head", 200), ("body", b"ab"), ("abort",)]
    assert streaming.resp_phase == RESP_CUT


async def test_a_client_that_leaves_before_the_answer_makes_a_499_and_frees_the_upstream(
    play: Play,
) -> None:
    play.idle_upstream()
    ex = play.exchange()
    get(ex)
    ex.start()
    ex.downstream_lost()
    assert (ex.resp_phase, ex.status) == (RESP_CUT, 499)
    assert play.wire.closed and ex.upstream is None
    assert play.client.told == []
    ex.fail(502, "too late")  # nothing more is said once cut
    assert play.client.told == []


async def test_a_request_cannot_end_twice_nor_begin_twice(play: Play) -> None:
    ex = play.exchange()
    get(ex, headers=[(b"Host", b"nowhere.test")])
    with pytest.raises(IllegalTransition, match="request cannot go from body to body"):
        get(ex)
    ex.on_request_complete()
    with pytest.raises(IllegalTransition, match="request cannot go from done to done"):
        ex.on_request_complete()
    assert ex.req_phase == REQ_DONE


async def test_a_response_head_after_the_response_ended_raises(play: Play) -> None:
    ex = play.proxied_get()
    play.up.data_received(OK)
    with pytest.raises(IllegalTransition, match="response cannot go from done to streaming"):
        ex.on_response_head(200, b"OK", [], True)
    assert ex.resp_phase == RESP_DONE


async def test_a_response_head_for_a_cut_exchange_raises(play: Play) -> None:
    ex = play.exchange()
    get(ex)
    ex.downstream_lost()
    with pytest.raises(IllegalTransition, match="response cannot go from cut to streaming"):
        ex.on_response_head(200, b"OK", [], True)


async def test_every_response_step_is_legal_exactly_when_the_table_lists_it(play: Play) -> None:
    for old in range(len(RESPONSE_PHASES)):
        for new in range(len(RESPONSE_PHASES)):
            ex = play.exchange()
            ex.resp_phase = old
            if new in RESPONSE_TRANSITIONS[old]:
                ex._response_to(new)
                assert ex.resp_phase == new
            else:
                with pytest.raises(IllegalTransition) as raised:
                    ex._response_to(new)
                assert str(raised.value) == (
                    f"response cannot go from {RESPONSE_PHASES[old]} to {RESPONSE_PHASES[new]}"
                )
                assert ex.resp_phase == old
    assert RESP_STREAMING in RESPONSE_TRANSITIONS[RESP_PENDING]
