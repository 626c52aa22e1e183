"""Several edge nodes, one switch state: the board's shared store in Redis.

With `state_backend: redis://HOST:PORT/DB` every change the board makes
(`set`, `promote`, `rollback`, `drain`, `pause`, guard trips, reload refits)
must first pass `SharedState.commit`: one Lua script (`store_scripts.COMMIT`)
that compares each app's stored generation with the one the change was
computed from and writes and publishes all of them, or nothing. Only then
does the board persist the new state to its local file and swap it in. A
change committed by another node arrives on the `edgeproxy:changes` channel
and is applied through `SwitchBoard.adopt`; a re-read every
`node.resync_seconds` catches a missed message.

When the store cannot be reached the node keeps serving its last applied
state (the local state file holds it across restarts), never flips on its
own, refuses changes (`StoreUnavailable`, HTTP 503, switchctl exit 5) and
reports itself stale since the first failure; once the store answers again
it re-reads every app and catches up. Nothing here runs on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from edgeproxy.config import Config
from edgeproxy.errors import EdgeproxyError, SwitchError
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.state import AppState, StateFormatError, from_json, to_json, weights
from edgeproxy.switching.store_scripts import CHANNEL, COMMIT, SEED, app_key

log = logging.getLogger("edgeproxy.shared")

StoreErrors = (RedisError, OSError)


class StoreUnavailable(EdgeproxyError):
    """The shared store cannot be reached: nothing was changed (HTTP 503)."""

    status = 503


class StateConflict(SwitchError):
    """Another change was committed first: nothing was changed (HTTP 409)."""

    status = 409


def encode(state: AppState) -> str:
    """One app's record, in the state file's JSON form (its fields are declared once there)."""
    return to_json({state.app: state})


def decode(app: str, text: str) -> AppState:
    states = from_json(text)
    if app not in states:
        raise StateFormatError(f"the stored record holds no state for {app!r}")
    return states[app]


def _message(state: AppState, text: str) -> str:
    return json.dumps({"app": state.app, "generation": state.generation, "state": text})


def _clock_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def node_identity(config: Config) -> tuple[str, str]:
    """(node id, address) from `node:`, defaulting to the host name."""
    host = socket.gethostname()
    return config.node.id or host, config.node.address or host


class SharedState:
    """The board's `StateBackend` in Redis, with the tasks that keep this node in step."""

    def __init__(self, config: Config, board: SwitchBoard) -> None:
        assert config.state_backend is not None
        self.url = config.state_backend
        self.board = board
        self.node_id, self.address = node_identity(config)
        node = config.node
        self.resync_seconds = node.resync_seconds
        timeout = node.store_timeout_seconds
        # No retries inside redis-py: a refused change must answer within one timeout.
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self.redis = aioredis.Redis.from_url(self.url, socket_timeout=timeout, **common)
        # The subscriber waits for messages, so no read timeout; pings find a dead peer.
        self.listen_redis = aioredis.Redis.from_url(
            self.url, health_check_interval=max(1, int(node.resync_seconds * 2)), **common
        )
        self._commit = self.redis.register_script(COMMIT)
        self._seed = self.redis.register_script(SEED)
        self.stale_since: float | None = None
        """When the store stopped answering (None while this node is in step)."""
        self.last_error: str | None = None
        self.latest: dict[str, int] = {}
        """App → the store's generation, as last read or received."""
        self.diverged: dict[str, str] = {}
        """App → why the store's latest state was not applied here (a config mismatch)."""
        self._subscribed = False
        self._resync_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Catch up with the store (or start stale on the local state), then follow it."""
        self.board.backend = self
        self.board.add_listener(self._cut_after_deadline)
        try:
            await self.resync()
            log.info("shared switch state %s: node %s in step", self.url, self.node_id)
        except StoreErrors as e:
            self.lost(e)
        self._spawn(self._follow(), "edgeproxy.shared.follow")
        self._spawn(self._resync_loop(), "edgeproxy.shared.resync")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.board.backend is self:
            self.board.backend = None
        self.board.remove_listener(self._cut_after_deadline)
        for client in (self.redis, self.listen_redis):
            with contextlib.suppress(*StoreErrors):
                await client.aclose()

    # --- the board's seam ----------------------------------------------------------------------

    async def commit(
        self, changes: Mapping[str, tuple[AppState, AppState]], *, reload: bool = False
    ) -> Mapping[str, AppState]:
        """Compare-and-set every app's generation and write them, in one script.

        A config reload first takes what another node's reload of the same
        colors committed (its nodes run the same config): the refit is done once.
        """
        held: dict[str, AppState] = {}
        if reload and changes:
            held = await self._refitted_elsewhere(changes)
            for app in held:
                self.diverged.pop(app, None)
        changes = {a: c for a, c in changes.items() if a not in held}
        if not changes:
            return held
        apps = sorted(changes)
        keys: list[str] = []
        args: list[str] = [CHANNEL, self.node_id, repr(time.time())]
        for app in apps:
            old, new = changes[app]
            text = encode(new)
            keys.append(app_key(app))
            args += [str(old.generation), str(new.generation), text, _message(new, text)]
        try:
            reply = await self._commit(keys=keys, args=args)
        except StoreErrors as e:
            self.lost(e)
            raise StoreUnavailable(self.refusal()) from e
        if int(reply[0]) == 1:
            for app in apps:
                self.latest[app] = changes[app][1].generation
                self.diverged.pop(app, None)
            return {**held, **{app: changes[app][1] for app in apps}}
        index, current, by, at = int(reply[1]) - 1, int(reply[2]), str(reply[3]), str(reply[4])
        app = apps[index]
        self._resync_now.set()  # catch up with what won at once
        if current < 0:
            what = "the shared store holds no state for it yet (this node is seeding it)"
        else:
            when = f" at {_clock_time(float(at))}" if at else ""
            what = f"generation {current} was committed first by node {by or '?'}{when}"
        raise StateConflict(
            f"cannot change {app}: {what}, and this node was on generation "
            f"{changes[app][0].generation}; nothing was changed. This node is catching up now: "
            f"check `switchctl --app {app} status`, then run the command again if it still "
            "applies"
        )

    async def _refitted_elsewhere(
        self, changes: Mapping[str, tuple[AppState, AppState]]
    ) -> dict[str, AppState]:
        """Apps whose stored state is newer than this node's and has the reload's colors."""
        apps = sorted(changes)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for app in apps:
                    pipe.hmget(app_key(app), "generation", "state")
                rows = await pipe.execute()
        except StoreErrors as e:
            self.lost(e)
            raise StoreUnavailable(self.refusal()) from e
        out: dict[str, AppState] = {}
        for app, (generation, text) in zip(apps, rows, strict=True):
            old, new = changes[app]
            if generation is None or int(generation) <= old.generation:
                continue
            with contextlib.suppress(StateFormatError):
                stored = decode(app, str(text))
                if stored.colors == new.colors:
                    out[app] = stored
        return out

    def refusal(self) -> str:
        since = _clock_time(self.stale_since or time.time())
        gens = ", ".join(f"{a} {s.generation}" for a, s in sorted(self.board.states.items()))
        return (
            f"cannot change the switch state: the shared store {self.url} is unreachable "
            f"({self.last_error}); nothing was changed. This node keeps serving its last "
            f"applied state (generation {gens or '-'}), stale since {since}, and refuses changes "
            f"until the store answers: check Redis (`redis-cli -u {self.url} ping`)"
        )

    def _cut_after_deadline(self, app: str, old: AppState, new: AppState) -> None:
        """A drain another node ended at its deadline: cut what this node still serves of it."""
        now = time.time()
        for color, deadline in old.draining.items():
            if color not in new.draining and now >= deadline and not weights(new).get(color):
                self.board.cut(app, color)

    # --- following the store -------------------------------------------------------------------

    async def resync(self) -> None:
        """Re-read every app: take a newer stored state; seed one the store lacks."""
        apps = sorted(self.board.states)
        async with self.redis.pipeline(transaction=False) as pipe:
            for app in apps:
                pipe.hmget(app_key(app), "generation", "state")
            rows = await pipe.execute()
        for app, (generation, text) in zip(apps, rows, strict=True):
            local = self.board.states.get(app)
            if local is None:
                continue
            if generation is None or int(generation) < local.generation:
                mine = encode(local)
                reply = await self._seed(
                    keys=[app_key(app)],
                    args=[
                        str(local.generation),
                        mine,
                        self.node_id,
                        repr(time.time()),
                        _message(local, mine),
                        CHANNEL,
                    ],
                )
                if int(reply[0]) == 1:
                    held = "no state" if generation is None else f"generation {generation}"
                    log.warning(
                        "%s: the shared store held %s; wrote this node's generation %d",
                        app,
                        held,
                        local.generation,
                    )
                generation, text = reply[1], reply[2]
            await self._take(app, int(generation), str(text))

    async def _take(self, app: str, generation: int, text: str) -> None:
        """Apply the store's state of `app` when it is newer than this node's."""
        self.latest[app] = max(generation, self.latest.get(app, -1))
        current = self.board.states.get(app)
        if current is None or generation <= current.generation:
            if current is not None:
                self.diverged.pop(app, None)  # e.g. a reload took the store's state since
            return
        spec = self.board.config.apps.get(app)
        try:
            state = decode(app, text)
        except StateFormatError as e:
            self._diverge(app, f"generation {generation} in the store cannot be read: {e}")
            return
        if spec is None or tuple(spec.colors) != state.colors:
            self._diverge(
                app,
                f"generation {generation} names the colors {list(state.colors)} and this "
                f"node's config has {list(spec.colors) if spec else 'none'}: give every node "
                "the same config and reload it",
            )
            return
        self.diverged.pop(app, None)
        await self.board.adopt(app, state)

    def _diverge(self, app: str, why: str) -> None:
        if self.diverged.get(app) != why:
            log.error("%s: not applying the shared state: %s", app, why)
        self.diverged[app] = why

    async def _follow(self) -> None:
        """Apply every published change; on a lost connection, reconnect and re-read."""
        backoff = 0.05
        while True:
            pubsub = self.listen_redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self._subscribed = True
                self._resync_now.set()  # what was published while unsubscribed
                backoff = 0.05
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        await self._on_message(msg.get("data"))
            except StoreErrors as e:
                self._subscribed = False
                self.lost(e)
            finally:
                with contextlib.suppress(*StoreErrors):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py lacks the hint
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.resync_seconds)

    async def _on_message(self, data: Any) -> None:
        try:
            msg = json.loads(data)
            app, generation, text = str(msg["app"]), int(msg["generation"]), str(msg["state"])
        except (TypeError, ValueError, KeyError) as e:
            log.error("ignoring a malformed message on %s: %s", CHANNEL, e)
            return
        await self._take(app, generation, text)

    async def _resync_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.resync_seconds):
                    await self._resync_now.wait()
            self._resync_now.clear()
            try:
                await self.resync()
            except StoreErrors as e:
                self.lost(e)
                continue
            except Exception:
                log.exception("re-reading the shared switch state failed")
                continue
            if self._subscribed:
                self._caught_up()

    def lost(self, error: BaseException) -> None:
        self.last_error = str(error) or type(error).__name__
        if self.stale_since is None:
            self.stale_since = time.time()
            log.error(
                "shared store %s unreachable (%s): serving the last applied state, "
                "refusing changes until it is back",
                self.url,
                self.last_error,
            )

    def _caught_up(self) -> None:
        if self.stale_since is not None:
            log.warning(
                "shared store %s reachable again after %.1fs: caught up",
                self.url,
                time.time() - self.stale_since,
            )
        self.stale_since = None
        self.last_error = None

    # --- reporting ------------------------------------------------------------------------------

    def metrics_text(self) -> str:
        stale = self.stale_since
        lines = [
            "# HELP edgeproxy_state_backend_up 1 while this node is in step with the shared store.",
            "# TYPE edgeproxy_state_backend_up gauge",
            f"edgeproxy_state_backend_up {int(stale is None)}",
            "# HELP edgeproxy_state_backend_stale_since_seconds Unix time since when this node "
            "could not reach the shared store (0: in step).",
            "# TYPE edgeproxy_state_backend_stale_since_seconds gauge",
            f"edgeproxy_state_backend_stale_since_seconds {stale or 0}",
            "# HELP edgeproxy_state_backend_generation The shared store's generation per app, "
            "as last seen by this node.",
            "# TYPE edgeproxy_state_backend_generation gauge",
        ]
        for app, generation in sorted(self.latest.items()):
            lines.append(f'edgeproxy_state_backend_generation{{app="{app}"}} {generation}')
        return "\n".join(lines) + "\n"
