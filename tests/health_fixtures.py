"""Real-socket health test helpers: a backend that fails on demand, and edgeproxy's health events.

Import `flaky_fixture` into a test module to get the `flaky(name, health=[...], traffic=[...])`
fixture.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import pytest
from aiohttp import web

from edgeproxy.app import Observability
from edgeproxy.health.monitor import HealthMonitor, UpstreamHealth
from tests.proxy_fixtures import Edge, LoopThread, site


@dataclass
class Flaky:
    """A backend whose /health answers follow `health` (cycled; 0 = hang) and that logs them."""

    name: str
    port: int = 0
    health: list[int] = field(default_factory=lambda: [200])
    traffic: list[int] = field(default_factory=lambda: [200])
    """Statuses for other paths, cycled (e.g. one 500 in twenty)."""
    probes: list[tuple[float, int]] = field(default_factory=list)
    served: list[int] = field(default_factory=list)
    probe_hosts: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    site: web.TCPSite | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answered(self, status: int) -> int:
        return sum(1 for _, s in self.probes if s == status)

    def app(self) -> web.Application:
        probe_no, request_no = count(), count()

        async def health(request: web.Request) -> web.StreamResponse:
            script = self.health
            status = script[next(probe_no) % len(script)]
            self.probes.append((time.monotonic(), status))
            self.probe_hosts.append(request.host)
            if status == 0:
                await self.stopped.wait()  # hang until the test ends
            return web.Response(status=status, text=f"{self.name} {status}\n")

        async def other(request: web.Request) -> web.StreamResponse:
            script = self.traffic
            status = script[next(request_no) % len(script)]
            self.served.append(status)
            return web.Response(status=status, text=f"{self.name}\n")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_route("*", "/{tail:.*}", other)
        return app

    async def listen(self) -> None:
        if self.runner is None:
            self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
            await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await self.site.start()
        server = self.site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused."""
        assert self.site is not None
        await self.site.stop()


@pytest.fixture(name="flaky")
def flaky_fixture(backend_loop: LoopThread) -> Iterator[Callable[..., Flaky]]:
    made: list[Flaky] = []

    def start(name: str, **kw: Any) -> Flaky:
        b = Flaky(name, **kw)
        backend_loop.run(b.listen())
        made.append(b)
        return b

    yield start
    for b in made:
        if b.runner is not None:
            backend_loop.loop.call_soon_threadsafe(b.stopped.set)
            backend_loop.run(b.runner.cleanup())


def app_config(
    colors: dict[str, list[str]], *, health: dict[str, Any] | None = None, **app: Any
) -> dict[str, Any]:
    return {
        "apps": {
            "shop": {
                "colors": {c: {"upstreams": ups} for c, ups in colors.items()},
                "health": {"interval": 0.05, "timeout": 1.0, **(health or {})},
                **app,
            }
        },
        "sites": [site("shop")],
    }


def monitor(e: Edge) -> HealthMonitor:
    return next(p for p in e.server.plugins if isinstance(p, Observability)).health


class Events:
    """Health transitions as they happen on edgeproxy's loop, each with a snapshot."""

    def __init__(self, e: Edge, snapshot: Callable[[UpstreamHealth], Any] = lambda u: None):
        self.q: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        self.snapshot = snapshot

        def listener(u: UpstreamHealth, event: str) -> None:
            self.q.put((event, u.url, self.snapshot(u)))

        e.run(self._add(monitor(e), listener))

    @staticmethod
    async def _add(m: HealthMonitor, listener: Callable[[UpstreamHealth, str], None]) -> None:
        m.listeners.append(listener)

    def next(self, timeout: float = 10.0) -> tuple[str, str, Any]:
        return self.q.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.q.get(timeout=seconds)
        except queue.Empty:
            return True
        return False
