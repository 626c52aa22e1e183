"""The runtime holder of every app's switch state.

The switch decision (`decide.py`) reads `board.states[app]` on every request (a
plain dict lookup). Every change, a verb or a config reload, takes one path,
`SwitchBoard._apply`, under one lock: compute the new states (pure, `state.py`:
each changed app's generation goes up) → check the health of any color whose
share grows → persist (`store.py`; if that fails, nothing changes) → swap the
`states` dict → notify listeners.

A drain supervisor task finishes drains: as soon as a draining color has
nothing in flight, or, at its deadline, after cutting what is left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from edgeproxy.config import Config
from edgeproxy.errors import ConfigError, NotFoundError, SwitchError, UnhealthyTarget
from edgeproxy.switching import state as sw
from edgeproxy.switching.state import AppState
from edgeproxy.switching.store import CorruptStateFile, StateFileError, Store

log = logging.getLogger("edgeproxy.state")

HealthFn = Callable[[str, str], tuple[bool, list[str]]]
"""(app, color) → (healthy?, descriptions of the failing checks)."""
InflightFn = Callable[[str, str], tuple[int, int]]
"""(app, color) → (requests in flight, open tunnels)."""
CutFn = Callable[[str, str], None]
"""(app, color): a drain deadline passed; close what the color is still serving."""
StatsFn = Callable[[str, str], dict[str, Any]]
"""(app, color) → extra per-color figures for the view (requests, error_rate, p99_ms, …)."""
Listener = Callable[[str, AppState, AppState], None]
"""(app, old, new), called after every change."""


class ChangesFrozen(StateFileError):
    """A change while the board is frozen (a hand-over moves the state to a new
    process): nothing changed; the message says when to retry."""

    status = 503


class StateBackend(Protocol):
    """A store shared with other edge nodes (`switching/shared.py`); None: this node alone.

    The board calls `commit` inside its one locked change path, after the new
    states are computed and checked and before anything is persisted or
    swapped: if it raises, nothing changed here. States that other nodes
    committed come back through `SwitchBoard.adopt`.
    """

    async def commit(
        self, changes: Mapping[str, tuple[AppState, AppState]], *, reload: bool = False
    ) -> Mapping[str, AppState]:
        """Make (old → new) of every app the shared state at once, or raise (nothing changed).

        Returns the state to serve per app: `new`, or, for a config reload
        (`reload`), the state another node's reload of the same colors
        already committed.
        """
        ...


def no_health_checks(app: str, color: str) -> tuple[bool, list[str]]:
    return True, []


def nothing_in_flight(app: str, color: str) -> tuple[int, int]:
    return 0, 0


def nothing_to_cut(app: str, color: str) -> None:
    return None


def no_stats(app: str, color: str) -> dict[str, Any]:
    return {}


def reconcile(
    config: Config, restored: Mapping[str, AppState], now: float
) -> tuple[dict[str, AppState], list[str]]:
    """Fit saved states to the configured apps and colors (`state.refit`); say what was dropped."""
    warnings = [
        f"dropping the saved state of app {name!r}: it is no longer in the config"
        for name in restored
        if name not in config.apps
    ]
    states: dict[str, AppState] = {}
    for name, app in config.apps.items():
        colors = tuple(app.colors)
        old = restored.get(name)
        if old is None:
            states[name] = sw.initial(
                name, colors, app.first_color, now, released=app.first_release == "serve"
            )
            continue
        states[name] = new = sw.refit(old, colors, app.first_color, now)
        if old.active != new.active:
            warnings.append(
                f"{name}: saved active color {old.active!r} is no longer configured; "
                f"starting on {new.active!r}"
            )
        gone = {old.candidate, old.previous, *old.draining} - set(colors) - {None, old.active}
        if gone:
            warnings.append(
                f"{name}: dropping saved references to colors no longer configured: "
                + ", ".join(sorted(c for c in gone if c is not None))
            )
    return states, warnings


def refusals(config: Config, states: Mapping[str, AppState]) -> list[str]:
    """Why a config reload must not go through unless forced: it drops a color in use."""
    problems = []
    for name, s in states.items():
        app = config.apps.get(name)
        if app is None:
            continue  # the whole app leaves the config (its routes with it)
        fallback = app.first_color
        for color, role in sw.lost_roles(s, tuple(app.colors)):
            if role == "active":
                what = f"which is active for app {name}"
                todo = f"`switchctl --app {name} set {fallback}` first"
            elif role == "candidate":
                what = f"the canary candidate of app {name} ({s.weight}%)"
                todo = f"`switchctl --app {name} set {s.active}` first (ends the canary)"
            else:
                what = f"which is draining for app {name}"
                todo = f"wait until its drain ends (`switchctl --app {name} status`)"
            problems.append(
                f"config reload would drop {color}, {what}: {todo}, or reload with --force"
            )
    return problems


Change = tuple[AppState | None, AppState | None]
"""(old, new) state of an app across a config reload; None where it is not configured."""
ReloadHealthFn = Callable[[str, str], Awaitable[tuple[bool, list[str]]]]
"""(app, color) → (healthy?, failing checks) under the config being loaded."""
Transition = Callable[[Mapping[str, AppState], float], dict[str, AppState]]
"""(every app's state, now) → every app's new state (pure; raises to refuse)."""
Check = Callable[[dict[str, Change]], Awaitable[None]]
"""Raises to refuse a change (e.g. a color whose share grows is unhealthy)."""


def _grown(old: AppState, new: AppState) -> list[str]:
    """The colors whose share of new requests is larger in `new` than in `old`."""
    before, after = sw.weights(old), sw.weights(new)
    return [c for c in new.colors if after[c] > before.get(c, 0)]


def _unhealthy(
    doing: str, color: str, failing: list[str], todo: str = "use --force to switch anyway"
) -> str:
    return (
        f"cannot {doing}: {color} is unhealthy "
        f"({'; '.join(failing) or 'no passing health check yet'}); fix it, or {todo}"
    )


class SwitchBoard:
    def __init__(
        self,
        config: Config,
        store: Store,
        states: dict[str, AppState],
        *,
        health: HealthFn = no_health_checks,
        inflight: InflightFn = nothing_in_flight,
        cut: CutFn = nothing_to_cut,
        color_stats: StatsFn = no_stats,
        clock: Callable[[], float] = time.time,
        drain_poll: float = 0.1,
    ) -> None:
        self.config = config
        self.store = store
        self.states = states
        # Injected by the data plane (they may be replaced after construction).
        self.health = health
        self.inflight = inflight
        self.cut = cut
        self.color_stats = color_stats
        self.clock = clock
        self.drain_poll = drain_poll
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._waiters: dict[str, collections.deque[asyncio.Future[None]]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._replaced: dict[str, AppState] = {}
        self.backend: StateBackend | None = None
        self.frozen: str | None = None
        """Why every change is refused now (`freeze`), or None."""
        """The shared store every change must pass first (None: the state file alone)."""
        self.set_aside: dict[str, list[str]] = {}
        """App → what of its saved state could not be used at boot (see `load`)."""
        self.set_aside_copy: Path | None = None
        """The copy of the state file as it was when something was set aside."""

    @classmethod
    def load(cls, config: Config, store: Store, **kwargs: Any) -> SwitchBoard:
        """Restore the saved state app by app; set aside (and report) what cannot be used.

        Every app whose saved record is valid keeps its state. What cannot be
        used (a whole record, a part of one, a color the config lacks) is logged
        per app, listed in the app's view (`set_aside`) and counted by the
        `edgeproxy_state_records_rejected` metric until the next restart; the
        file as it was is kept beside it (`state.json.rejected-<time>`, or
        `.corrupt-<time>` when it could not be read at all).
        """
        now = time.time()
        set_aside: dict[str, list[str]] = {}
        copy: Path | None = None
        try:
            restored = store.restore()
        except CorruptStateFile as e:
            copy = store.quarantine(now)
            log.error("%s; moved it aside to %s", e, copy or "(could not move it)")
            restored = None
            set_aside = {
                name: [f"the state file could not be read ({e}); started on {app.first_color}"]
                for name, app in config.apps.items()
            }
        saved = {} if restored is None else restored.states
        states, warnings = reconcile(config, saved, now)
        for w in warnings:
            log.warning("%s", w)
        if restored is not None:
            for name, app in config.apps.items():
                notes = [*restored.problems, *restored.set_aside.get(name, [])]
                old = saved.get(name)
                if old is not None:
                    notes += [
                        f"saved {role} color {color!r} is not in the config "
                        f"(now: {states[name].summary()})"
                        for color, role in sw.lost_roles(old, tuple(app.colors))
                    ]
                elif name in restored.set_aside:
                    notes[-1] += f"; started on {app.first_color}"
                    generation = restored.generations.get(name)
                    if generation is not None:  # the generation never goes down
                        states[name] = replace(states[name], generation=generation + 1)
                if notes:
                    set_aside[name] = notes
            if any(restored.set_aside.get(n) for n in config.apps) or restored.problems:
                copy = store.keep_copy(now)
        for name, notes in set_aside.items():
            for note in notes:
                log.error("state file %s: app %s: %s", store.where, name, note)
        if copy is not None and restored is not None:
            log.error("state file %s: kept a copy as it was at %s", store.where, copy)
        if saved != states:
            try:
                store.save(states)
            except StateFileError as e:
                log.error("%s; switching will fail until this is fixed", e)
        board = cls(config, store, states, **kwargs)
        board.set_aside, board.set_aside_copy = set_aside, copy
        return board

    # --- reading -------------------------------------------------------------------------

    def get(self, app: str) -> AppState:
        try:
            return self.states[app]
        except KeyError:
            raise NotFoundError(
                f"unknown app {app!r} (apps: {', '.join(self.states) or 'none configured'})"
            ) from None

    def view(self, app: str) -> dict[str, Any]:
        """The AppView of docs/control-api.md."""
        s = self.get(app)
        shares = sw.weights(s)
        colors: dict[str, Any] = {}
        for c in s.colors:
            healthy, failing = self.health(app, c)
            requests, tunnels = self.inflight(app, c)
            colors[c] = {
                "weight": shares[c],
                "in_flight": requests,
                "tunnels": tunnels,
                "healthy": healthy,
                "failing_checks": failing,
                **self.color_stats(app, c),
            }
        return {
            "app": app,
            **sw.record(s),  # every saved field, as in the state file; then what the view adds
            "weights": shares,
            "draining": {c: {"deadline": d} for c, d in s.draining.items()},
            "set_aside": self.set_aside.get(app, []),
            "set_aside_copy": None if self.set_aside_copy is None else str(self.set_aside_copy),
            "colors": colors,
        }

    def replaced(self, app: str) -> AppState | None:
        """The state that `app`'s latest change replaced.

        Read it right after awaiting a change (no other task runs in between)
        to know exactly what that change did, even under concurrent requests.
        """
        return self._replaced.get(app)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    async def wait_unpaused(self, app: str, timeout: float) -> bool:  # noqa: ASYNC109 - the data plane's API
        """Wait while `app` is paused; released in arrival order. False on timeout."""
        s = self.states.get(app)
        if s is None or not s.paused:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiters.setdefault(app, collections.deque())
        # Waiters that gave up stay queued (cancelled) and are dropped from the
        # front here or skipped on resume: removing each from the middle would
        # cost O(n) per timeout when thousands of requests give up together.
        while queue and queue[0].done():
            queue.popleft()
        queue.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
            return True
        except TimeoutError:
            return False
        finally:
            if not fut.done():
                fut.cancel()

    # --- changes -------------------------------------------------------------------------

    async def set(self, app: str, color: str, weight: int, *, force: bool = False) -> AppState:
        return await self._change(
            app, "set", lambda s, now: sw.set_color(s, color, weight, now), force
        )

    async def promote(self, app: str, *, force: bool = False) -> AppState:
        return await self._change(app, "promote", sw.promote, force)

    async def rollback(self, app: str, *, force: bool = False) -> AppState:
        return await self._change(app, "roll back", sw.rollback, force)

    async def drain(self, app: str, color: str, seconds: float | None = None) -> AppState:
        """Drain `color`; cut what is left after `seconds` (default: the app's drain_timeout)."""
        self.get(app)
        if seconds is None:
            seconds = self.config.apps[app].drain_timeout
        s = await self._change(
            app, "drain", lambda s, now: sw.drain(s, color, now + seconds, now), False
        )
        self._wake.set()
        return s

    async def finish_drain(self, app: str, color: str) -> AppState:
        return await self._change(
            app, "finish draining", lambda s, now: sw.finish_drain(s, color, now), False
        )

    async def pause(self, app: str) -> AppState:
        return await self._change(app, "pause", sw.pause, False)

    def freeze(self, why: str) -> None:
        """Refuse every change (ChangesFrozen, 503, saying `why`) until `thaw`."""
        self.frozen = why

    def thaw(self) -> None:
        self.frozen = None

    async def resume(self, app: str) -> AppState:
        new = await self._change(app, "resume", sw.resume, False)
        self._release_waiters(app)
        return new

    def _release_waiters(self, app: str) -> None:
        queue = self._waiters.get(app, collections.deque())
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(None)

    async def guard_trip(self, app: str, reason: str) -> AppState:
        return await self._change(
            app, "trip the guard", lambda s, now: sw.guard_trip(s, reason, now), True
        )

    async def reconfigure(
        self, config: Config, *, force: bool = False, health: ReloadHealthFn | None = None
    ) -> dict[str, Change]:
        """A config reload: fit every app's state to the new apps and colors.

        The same path as a switch (`_apply`): a reload that would drop a color in
        use (active, candidate, draining) is refused with ConfigError unless
        forced; a forced one is refused too while a color whose share grows is
        unhealthy (`health`: verdicts under the new config); then persist → swap
        → notify. Generations only go up (`state.refit`). Returns the apps whose
        state changed, with their old and new states.
        """
        warnings: list[str] = []

        def fit(states: Mapping[str, AppState], now: float) -> dict[str, AppState]:
            if not force:
                problems = refusals(config, states)
                if problems:
                    raise ConfigError(problems)
            new, notes = reconcile(config, states, now)
            warnings.extend(notes)
            return new

        async def healthy(changes: dict[str, Change]) -> None:
            for name, (old, new) in sorted(changes.items()):
                if old is None or new is None:
                    continue
                for color in _grown(old, new):
                    if health is None:
                        ok, failing = self.health(name, color)
                    else:
                        ok, failing = await health(name, color)
                    if not ok:
                        todo = (
                            f"switch it by hand first (`switchctl --app {name} set COLOR "
                            "--force`), then reload"
                        )
                        doing = f"reload the config for {name}"
                        raise ConfigError([_unhealthy(doing, color, failing, todo)])

        changes = await self._apply(fit, healthy, config)
        for w in warnings:
            log.warning("%s", w)
        return changes

    async def _change(
        self, app: str, verb: str, transition: Callable[[AppState, float], AppState], force: bool
    ) -> AppState:
        """One app's transition through `_apply`; unless forced, a color whose share
        grows must be healthy (UnhealthyTarget names the failing checks)."""

        def step(states: Mapping[str, AppState], now: float) -> dict[str, AppState]:
            return {**states, app: transition(self.get(app), now)}

        async def healthy(changes: dict[str, Change]) -> None:
            for old, new in changes.values():
                if old is not None and new is not None:
                    self._check_health(verb, old, new)

        await self._apply(step, None if force else healthy)
        return self.get(app)  # the new state: no other task ran since the swap

    async def _apply(
        self, transition: Transition, check: Check | None = None, config: Config | None = None
    ) -> dict[str, Change]:
        """The one path every change of the switch states takes, under one lock.

        `transition` computes every app's new state from the current ones (pure;
        it raises to refuse) → `check` may refuse what changed (health) →
        persist (`store.save`; if it fails, nothing changes) → swap `states` (and
        `config`, for a reload) → notify the listeners of each app that changed.
        Returns {app: (old, new)} for the apps whose state changed.
        """
        async with self._lock:
            old_states = self.states
            states = transition(old_states, self.clock())
            changes: dict[str, Change] = {
                name: (old_states.get(name), states.get(name))
                for name in {*old_states, *states}
                if old_states.get(name) is not states.get(name)
            }
            if check is not None:
                await check(changes)
            if changes and self.frozen is not None:
                raise ChangesFrozen(self.frozen)
            if changes and self.backend is not None:
                held = await self.backend.commit(
                    {n: (o, s) for n, (o, s) in changes.items() if o is not None and s is not None},
                    reload=config is not None,
                )
                for name, state in held.items():
                    states[name] = state
                    changes[name] = (changes[name][0], state)
            if changes:
                await asyncio.to_thread(self.store.save, states)
            if config is not None:
                self.config = config
            self.states = states
            for name, (old, _) in changes.items():
                if old is not None:
                    self._replaced[name] = old
        for name, (old, new) in sorted(changes.items()):
            if old is not None and new is not None:
                self._notify(name, old, new)
        return changes

    async def adopt(self, app: str, new: AppState) -> bool:
        """Apply a state another node committed to the shared store; False if not newer.

        Under the same lock as a change made here, without the health check (it
        was checked where it was made; every node must serve the same committed
        state), and swap → notify → persist: the store already holds it, so the
        state file (this node's copy for a restart without the store) must not
        delay serving it. A failed write is logged; the next change rewrites it.
        """
        async with self._lock:
            old = self.states.get(app)
            if old is None or new.generation <= old.generation:
                return False
            states = {**self.states, app: new}
            self.states = states
            self._replaced[app] = old
            self._notify(app, old, new)
            try:
                await asyncio.to_thread(self.store.save, states)
            except StateFileError as e:
                log.error("%s; this node serves %s meanwhile", e, new.summary())
        if old.paused and not new.paused:
            self._release_waiters(app)
        self._wake.set()  # a drain may have started or ended
        return True

    def _notify(self, app: str, old: AppState, new: AppState) -> None:
        log.info("%s: %s → %s", app, old.summary(), new.summary())
        for listener in self._listeners:
            try:
                listener(app, old, new)
            except Exception:
                log.exception("switch listener %r failed for %s", listener, app)

    def _check_health(self, verb: str, old: AppState, new: AppState) -> None:
        """A color whose share of requests grows must be healthy."""
        for color in _grown(old, new):
            healthy, failing = self.health(new.app, color)
            if not healthy:
                raise UnhealthyTarget(_unhealthy(f"{verb} {new.app}", color, failing))

    # --- drain supervisor -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name="edgeproxy.drain-supervisor"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """Re-check drains now (e.g. the last request of a draining color finished)."""
        self._wake.set()

    async def _supervise(self) -> None:
        while True:
            self._wake.clear()
            pending = await self._check_drains()
            # Polling keeps this simple: drains are rare and 0.1 s is precise enough.
            timeout = self.drain_poll if pending else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _check_drains(self) -> list[float]:
        """Finish what can be finished; return the deadlines still pending."""
        pending: list[float] = []
        for app, s in list(self.states.items()):
            for color, deadline in s.draining.items():
                try:
                    requests, tunnels = self.inflight(app, color)
                    if requests == 0 and tunnels == 0:
                        log.info("%s/%s drained: nothing left in flight", app, color)
                    elif self.clock() >= deadline:
                        log.warning(
                            "%s/%s drain deadline passed: cutting %d requests and %d tunnels",
                            app,
                            color,
                            requests,
                            tunnels,
                        )
                        self.cut(app, color)
                    else:
                        pending.append(deadline)
                        continue
                    await self.finish_drain(app, color)
                except SwitchError as e:  # e.g. a set/rollback cancelled the drain meanwhile
                    log.debug("drain supervisor: %s", e)
                except Exception:
                    log.exception("drain supervisor: %s/%s", app, color)
                    pending.append(deadline)
        return pending
