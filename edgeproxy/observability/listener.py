"""The optional TCP listener for `GET /metrics` (`control.metrics_listen`), served by aiohttp.

`:9100` (no host) binds loopback only; give an address (`0.0.0.0:9100`) to
expose it further. Nothing but /metrics is served here: the control API stays
on its unix socket.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from aiohttp import web

from edgeproxy.config import parse_address
from edgeproxy.errors import StartupError


def metrics_address(value: str) -> tuple[str, int]:
    host, port = parse_address(value)
    return ("127.0.0.1" if value.startswith(":") else host), port


async def start_metrics_listener(
    value: str, render: Callable[[], str], socks: list[socket.socket]
) -> web.AppRunner:
    """Serve /metrics on `socks`, bound to `value` (`bind_tcp`; a hand-over passes them on)."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(text=render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        for sock in socks:
            await web.SockSite(runner, sock).start()
    except OSError as e:
        await runner.cleanup()
        raise StartupError(
            f"control.metrics_listen: could not serve {value}: {e.strerror or e}"
        ) from e
    return runner
