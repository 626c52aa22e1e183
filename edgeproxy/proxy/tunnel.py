"""A WebSocket tunnel: the bytes of one upgraded connection, both ways, after the 101.

Flow control is the HTTP body path's: when one side's write buffer passes its
high-water mark, reading from the other side pauses until it drains (the
client's `pause_writing` pauses the upstream's reading, the upstream's pauses
the client's). When either side closes or fails, the other is closed and the
tunnel is freed; a side that cannot flush what it holds within `CLOSE_LINGER`
seconds (a peer that never reads) is cut.

Shutdown says goodbye like a server should: a close frame with code 1001
("going away") goes to the client at the next frame boundary of what the
upstream sends, and nothing from the upstream follows it. The client's
answering close frame reaches the upstream, which closes, and that closes the
tunnel. Frame boundaries are followed by reading each frame header the
upstream sends (2 to 14 bytes; the payload is skipped, never parsed).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from edgeproxy.proxy.upstream import ByteSink

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Downstream, Exchange
    from edgeproxy.proxy.upstream import UpstreamConnection

CLOSE_LINGER: Final = 5.0
"""Seconds a closing side may take to flush what it holds before it is cut (nginx's lingering_timeout)."""

GOING_AWAY: Final = b"\x88\x14\x03\xe9edgeproxy stopping"
"""A close frame from server to client (unmasked): code 1001 (0x03e9), an 18-byte reason."""


def close_lingering(transport: asyncio.Transport | None, loop: asyncio.AbstractEventLoop) -> None:
    """Close after flushing, but cut the connection if it has not flushed in CLOSE_LINGER s."""
    if transport is None or transport.is_closing():
        return
    pending = transport.get_write_buffer_size()
    transport.close()
    if pending:
        loop.call_later(CLOSE_LINGER, transport.abort)  # a no-op once it has closed


def frame_header_size(head: bytes) -> int:
    """The size of the WebSocket frame header that `head` begins with (0: not known yet)."""
    if len(head) < 2:
        return 0
    b1 = head[1]
    n = b1 & 0x7F
    size = 2 + (2 if n == 126 else 8 if n == 127 else 0)
    return size + 4 if b1 & 0x80 else size


def frame_payload_size(head: bytes) -> int:
    n = head[1] & 0x7F
    if n == 126:
        return int.from_bytes(head[2:4], "big")
    if n == 127:
        return int.from_bytes(head[2:10], "big")
    return n


class Tunnel(ByteSink):
    """Both directions of one upgraded connection: the client side is the exchange's
    `Downstream`, the upstream side delivers its bytes here (a `ByteSink`)."""

    __slots__ = (
        "client",
        "ended",
        "exchange",
        "going_away",
        "head",
        "left",
        "said_goodbye",
        "upstream",
    )

    def __init__(self, client: Downstream, upstream: UpstreamConnection, ex: Exchange) -> None:
        self.client = client
        self.upstream = upstream
        self.exchange = ex
        self.left = 0
        """Bytes of the upstream's current frame still to come (0: at a frame boundary)."""
        self.head = b""
        """The start of a frame header split across reads."""
        self.going_away = False
        self.said_goodbye = False
        self.ended = False

    # -- bytes ----------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.said_goodbye:
            return  # the client got its close frame: nothing may follow it
        if not self.going_away:
            self.skip(data, stop_at_boundary=False)
            self.client.tunnel_write(data)
            return
        at = self.skip(data, stop_at_boundary=True)
        if at:
            self.client.tunnel_write(data[:at])
        if at < len(data) or (self.left == 0 and not self.head):
            self._say_goodbye()

    def skip(self, data: bytes, *, stop_at_boundary: bool) -> int:
        """Follow frame boundaries through `data`; with `stop_at_boundary`, stop at the first.

        Returns how much of `data` was passed over: all of it, or the offset of the
        first frame boundary when asked to stop there.
        """
        pos = 0
        n = len(data)
        while pos < n:
            left = self.left
            if left:
                step = left if left < n - pos else n - pos
                pos += step
                self.left = left - step
                continue
            if stop_at_boundary and not self.head:
                return pos
            head = self.head + data[pos : pos + 14]
            size = frame_header_size(head)
            if size == 0 or len(head) < size:
                self.head = head  # the header continues in the next read
                return n
            pos += size - len(self.head)
            self.head = b""
            self.left = frame_payload_size(head)
        return n

    # -- ByteSink: the upstream side ----------------------------------------------------
    def upstream_closed(self) -> None:
        self.end()

    def upstream_write_paused(self) -> None:
        self.client.pause_reading_for_upstream()

    def upstream_write_resumed(self) -> None:
        self.client.resume_reading_for_upstream()

    # -- ending ---------------------------------------------------------------------
    def go_away(self) -> None:
        """Shutdown: send the client a close frame 1001 at the next frame boundary."""
        if self.going_away or self.ended:
            return
        self.going_away = True
        if self.left == 0 and not self.head:
            self._say_goodbye()

    def _say_goodbye(self) -> None:
        self.said_goodbye = True
        self.client.tunnel_write(GOING_AWAY)

    def end(self) -> None:
        """Either side closed or failed (or a drain cut it): close both and free everything."""
        if self.ended:
            return
        self.ended = True
        client = self.client
        upstream = self.upstream
        upstream.tunnel = None
        upstream.closed = True
        upstream.pool.forget(upstream)
        close_lingering(upstream.transport, client.loop)
        client.tunnel_ended(self.exchange)  # closes the client side
