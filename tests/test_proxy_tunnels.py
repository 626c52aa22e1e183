"""Upgrades and WebSocket tunnels under abuse, against edgeproxy as a real process.

A client that pushes bytes behind an upgrade the upstream has not accepted
(yet), or a WebSocket client that sends to an echo backend and never reads,
must not grow the proxy's memory: the proxy stops reading it instead. Each
abusive client offers 1 GiB; the proxy's RSS must stay within 32 MiB of where
it started, and every descriptor must be released once the client (or the
upstream) goes away. Shutdown says goodbye to tunnels with a close frame 1001.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.process_fixtures import EdgeProcess
from tests.proxy_fixtures import Backend, LoopThread, http_get, site

GIB = 1 << 30
MIB = 1 << 20
RSS_BUDGET_KIB = 32 * 1024
STALL_SECONDS = 2.0
"""A client whose sends make no progress for this long is being held back (the fix)."""
LINGER_MARGIN = 10.0
"""Seconds to wait for descriptors: a closed side may linger 5 s to flush, then it is cut."""


def upgrade_request(path: str, host: str = "a.test") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@dataclass
class Push:
    sent: int = 0
    peak_rss_kib: int = 0
    received: bytes = b""
    ended: str = ""
    """Why pushing stopped: "all sent", "stalled", "closed" or "memory"."""


def push(sock: socket.socket, proc: EdgeProcess, rss0: int, total: int = GIB) -> Push:
    """Offer `total` bytes as fast as the proxy takes them, reading whatever it answers.

    Stops early when the proxy holds back (no progress for STALL_SECONDS), closes the
    connection, or its RSS already passed the budget (the test has failed by then).
    """
    out = Push(peak_rss_kib=rss0)
    chunk = b"\x00" * MIB
    sock.setblocking(False)
    last_progress = time.monotonic()
    next_check = 0
    while out.sent < total:
        readable, writable, _ = select.select([sock], [sock], [], 0.1)
        if readable:
            try:
                got = sock.recv(65536)
            except ConnectionError:
                out.ended = "closed"
                break
            if not got:
                out.ended = "closed"
                break
            out.received += got
        if writable:
            try:
                n = sock.send(chunk)
            except BlockingIOError:
                n = 0
            except (BrokenPipeError, ConnectionResetError):
                out.ended = "closed"
                break
            if n:
                out.sent += n
                last_progress = time.monotonic()
        if out.sent >= next_check:
            next_check = out.sent + 16 * MIB
            out.peak_rss_kib = max(out.peak_rss_kib, proc.rss_kib())
            if out.peak_rss_kib - rss0 > RSS_BUDGET_KIB:
                out.ended = "memory"
                break
        if time.monotonic() - last_progress > STALL_SECONDS:
            out.ended = "stalled"
            break
    else:
        out.ended = "all sent"
    out.peak_rss_kib = max(out.peak_rss_kib, proc.rss_kib())
    sock.setblocking(True)
    return out


def read_to_end(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while got := sock.recv(65536):
            chunks.append(got)
    except (ConnectionError, TimeoutError):
        pass
    return b"".join(chunks)


def settle(proc: EdgeProcess, port_host: str = "a.test") -> tuple[int, int]:
    """Warm the proxy up (a few requests), then its RSS and descriptor count."""
    for _ in range(5):
        assert http_get(proc.http_port, host=port_host).status == 200
    time.sleep(0.3)
    return proc.rss_kib(), proc.fds()


def app_config(b: Backend, **extra: object) -> dict[str, object]:
    return {
        "apps": {
            "shop": {"colors": {"blue": {"upstreams": [b.url]}}, "health": {"enabled": False}}
        },
        "sites": [site("shop")],
        **extra,
    }


# -- item 1: an upgrade the upstream has not accepted ---------------------------------------


def test_a_pending_upgrade_stops_reading_the_client_so_1_gib_pushed_behind_it_is_never_buffered(
    backend, edge_process
):
    b = backend("blue")
    proc = edge_process(app_config(b))
    rss0, fds0 = settle(proc)
    with socket.create_connection(("127.0.0.1", proc.http_port)) as s:
        s.sendall(upgrade_request("/slow"))  # the upstream holds its answer
        result = push(s, proc, rss0)
        assert result.peak_rss_kib - rss0 <= RSS_BUDGET_KIB, (
            f"RSS grew {(result.peak_rss_kib - rss0) / 1024:.0f} MiB after "
            f"{result.sent / MIB:.0f} MiB pushed behind a pending upgrade"
        )
        assert result.ended == "stalled", result.ended
        b.release_slow()  # the upstream declines the upgrade: a plain 200
        answer = result.received + read_to_end(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert b"blue slow done" in answer
    assert proc.wait_fds(fds0, LINGER_MARGIN) <= fds0
    assert proc.rss_kib() - rss0 <= RSS_BUDGET_KIB


def test_a_declined_upgrade_is_answered_with_connection_close_and_1_gib_pushed_after_it_is_not_kept(
    backend, edge_process
):
    b = backend("blue")
    proc = edge_process(app_config(b))
    rss0, fds0 = settle(proc)
    with socket.create_connection(("127.0.0.1", proc.http_port)) as s:
        s.sendall(upgrade_request("/"))  # a plain route: the upstream answers 200, not 101
        result = push(s, proc, rss0)
        answer = result.received
        if result.ended != "closed":
            answer += read_to_end(s, timeout=2)
    assert result.peak_rss_kib - rss0 <= RSS_BUDGET_KIB, (
        f"RSS grew {(result.peak_rss_kib - rss0) / 1024:.0f} MiB after "
        f"{result.sent / MIB:.0f} MiB pushed after a declined upgrade"
    )
    assert result.ended == "closed", result.ended
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"connection: close" in answer.lower()
    assert proc.wait_fds(fds0, LINGER_MARGIN) <= fds0


# -- item 2: WebSocket tunnels -----------------------------------------------------------------


@dataclass
class WsBackend:
    """A `websockets` echo server on the backend loop; it can cut its connections."""

    loop: LoopThread
    server: Server | None = None
    port: int = 0
    conns: list[ServerConnection] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _echo(self, ws: ServerConnection) -> None:
        self.conns.append(ws)
        try:
            async for msg in ws:
                await ws.send(msg)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()

    def start(self) -> None:
        async def boot() -> int:
            self.server = await serve(
                self._echo, "127.0.0.1", 0, max_size=None, ping_interval=None, compression=None
            )
            return int(next(iter(self.server.sockets)).getsockname()[1])

        self.port = self.loop.run(boot())

    def abort_all(self) -> None:
        """Reset every server-side connection (an upstream that dies)."""
        for ws in self.conns:
            self.loop.loop.call_soon_threadsafe(ws.transport.abort)

    def stop(self) -> None:
        async def down() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        self.loop.run(down())


@pytest.fixture
def ws_backend(backend_loop: LoopThread) -> Iterator[WsBackend]:
    wb = WsBackend(backend_loop)
    wb.start()
    yield wb
    wb.stop()


def tunnel_config(wb: WsBackend, **extra: object) -> dict[str, object]:
    return {
        "sites": [site(wb.url, hosts=("a.test", "127.0.0.1"))],
        **extra,
    }


def ws_settle(proc: EdgeProcess) -> tuple[int, int]:
    """One full WebSocket round trip (warm-up), then RSS and descriptors."""

    async def once() -> None:
        async with ws_connect(proc) as ws:
            await ws.send(b"hello")
            assert await asyncio.wait_for(ws.recv(), 5) == b"hello"

    for _ in range(3):
        asyncio.run(once())
    time.sleep(0.5)
    return proc.rss_kib(), proc.fds()


def ws_connect(proc: EdgeProcess) -> connect:
    return connect(
        f"ws://127.0.0.1:{proc.http_port}/ws",
        max_size=None,
        ping_interval=None,
        compression=None,
        open_timeout=5,
    )


async def flood(ws: ClientConnection, proc: EdgeProcess, rss0: int) -> Push:
    """Send 1 MiB messages (up to 1 GiB) and never read; stop when held back or over budget."""
    out = Push(peak_rss_kib=rss0)
    data = b"\x01" * MIB
    while out.sent < GIB:
        try:
            await asyncio.wait_for(ws.send(data), STALL_SECONDS)
        except TimeoutError:
            out.ended = "stalled"
            break
        out.sent += len(data)
        if out.sent % (16 * MIB) == 0:
            out.peak_rss_kib = max(out.peak_rss_kib, proc.rss_kib())
            if out.peak_rss_kib - rss0 > RSS_BUDGET_KIB:
                out.ended = "memory"
                break
    else:
        out.ended = "all sent"
    out.peak_rss_kib = max(out.peak_rss_kib, proc.rss_kib())
    return out


def test_a_websocket_client_that_never_reads_is_held_back_and_its_tunnel_is_freed_when_it_leaves(
    ws_backend, edge_process
):
    proc = edge_process(tunnel_config(ws_backend))
    rss0, fds0 = ws_settle(proc)
    ws_backend.closed.clear()

    async def abuse() -> Push:
        ws = await ws_connect(proc)
        result = await flood(ws, proc, rss0)
        ws.transport.abort()  # the client goes away without a word
        return result

    result = asyncio.run(abuse())
    assert result.peak_rss_kib - rss0 <= RSS_BUDGET_KIB, (
        f"RSS grew {(result.peak_rss_kib - rss0) / 1024:.0f} MiB after "
        f"{result.sent / MIB:.0f} MiB sent by a client that never reads"
    )
    assert result.ended == "stalled", result.ended
    # The client is gone: its socket and the tunnel's upstream socket are released.
    assert proc.wait_fds(fds0, LINGER_MARGIN) <= fds0, proc.fds()
    assert ws_backend.closed.wait(5), "the upstream side of the tunnel was never closed"
    time.sleep(0.5)
    assert proc.rss_kib() - rss0 <= RSS_BUDGET_KIB


def test_when_the_upstream_of_a_tunnel_dies_the_client_side_is_closed_and_everything_freed(
    ws_backend, edge_process
):
    proc = edge_process(tunnel_config(ws_backend))
    rss0, fds0 = ws_settle(proc)

    async def abuse() -> tuple[Push, bool]:
        ws = await ws_connect(proc)
        result = await flood(ws, proc, rss0)  # leaves the proxy holding bytes for this client
        ws_backend.abort_all()  # now the upstream dies
        # The proxy closes the client side: the client sees its connection end.
        ws.transport.resume_reading()
        try:
            await asyncio.wait_for(ws.wait_closed(), LINGER_MARGIN)
            closed = True
        except TimeoutError:
            closed = False
        ws.transport.abort()
        return result, closed

    result, closed = asyncio.run(abuse())
    assert result.peak_rss_kib - rss0 <= RSS_BUDGET_KIB
    assert closed, "the client connection stayed open after its upstream died"
    assert proc.wait_fds(fds0, LINGER_MARGIN) <= fds0, proc.fds()


def test_when_the_client_of_a_tunnel_closes_the_upstream_side_is_closed_too(
    ws_backend, edge_process
):
    proc = edge_process(tunnel_config(ws_backend))
    _, fds0 = ws_settle(proc)
    ws_backend.closed.clear()

    async def talk_then_leave() -> None:
        ws = await ws_connect(proc)
        await ws.send(b"hi")
        assert await asyncio.wait_for(ws.recv(), 5) == b"hi"
        ws.transport.close()  # a TCP close, no close frame

    asyncio.run(talk_then_leave())
    assert ws_backend.closed.wait(5), "the upstream side of the tunnel was never closed"
    assert proc.wait_fds(fds0, LINGER_MARGIN) <= fds0


def test_shutdown_sends_open_tunnels_a_close_frame_1001_before_the_deadline(
    ws_backend, edge_process
):
    proc = edge_process(tunnel_config(ws_backend, shutdown_grace=20))
    started_at: list[float] = []

    async def run() -> tuple[int | None, float]:
        async with ws_connect(proc) as ws:
            await ws.send(b"hi")
            assert await asyncio.wait_for(ws.recv(), 5) == b"hi"
            started = time.monotonic()
            started_at.append(started)
            proc.terminate()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code, time.monotonic() - started

    code, seconds = asyncio.run(run())
    assert code == 1001, f"close code {code}"
    assert seconds < 5
    proc.popen.wait(20)
    exited = time.monotonic() - started_at[0]
    assert exited < 5, f"exited {exited:.1f} s after SIGTERM (grace 20 s)"
    assert proc.popen.returncode == 0
