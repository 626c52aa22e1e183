"""Which protocol serves a TLS connection: chosen by ALPN once the handshake is done.

The TLS listener offers `h2, http/1.1` (`listen.http2`). asyncio and uvloop
create the protocol before the handshake and call `connection_made` after it,
so the listener's protocol is this chooser: on `connection_made` it reads the
negotiated protocol, hands the transport to an `H2Connection` (`h2`) or a
`ClientConnection` (anything else: `http/1.1`, or no ALPN at all, exactly
today's path), and steps aside. It costs one small object per connection and
nothing per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from edgeproxy.proxy.client import ClientConnection
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.h2conn import H2Connection


class AlpnChooser:
    """The protocol of a TLS connection until its handshake says which one serves it."""

    __slots__ = ("ctx", "local_port")

    def __init__(self, ctx: ProxyContext, local_port: int) -> None:
        self.ctx = ctx
        self.local_port = local_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_obj = transport.get_extra_info("ssl_object")
        chosen = ssl_obj.selected_alpn_protocol() if ssl_obj is not None else None
        proto: Any
        if chosen == "h2":
            proto = H2Connection(self.ctx, local_port=self.local_port)
        else:
            proto = ClientConnection(self.ctx, tls=True, local_port=self.local_port)
        transport.set_protocol(cast(asyncio.Protocol, proto))
        proto.connection_made(transport)

    # Never called once connection_made has handed over; here for a transport
    # that fails before (asyncio.Protocol's contract).
    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass
