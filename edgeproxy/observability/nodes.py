"""Every node's view: heartbeats, the node list, and per-color counters summed over nodes.

Each node writes one key, `edgeproxy:node:ID`, every `node.heartbeat_seconds`
and right after each change it applies: its id, address, version, the
generation it serves per app, whether it is stale, and its per-color
counters (requests, 5xx, in flight, and the canary guard's window as a
sparse latency histogram). The key expires after three missed beats, so a
node that stops or dies leaves the list on its own; a clean stop deletes it
(not after a hand-over: the new process beats under the same id).

Reading the keys of the other nodes on each beat gives the summed figures
that the deploy gates (`colors.*.requests`, `errors_5xx`, `p99_ms` in the
AppView) and the canary guard read: the same numbers on every node, so every
guard reaches the same verdict and the compare-and-set lets one trip win.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeproxy import __version__
from edgeproxy.config import Config
from edgeproxy.observability.metrics import Metrics
from edgeproxy.observability.stats import Summary, quantile
from edgeproxy.switching.board import InflightFn, StatsFn
from edgeproxy.switching.shared import SharedState, StoreErrors
from edgeproxy.switching.store_scripts import NODE_PATTERN, app_key, node_key

log = logging.getLogger("edgeproxy.nodes")


@dataclass
class Figures:
    """One node's counters for one (app, color)."""

    requests: int = 0
    errors_5xx: int = 0
    in_flight: int = 0
    tunnels: int = 0
    window_requests: int = 0
    window_errors: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    """Latency bucket (observability.stats.BOUNDS index) → requests in the guard's window."""

    @classmethod
    def parse(cls, raw: Any) -> Figures | None:
        if not isinstance(raw, dict):
            return None
        try:
            hist = {int(k): int(v) for k, v in dict(raw.get("hist") or {}).items()}
            ints = {k: int(raw.get(k, 0)) for k in cls.__dataclass_fields__ if k != "hist"}
        except (TypeError, ValueError):
            return None
        return cls(**ints, hist=hist)

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        self.errors_5xx += other.errors_5xx
        self.in_flight += other.in_flight
        self.tunnels += other.tunnels
        self.window_requests += other.window_requests
        self.window_errors += other.window_errors
        for i, n in other.hist.items():
            self.hist[i] = self.hist.get(i, 0) + n

    def window(self) -> Summary:
        dense = [0] * (max(self.hist) + 1 if self.hist else 0)
        for i, n in self.hist.items():
            dense[i] = n
        p99 = quantile(dense, self.window_requests, 0.99) if self.window_requests else 0.0
        return Summary(self.window_requests, self.window_errors, round(p99 * 1000, 3))


FiguresFn = Callable[[str, str], Figures | None]
"""(app, color) → this node's own counters (None when it counts nothing for them)."""


def no_figures(app: str, color: str) -> Figures | None:
    return None


class NodeRegistry:
    """This node's heartbeat, and what the other nodes' heartbeats say."""

    def __init__(self, shared: SharedState, config: Config) -> None:
        self.shared = shared
        self.board = shared.board
        self.interval = config.node.heartbeat_seconds
        self.ttl_ms = max(1, int(self.interval * 3000))
        self.started = time.time()
        self.figures: FiguresFn = no_figures
        """This node's counters; set by the wiring once metrics exist (`app.py`)."""
        self.peers: dict[str, dict[str, Any]] = {}
        """Node id → the other nodes' last heartbeat records, read on every beat."""
        self._beat_now = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.handed_over = False
        """A new process took over as this node (edgeproxy/handover.py): the key is its own."""

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Listed before the first request is accepted: `switchctl set --wait-nodes` waits
        only for the nodes it finds in the store, so a node that served before its first
        heartbeat could be left out of the wait and still serve the old state."""
        self.board.add_listener(self._changed)
        try:
            await self.beat()
        except StoreErrors as e:
            self.shared.lost(e)  # serves its last state; the heartbeat task retries
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="edgeproxy.nodes.heartbeat"
        )

    def hand_over(self) -> None:
        """A new process serves as this node now and beats under its id: stop beating
        here (the old process's figures would overwrite the new one's) and leave the key
        to it when this process exits."""
        self.handed_over = True
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        """Leave: stop beating and delete this node's key (the others drop it at once),
        unless a new process took over as this node."""
        self.board.remove_listener(self._changed)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.handed_over:
            return
        with contextlib.suppress(*StoreErrors):
            await self.shared.redis.delete(node_key(self.shared.node_id))

    def _changed(self, *_: Any) -> None:
        self._beat_now.set()  # report the new generation now: `--wait-nodes` waits for it

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except StoreErrors as e:
                self.shared.lost(e)
            except Exception:
                log.exception("heartbeat failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._beat_now.wait()
            self._beat_now.clear()

    # --- the heartbeat --------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        shared = self.shared
        counters: dict[str, dict[str, Any]] = {}
        for app, s in self.board.states.items():
            for color in s.colors:
                f = self.figures(app, color)
                if f is not None:
                    counters.setdefault(app, {})[color] = asdict(f)
        return {
            "id": shared.node_id,
            "address": shared.address,
            "version": __version__,
            "pid": os.getpid(),
            "started": self.started,
            "last_seen": time.time(),
            "stale_since": shared.stale_since,
            "generations": {a: s.generation for a, s in sorted(self.board.states.items())},
            "diverged": dict(shared.diverged),
            "counters": counters,
        }

    async def beat(self) -> None:
        redis = self.shared.redis
        await redis.set(node_key(self.shared.node_id), json.dumps(self.record()), px=self.ttl_ms)
        self.peers = {n["id"]: n for n in await self.nodes() if n["id"] != self.shared.node_id}

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's last heartbeat record, by id."""
        redis = self.shared.redis
        keys = sorted([k async for k in redis.scan_iter(match=NODE_PATTERN, count=100)])
        if not keys:
            return []
        out = []
        for raw in await redis.mget(keys):
            if raw is None:
                continue  # expired between the scan and the read
            with contextlib.suppress(TypeError, ValueError):
                record = json.loads(raw)
                if isinstance(record, dict) and isinstance(record.get("id"), str):
                    out.append(record)
        return sorted(out, key=lambda r: str(r["id"]))

    # --- the cluster view (GET /v1/cluster) -------------------------------------------------------

    async def view(self) -> dict[str, Any]:
        shared = self.shared
        out: dict[str, Any] = {
            "backend": shared.url,
            "node": shared.node_id,
            "stale_since": shared.stale_since,
            "error": shared.last_error,
            "diverged": dict(shared.diverged),
        }
        apps = sorted(self.board.states)
        try:
            nodes = await self.nodes()
            async with shared.redis.pipeline(transaction=False) as pipe:
                for app in apps:
                    pipe.hget(app_key(app), "generation")
                gens = await pipe.execute()
            latest = {a: int(g) for a, g in zip(apps, gens, strict=True) if g is not None}
        except StoreErrors as e:
            shared.lost(e)
            out["error"] = shared.last_error
            nodes, latest = [self.record()], dict(shared.latest)
            out["stale_since"] = shared.stale_since
        now = time.time()
        for n in nodes:
            n.pop("counters", None)
            generations = n.get("generations") or {}
            n["lagging"] = sorted(a for a, g in latest.items() if generations.get(a, -1) < g)
            n["self"] = n["id"] == shared.node_id
            n["age"] = round(max(0.0, now - float(n.get("last_seen") or now)), 3)
        out["latest"] = latest
        out["nodes"] = nodes
        out["heartbeat_seconds"] = self.interval
        return out

    # --- figures summed over nodes ------------------------------------------------------------------

    def _peer_figures(self, app: str, color: str) -> Iterator[Figures]:
        for peer in self.peers.values():
            theirs = Figures.parse((peer.get("counters") or {}).get(app, {}).get(color))
            if theirs is not None:
                yield theirs

    def summed(self, app: str, color: str) -> Figures | None:
        """This node's counters plus the others' last published ones (None: nobody counts)."""
        mine = self.figures(app, color)
        total = Figures()
        found = mine is not None
        if mine is not None:
            total.add(mine)
        for theirs in self._peer_figures(app, color):
            total.add(theirs)
            found = True
        return total if found else None

    def summed_stats(self, local: StatsFn) -> StatsFn:
        """The AppView's per-color figures, with requests, errors and window over every node."""

        def stats(app: str, color: str) -> dict[str, Any]:
            out = local(app, color)
            total = self.summed(app, color)
            if total is None:
                return out
            w = total.window()
            return {
                **out,
                "requests": total.requests,
                "errors_5xx": total.errors_5xx,
                "window_requests": w.requests,
                "error_rate": round(w.error_rate, 6),
                "p99_ms": w.p99_ms,
                "nodes_counted": 1 + len(self.peers),
            }

        return stats

    def summed_window(self, app: str, color: str) -> Summary:
        """The canary guard's window over every node."""
        total = self.summed(app, color)
        return Summary(0, 0, 0.0) if total is None else total.window()

    def summed_inflight(self, local: InflightFn) -> InflightFn:
        """In flight on every node: a drain ends when no node serves the color any more."""

        def inflight(app: str, color: str) -> tuple[int, int]:
            requests, tunnels = local(app, color)
            for theirs in self._peer_figures(app, color):
                requests += theirs.in_flight
                tunnels += theirs.tunnels
            return requests, tunnels

        return inflight


def metrics_figures(metrics: Metrics, inflight: InflightFn) -> FiguresFn:
    """This node's counters from its metrics and its in-flight tracker (not summed)."""

    def figures(app: str, color: str) -> Figures | None:
        s = metrics.stats.get((app, color))
        if s is None:
            return None
        w = s.window
        summary = w.summary(metrics.ctx_time())  # drops the slices that left the window
        hist: dict[int, int] = {}
        for piece in w.slices:
            for i, n in enumerate(piece.hist):
                if n:
                    hist[i] = hist.get(i, 0) + n
        requests, tunnels = inflight(app, color)
        return Figures(
            requests=s.requests,
            errors_5xx=s.codes[5],
            in_flight=requests,
            tunnels=tunnels,
            window_requests=summary.requests,
            window_errors=summary.errors,
            hist=hist,
        )

    return figures
