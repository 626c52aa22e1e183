"""Shared test setup: hypothesis profiles ("ci" by default, "deep" on demand)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from edgeproxy import compiled
from edgeproxy.config import Config
from edgeproxy.control.api import ControlHooks, start_control_server, stop_control_server
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.store import StateStore
from tests.process_fixtures import *  # noqa: F403 - edgeproxy as a subprocess (edge_process)
from tests.proxy_fixtures import *  # noqa: F403 - real-socket fixtures (edge, backend, tls_files)
from tests.redis_fixtures import *  # noqa: F403 - a real redis-server (redis_server)

_R = TypeVar("_R")

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def make_config() -> Callable[..., Config]:
    """`make_config(shop=("blue", "green"))` → a Config with those apps and colors."""

    def build(control: dict[str, Any] | None = None, **apps: tuple[str, ...]) -> Config:
        return Config.model_validate(
            {
                "control": control or {},
                "apps": {
                    name: {"colors": {c: {"upstreams": ["http://127.0.0.1:9"]} for c in colors}}
                    for name, colors in apps.items()
                },
            }
        )

    return build


@dataclass
class ControlProxy:
    """A SwitchBoard + control API served on a real unix socket by a background loop."""

    board: SwitchBoard
    socket: Path
    store: StateStore
    loop: asyncio.AbstractEventLoop
    unhealthy: dict[str, list[str]] = field(default_factory=dict)
    """color → failing checks; colors not listed are healthy."""
    inflight: dict[str, tuple[int, int]] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, _R]) -> _R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)


@pytest.fixture
def control_proxy(
    tmp_path: Path, make_config: Callable[..., Config]
) -> Iterator[Callable[..., ControlProxy]]:
    """`control_proxy(shop=("blue", "green"), control={...})` starts one; stopped at teardown."""
    started: list[tuple[ControlProxy, threading.Thread, web.AppRunner]] = []

    def start(
        control: dict[str, Any] | None = None,
        hooks: Callable[[SwitchBoard], ControlHooks] | None = None,
        **apps: tuple[str, ...],
    ) -> ControlProxy:
        control = {"socket": str(tmp_path / "run" / "control.sock"), **(control or {})}
        config = make_config(control=control, **apps)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="control-proxy", daemon=True)
        thread.start()
        store = StateStore(tmp_path / "lib" / "state.json")
        proxy = ControlProxy(None, config.control.socket, store, loop)  # type: ignore[arg-type]

        async def boot() -> web.AppRunner:
            proxy.board = SwitchBoard.load(
                config,
                store,
                health=lambda app, color: (
                    color not in proxy.unhealthy,
                    proxy.unhealthy.get(color, []),
                ),
                inflight=lambda app, color: proxy.inflight.get(color, (0, 0)),
                drain_poll=0.01,
            )
            proxy.board.start()
            return await start_control_server(
                config.control, proxy.board, hooks(proxy.board) if hooks else None
            )

        runner = asyncio.run_coroutine_threadsafe(boot(), loop).result(timeout=30)
        started.append((proxy, thread, runner))
        return proxy

    yield start
    for proxy, thread, runner in started:
        proxy.run(stop_control_server(runner))
        proxy.run(proxy.board.stop())
        proxy.loop.call_soon_threadsafe(proxy.loop.stop)
        thread.join(timeout=10)
        proxy.loop.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a compiled hot path built from older sources (it isn't the code here)."""
    hot_path = compiled.state()
    if hot_path.stale:
        pytest.exit(hot_path.summary, returncode=3)
