"""Wiring: a Server with its plugins (switch board + control API) from a config.

The data plane reads `board.states[app]` per request; the board calls back into
the data plane for in-flight counts, cutting a drained color, and health.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from edgeproxy.config import Config
from edgeproxy.control.api import start_control_server, stop_control_server, switch_metrics
from edgeproxy.control.store import StateStore
from edgeproxy.proxy.picker import Picker
from edgeproxy.server import Server
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.state import AppState, weights

log = logging.getLogger("edgeproxy.switch")


class ServerHooks:
    """What the control API asks of the data plane."""

    def __init__(self, server: Server, board: SwitchBoard) -> None:
        self.server = server
        self.board = board

    def metrics_text(self) -> str:
        parts = [switch_metrics(self.board)]
        metrics = getattr(self.server, "metrics", None)
        if metrics is not None:
            parts.append(metrics.render(self.server))
        return "".join(parts)

    async def reload_certs(self) -> dict[str, Any]:
        return await self.server.reload_certs()

    def certs_view(self) -> dict[str, Any]:
        return {
            "certificates": self.server.certs.views(),
            "last_error": self.server.certs.last_error,
        }

    def health_view(self) -> dict[str, Any]:
        health = getattr(self.server, "health", None)
        if health is not None:
            view: dict[str, Any] = health.view()
            return view
        apps: dict[str, Any] = {}
        for app, s in self.board.states.items():
            apps[app] = {c: {"healthy": True, "failing_checks": []} for c in s.colors}
        return {"apps": apps}


class Switching:
    """Plugin: restore the switch state, serve the control API, react to changes."""

    def __init__(self) -> None:
        self.board: SwitchBoard | None = None
        self.runner: web.AppRunner | None = None

    async def start(self, server: Server) -> None:
        config = server.config
        ctx = server.ctx
        board = SwitchBoard.load(
            config,
            StateStore(config.state_file),
            inflight=ctx.tracker.counts,
            cut=ctx.tracker.cut,
        )
        self.board = board
        ctx.picker = Picker(config, board, ctx.override_nets)
        board.add_listener(self._on_change(server))
        board.start()
        server.board = board  # type: ignore[attr-defined]
        self.runner = await start_control_server(config.control, board, ServerHooks(server, board))
        for app, state in board.states.items():
            log.info("app %s: %s", app, state.summary())

    def _on_change(self, server: Server) -> Any:
        def changed(app: str, old: AppState, new: AppState) -> None:
            # A color that no longer gets new requests keeps its in-flight ones,
            # but its idle pooled connections are closed at once.
            # Connections released while a drain ran are closed when it ends.
            before, after = weights(old), weights(new)
            for color in old.colors:
                stopped = before.get(color, 0) > 0 and after.get(color, 0) == 0
                drained = color in old.draining and color not in new.draining
                if (stopped or drained) and after.get(color, 0) == 0:
                    n = server.ctx.close_idle_of_color(app, color)
                    if n:
                        log.info("closed %d idle upstream connections of %s/%s", n, app, color)

        return changed

    async def stop(self) -> None:
        if self.runner is not None:
            await stop_control_server(self.runner)
        if self.board is not None:
            await self.board.stop()


def build_server(config: Config, config_path: Path | None = None) -> Server:
    server = Server(config, config_path=config_path)
    server.plugins.append(Switching())
    return server
