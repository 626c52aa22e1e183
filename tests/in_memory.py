"""A proxy connection without sockets: a real `ClientConnection` and a real `UpstreamConnection`
over in-memory transports that keep what is written.

For tests that drive the hot path byte by byte (tests/test_header_case.py,
tests/test_request_head_chunking.py); `bench/hotpath.py` measures the same setup.
"""

from __future__ import annotations

from typing import Any

from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.upstream import UpstreamConnection


class MemoryTransport:
    """Just enough of asyncio.Transport for the protocols."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def connect_in_memory(
    ctx: ProxyContext, app: str = "shop", color: str = "blue"
) -> tuple[ClientConnection, MemoryTransport, UpstreamConnection, MemoryTransport]:
    """A client connection, and one idle upstream connection of app/color in its pool.

    Must run inside an event loop. Returns (client, its transport, upstream, its transport).
    """
    client = ClientConnection(ctx, tls=False, local_port=80)
    ct = MemoryTransport(("203.0.113.7", 50000))
    client.connection_made(ct)  # type: ignore[arg-type]
    pool = ctx.colors[(app, color)].pools[0]
    up = UpstreamConnection(pool)
    ut = MemoryTransport(("127.0.0.1", 9))
    up.connection_made(ut)  # type: ignore[arg-type]
    pool.release(up)  # an idle keep-alive connection, reused by every request
    return client, ct, up, ut
