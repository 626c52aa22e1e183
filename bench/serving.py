"""What the bench's own small servers (backend, probe) share: addresses, TLS, shutdown."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import Sequence
from pathlib import Path


def parse_addr(value: str) -> tuple[str, int]:
    """`127.0.0.1:8080` or `:8080` → (host, port); the host defaults to loopback."""
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context without session tickets, like the peers' TLS settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


async def serve_until_signal(servers: Sequence[asyncio.Server]) -> None:
    """Keep the servers up until SIGTERM or SIGINT, then close them."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    for s in servers:
        s.close()
