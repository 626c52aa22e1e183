"""Listening sockets: bound from the config before anything else (no asyncio, no aiohttp).

`edgeproxy serve` binds them right after reading the config, before importing
the rest of edgeproxy: from then on the kernel queues new connections (they are
answered once serving starts) instead of refusing them. A process taking over
gets the old process's sockets instead (edgeproxy/handover.py).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from edgeproxy.config import Config, parse_address
from edgeproxy.errors import StartupError

Bound = list[tuple[str, str, list[socket.socket]]]
"""(listener name, configured address, its listening sockets)."""


def bind_tcp(what: str, address: str, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for `host:port` (one per address it resolves to), or StartupError
    naming `what` (the config key), the address and what to do."""
    socks: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _canon, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(2048)
            sock.setblocking(False)
    except OSError as e:
        for sock in socks:
            sock.close()
        if e.errno == errno.EADDRINUSE:
            hint = ": address in use by another process (is nginx still running?)"
        elif e.errno == errno.EACCES:
            hint = ": permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        else:
            hint = f": {e.strerror or e}"
        raise StartupError(f"{what}: could not bind {address}{hint}") from e
    return socks


def bind_listeners(
    config: Config, given: Callable[[str, str], list[socket.socket] | None] | None = None
) -> Bound:
    """Every configured listener: `given(name, address)` sockets when it has them, else bound."""
    bound: Bound = []
    for name, address in (("http", config.listen.http), ("https", config.listen.https)):
        if not address:
            continue
        socks = None if given is None else given(name, address)
        if socks is None:
            socks = bind_tcp(f"listen.{name}", address, *parse_address(address))
        bound.append((name, address, socks))
    return bound
