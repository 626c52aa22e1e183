"""Wiring: a Server with its plugins, started in this order before any listener accepts.

1. `Switching`: restore the switch state; the data plane asks the switch decision
   (`switching/decide.py`, which reads `board.states[app]`) per request; the board
   calls back into the data plane for in-flight counts, cutting a drained color,
   health and per-color figures.
2. `Observability`: one round of health checks (a restored color must pass before
   it gets traffic, panic routing aside), then the check loops; metrics, access
   log and canary guard in `ctx.exchange_observers`; the board's `health` and
   `color_stats` hooks.
3. `ControlPlane`: the control socket (and the optional metrics listener), once
   every hook it serves is in place.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgeproxy.config import Config, Upstream
from edgeproxy.control.api import (
    rebind_control_socket,
    start_control_server,
    stop_control_server,
    switch_metrics,
)
from edgeproxy.handover import Counts, Giver, frozen_because, temporary_control_path
from edgeproxy.health.monitor import HealthMonitor
from edgeproxy.health.probe import probe_now
from edgeproxy.listeners import Bound, bind_tcp
from edgeproxy.observability.access_log import AccessLogWriter
from edgeproxy.observability.guard import CanaryGuard
from edgeproxy.observability.listener import metrics_address, start_metrics_listener
from edgeproxy.observability.metrics import Metrics
from edgeproxy.observability.nodes import NodeRegistry, metrics_figures
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.server import Server
from edgeproxy.switching.board import ReloadHealthFn, SwitchBoard, reconcile
from edgeproxy.switching.decide import Picker
from edgeproxy.switching.shared import SharedState
from edgeproxy.switching.state import AppState, weights
from edgeproxy.switching.store import StateStore

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.switch")


class ServerHooks:
    """What the control API asks of the data plane (and of the process, for a hand-over)."""

    def __init__(
        self, server: Server, board: SwitchBoard, obs: Observability, control: ControlPlane
    ) -> None:
        self.server = server
        self.board = board
        self.obs = obs
        self.control = control
        self.giver = Giver(server.config.control.socket, self, server.spawn)

    # -- hand-over (edgeproxy/handover.py): the giving side --------------------------------
    def process_view(self) -> dict[str, Any]:
        return self.server.info.view()

    def handover(self, pid: int, version: str) -> dict[str, Any]:
        return self.giver.begin(pid, version)

    def listeners(self) -> list[tuple[str, str, list[socket.socket]]]:
        return [*self.server.bound, *self.control.listening]

    def states(self) -> Mapping[str, AppState]:
        return self.board.states

    async def freeze(self, handover_id: str) -> None:
        self.board.freeze(frozen_because(handover_id))
        await self.board.stop()  # no drain ends here while the state moves
        if self.obs.guard is not None:
            await self.obs.guard.stop()

    async def thaw(self) -> None:
        self.board.thaw()
        self.board.start()
        if self.obs.guard is not None:
            self.obs.guard.start()

    async def reclaim_control_socket(self) -> None:
        await self.control.reclaim()

    def step_back(self, handover_id: str, to_pid: int) -> None:
        self.server.step_back(handover_id, to_pid)
        if self.obs.switching.nodes is not None:
            self.obs.switching.nodes.hand_over()  # the new process beats as this node now

    def inflight(self) -> Counts:
        return self.server.inflight_all()

    def metrics_text(self) -> str:
        shared = self.obs.switching.shared
        extra = "" if shared is None else shared.metrics_text()
        return switch_metrics(self.board) + extra + self.obs.metrics.render()

    async def cluster_view(self) -> dict[str, Any]:
        nodes = self.obs.switching.nodes
        return {"backend": None} if nodes is None else await nodes.view()

    async def reload_certs(self) -> dict[str, Any]:
        return await self.server.reload_certs()

    async def reload_config(self, *, force: bool = False) -> dict[str, Any]:
        return await self.server.reload_config(force=force)

    def certs_view(self) -> dict[str, Any]:
        return {
            "certificates": self.server.certs.views(),
            "last_error": self.server.certs.last_error,
        }

    def health_view(self) -> dict[str, Any]:
        return self.obs.health.view()


class Switching:
    """Plugin: restore the switch state and react to its changes."""

    def __init__(self) -> None:
        self.board: SwitchBoard | None = None
        self.shared: SharedState | None = None
        self.nodes: NodeRegistry | None = None
        """With `state_backend`: the shared store and the node registry (docs/scaling.md)."""

    async def start(self, server: Server) -> None:
        config = server.config
        ctx = server.ctx
        board = SwitchBoard.load(
            config,
            StateStore(config.state_file),
            inflight=server.inflight,
            cut=ctx.tracker.cut,
        )
        self.board = board
        if server.taker is not None:
            self._adopt(board, config, server.taker.states)
        ctx.picker = Picker(config, board, ctx)
        board.add_listener(self._on_change(server))
        if config.state_backend is not None:
            self.shared = SharedState(config, board)
            await self.shared.start()  # catch up with the store before any listener accepts
            self.nodes = NodeRegistry(self.shared, config)
            board.inflight = self.nodes.summed_inflight(ctx.tracker.counts)
            await self.nodes.start()
        board.start()
        for app, state in board.states.items():
            log.info("app %s: %s", app, state.summary())

    @staticmethod
    def _adopt(board: SwitchBoard, config: Config, handed: dict[str, AppState]) -> None:
        """Taking over: the running process's switch state exactly (fitted to our config)."""
        states, warnings = reconcile(config, handed, time.time())
        for w in warnings:
            log.warning("hand-over: %s", w)
        if states != board.states:
            board.store.save(states)
        board.states = states

    async def reconfigure(
        self, server: Server, config: Config, ctx: ProxyContext, *, force: bool = False
    ) -> dict[str, Any]:
        """A config reload: fit the switch states to the new apps and colors.

        Through the board's one locked path (refused while it would drop a color
        in use unless forced; health-checked; persisted; generations go up).
        Raises ConfigError before anything changed.
        """
        board = self.board
        assert board is not None
        changes = await board.reconfigure(
            config, force=force, health=self._reload_health(board, config)
        )
        ctx.picker = Picker(config, board, ctx)
        # The board's data-plane hooks point at the tracker, which the new context shares.
        return {
            "switch": {
                app: {
                    "old": None if old is None else old.summary(),
                    "new": None if new is None else new.summary(),
                }
                for app, (old, new) in sorted(changes.items())
            }
        }

    @staticmethod
    def _reload_health(board: SwitchBoard, config: Config) -> ReloadHealthFn:
        """Health under the new config: the running checks' verdict where they cover the
        color as configured now, else one check of each of its upstreams right away."""
        running = board.config

        async def health(app: str, color: str) -> tuple[bool, list[str]]:
            spec, before = config.apps[app], running.apps.get(app)
            urls = spec.colors[color].upstreams
            if (
                before is not None
                and color in before.colors
                and before.colors[color].upstreams == urls
                and before.health == spec.health
            ):
                return board.health(app, color)
            return await probe_now([Upstream.parse(u).url for u in urls], spec.health)

        return health

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
        if self.nodes is not None:
            await self.nodes.stop()
        if self.shared is not None:
            await self.shared.stop()
        if self.board is not None:
            await self.board.stop()


class Observability:
    """Plugin: health checks, metrics, access log and canary guard, hooked into board and proxy."""

    def __init__(self, switching: Switching) -> None:
        self.switching = switching
        self._health: HealthMonitor | None = None
        self._metrics: Metrics | None = None
        self.access_log: AccessLogWriter | None = None
        self.guard: CanaryGuard | None = None

    @property
    def health(self) -> HealthMonitor:
        assert self._health is not None, "Observability is not started"
        return self._health

    @property
    def metrics(self) -> Metrics:
        assert self._metrics is not None, "Observability is not started"
        return self._metrics

    async def start(self, server: Server) -> None:
        await self._build(server, server.config, server.ctx)
        sni = server.certs.dispatch.sni_callback
        if sni is not None:
            # Count ClientHellos (the callback runs for each, with or without SNI).
            def counting_sni(*args: Any) -> Any:
                self.metrics.count_hello()  # the current Metrics, across config reloads
                return sni(*args)

            server.certs.dispatch.sni_callback = counting_sni

    async def reconfigure(
        self, server: Server, config: Config, ctx: ProxyContext, *, force: bool = False
    ) -> None:
        """A config reload: checks, metrics and guard for the new apps and upstreams.

        The new health monitor judges every upstream once before the new context
        takes requests; counters restart (Prometheus handles counter resets).
        """
        await self.stop()
        await self._build(server, config, ctx)

    async def _build(self, server: Server, config: Config, ctx: ProxyContext) -> None:
        board = self.switching.board
        assert board is not None, "Switching must start before Observability"
        self.access_log = None
        if config.access_log.enabled:  # first: the one step here that may refuse to start
            self.access_log = AccessLogWriter(config.access_log)
            self.access_log.open()
        self._health = health = HealthMonitor(config, ctx)
        await health.start()
        board.health = health.health
        self._metrics = metrics = Metrics(
            config, ctx, board=board, health=health, certs=server.certs
        )
        self.guard = CanaryGuard(config, board, metrics)
        metrics.guard_trips = self.guard.trips
        self.guard.start()

        def color_stats(app: str, color: str) -> dict[str, Any]:
            return {**metrics.color_stats(app, color), **health.color_view(app, color)}

        board.color_stats = color_stats
        nodes = self.switching.nodes
        if nodes is not None:  # gates and guard read the figures of every node
            nodes.figures = metrics_figures(metrics, ctx.tracker.counts)
            board.color_stats = nodes.summed_stats(color_stats)
            self.guard.window = nodes.summed_window
        ctx.exchange_observers = self._observers(config)

    def _observers(self, config: Config) -> list[Callable[[Exchange], None]]:
        """What runs for every finished exchange: bound methods of compiled classes, no wrapper."""
        observers: list[Callable[[Exchange], None]] = []
        if config.metrics.enabled:
            observers.append(self.metrics.observe)
        observers.append(self.health.observe)
        if self.access_log is not None:
            observers.append(self.access_log.write)
        return observers

    def reopen_logs(self) -> None:
        if self.access_log is not None:
            self.access_log.reopen()

    async def stop(self) -> None:
        if self.guard is not None:
            await self.guard.stop()
        if self._health is not None:
            await self._health.stop()
        if self.access_log is not None:
            self.access_log.close()


class ControlPlane:
    """Plugin: the control socket and the optional metrics listener, started last.

    A process taking over binds its control socket at a temporary path and moves
    it into place (`commit_takeover`) only once the old process says go.
    """

    def __init__(self, switching: Switching, obs: Observability) -> None:
        self.switching = switching
        self.obs = obs
        self.runners: list[web.AppRunner] = []
        self.hooks: ServerHooks | None = None
        self.listening: list[tuple[str, str, list[socket.socket]]] = []
        """The metrics listener's sockets (handed over with the proxy's)."""
        self.pending: Path | None = None
        """The temporary control socket of a process taking over, until it goes live."""

    async def start(self, server: Server) -> None:
        board = self.switching.board
        assert board is not None
        self.hooks = hooks = ServerHooks(server, board, self.obs, self)
        control = server.config.control
        if server.taker is not None:
            self.pending = temporary_control_path(control.socket, server.taker.id)
        self.runners.append(await start_control_server(control, board, hooks, bind_at=self.pending))
        listen = control.metrics_listen
        if listen:
            taker = server.taker
            socks = None if taker is None else taker.take_sockets("metrics", listen)
            if socks is None:
                socks = bind_tcp("control.metrics_listen", listen, *metrics_address(listen))
            self.listening = [("metrics", listen, socks)]
            self.runners.append(await start_metrics_listener(listen, hooks.metrics_text, socks))

    async def commit_takeover(self, server: Server) -> None:
        """Move the control socket bound at the temporary path over the configured one."""
        if self.pending is not None:
            os.replace(self.pending, server.config.control.socket)
            self.pending = None

    async def reclaim(self) -> None:
        if self.runners:
            await rebind_control_socket(self.runners[0])

    async def stop(self) -> None:
        if self.hooks is not None:
            self.hooks.giver.close()
        if self.pending is not None:
            self.pending.unlink(missing_ok=True)
        runners, self.runners = self.runners, []
        for runner in reversed(runners):
            if runner is runners[0]:
                await stop_control_server(runner)
            else:
                await runner.cleanup()


def build_server(
    config: Config, config_path: Path | None = None, bound: Bound | None = None
) -> Server:
    server = Server(config, config_path=config_path, bound=bound)
    switching = Switching()
    obs = Observability(switching)
    server.plugins += [switching, obs, ControlPlane(switching, obs)]
    return server
