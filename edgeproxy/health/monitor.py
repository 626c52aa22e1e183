"""Who may receive traffic: active checks and passive ejection for every color's upstreams.

`HealthMonitor.start()` runs one round of checks (each bounded by its
`timeout`) before edgeproxy accepts connections, so a color restored from the
state file must pass its check before it gets a request (except by panic
routing: with `when_all_down: route`, an active color with no fit upstream
gets requests anyway, see `Exchange._pick_color`); the loops then keep
probing every color, active or not, every `interval` (±10% jitter; never later
than one interval for an upstream that is not healthy, so a recovered one is
seen within `healthy_threshold` intervals: see `health/state.py`). The data
plane asks `ctx.health_ok(pool)`
per request; while every upstream is fit that hook is None and costs nothing.

An upstream shared by several colors or apps (same host:port) has one verdict:
the health and ejection settings of the first app that lists it apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from edgeproxy.config import Config, Ejection, Health
from edgeproxy.health.probe import new_session, probe
from edgeproxy.health.state import CheckState, EjectionState
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.upstream import UpstreamPool

if TYPE_CHECKING:
    from edgeproxy.proxy.exchange import Exchange

log = logging.getLogger("edgeproxy.health")

Listener = Callable[["UpstreamHealth", str], None]
"""(upstream, event) with event one of healthy, unhealthy, ejected, readmitted."""


class UpstreamHealth:
    """The verdicts on one upstream address."""

    def __init__(self, pool: UpstreamPool, spec: Health, ejection: Ejection) -> None:
        self.pool = pool
        self.url = pool.upstream.url
        self.spec = spec
        self.check = CheckState(spec.healthy_threshold, spec.unhealthy_threshold)
        self.eject = EjectionState(
            ejection.consecutive_failures, ejection.base_seconds, ejection.max_seconds
        )
        self.users: list[tuple[str, str]] = []
        """(app, color) pairs that route to this upstream."""
        self.readmit: asyncio.TimerHandle | None = None
        self.next_check = 0.0
        """Loop time of the next active check (in the past while one is running)."""

    def fit(self, now: float) -> bool:
        checked = not self.spec.enabled or self.check.healthy is True
        return checked and not self.eject.ejected(now)

    def reasons(self, now: float) -> list[str]:
        """Why this upstream gets no requests (empty while it is fit)."""
        out = []
        if self.spec.enabled and self.check.healthy is not True:
            out.append(f"{self.check.describe()}; {self.next_check_in(now)}")
        if self.eject.ejected(now):
            left = self.eject.ejected_until - now
            out.append(f"{self.eject.describe()}, back in {left:.0f}s")
        return out

    def next_check_in(self, now: float) -> str:
        """When the next check runs, and what it takes to be healthy again."""
        left = self.next_check - now
        when = f"next check in {left:.1f}s" if left > 0 else "a check is running"
        need = self.spec.healthy_threshold
        if self.check.healthy is None or need == 1 or self.check.successes:
            return when  # the next passing check decides, or describe() says how many are left
        return f"{when}, healthy after {need} passing in a row"

    def failing(self, now: float) -> list[str]:
        return [f"{self.url}: {r}" for r in self.reasons(now)]

    def view(self, now: float, wall: float) -> dict[str, Any]:
        check = self.check
        ejected = self.eject.ejected(now)
        return {
            "url": self.url,
            "healthy": self.fit(now),
            "check": (
                "disabled"
                if not self.spec.enabled
                else {None: "pending", True: "passing", False: "failing"}[check.healthy]
            ),
            "last_check": wall - (now - check.last_check) if check.last_check else None,
            "failing": "; ".join(self.reasons(now)) or None,
            "next_check": (
                wall + max(0.0, self.next_check - now)
                if self.spec.enabled and self.next_check
                else None
            ),
            "checks_passed": check.passed,
            "checks_failed": check.failed,
            "checks_local_errors": check.local_errors,
            "ejected": ejected,
            "ejected_until": wall + (self.eject.ejected_until - now) if ejected else None,
            "ejections": self.eject.ejections,
        }


class HealthMonitor:
    def __init__(self, config: Config, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.by_pool: dict[UpstreamPool, UpstreamHealth] = {}
        self.colors: dict[tuple[str, str], list[UpstreamHealth]] = {}
        for name, app_spec in config.apps.items():
            if app_spec.health.max_backoff is not None:
                log.warning(
                    "apps.%s.health.max_backoff no longer has an effect: failing upstreams "
                    "are checked every interval; remove it",
                    name,
                )
        for (app, color), targets in ctx.colors.items():
            spec = config.apps[app]
            ups = []
            for pool in targets.pools:
                u = self.by_pool.get(pool)
                if u is None:
                    u = self.by_pool[pool] = UpstreamHealth(pool, spec.health, spec.ejection)
                u.users.append((app, color))
                ups.append(u)
            self.colors[(app, color)] = ups
        self.down: set[UpstreamPool] = set()
        self.listeners: list[Listener] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None
        self.rng = random.Random()
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Judge every upstream once (bounded by each check's timeout), then keep probing."""
        self.loop = asyncio.get_running_loop()
        checked = [u for u in self.by_pool.values() if u.spec.enabled]
        if checked:
            self.session = new_session()
            await asyncio.gather(*(self._probe(u) for u in checked))
        for u in self.by_pool.values():
            self._refresh(u)
        for u in checked:
            self.tasks.append(
                self.loop.create_task(self._probe_loop(u), name=f"health-check {u.url}")
            )
        fit = sum(1 for u in self.by_pool.values() if u.fit(self.loop.time()))
        log.info("health: %d of %d upstreams fit for traffic", fit, len(self.by_pool))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.tasks.clear()
        for u in self.by_pool.values():
            if u.readmit is not None:
                u.readmit.cancel()
        if self.session is not None:
            await self.session.close()
            self.session = None

    # --- active checks ------------------------------------------------------------------------

    async def _probe_loop(self, u: UpstreamHealth) -> None:
        assert self.loop is not None
        while True:
            delay = u.check.next_delay(u.spec.interval, self.rng.uniform(-1.0, 1.0))
            u.next_check = self.loop.time() + delay
            await asyncio.sleep(delay)
            try:
                await self._probe(u)
            except Exception:  # a bug must not end the checks of this upstream
                log.exception("health check of %s failed unexpectedly", u.url)

    async def _probe(self, u: UpstreamHealth) -> None:
        assert self.session is not None and self.loop is not None
        ok, detail = await probe(self.session, u.url, u.spec)
        if ok is None:
            # Our own failure (EMFILE, ENOBUFS, ...): counted apart, never the upstream's.
            if u.check.record_local(detail):
                log.warning(
                    "health check of %s could not run: %s; its verdict stays %s "
                    "(a local error says nothing about the upstream)",
                    u.url,
                    detail,
                    {None: "pending", True: "healthy", False: "unhealthy"}[u.check.healthy],
                )
            return
        streak = u.check.local_streak
        if streak:
            log.info("health checks of %s run again after %d local errors", u.url, streak)
        before = u.check.healthy
        if u.check.record(ok, detail, self.loop.time()):
            if before is not None or not ok:
                event = "healthy" if ok else "unhealthy"
                level = logging.INFO if ok else logging.WARNING
                log.log(level, "%s %s: %s", u.url, event, u.check.describe() if not ok else detail)
                self._refresh(u, event)
            else:
                self._refresh(u)

    # --- passive ejection (hot path: once per finished exchange) -------------------------------

    def observe(self, ex: Exchange) -> None:
        pool = ex.pool
        if pool is None:
            return
        u = self.by_pool.get(pool)
        if u is None:
            return  # a static route's upstream: not health-managed
        status = ex.status
        error = ex.error
        if error is None:
            if status >= 500:
                why = f"answered {status}"
            elif status == 499 or status == 0:
                return  # the client went away: says nothing about the upstream
            else:
                u.eject.failures = 0  # EjectionState.success(), inlined: the common case
                return
        elif status == 503:
            return  # drain cut or pause timeout: edgeproxy's decision, not the upstream's fault
        else:
            why = error
        if ex.panic:
            # Panic-routed: this upstream was already unfit, so an ejection changes no
            # routing; it would only outlast the upstream's recovery (a color starting
            # up while visitors knock would be ejected again and again).
            return
        assert self.loop is not None
        seconds = u.eject.failure(why, self.loop.time())  # one clock with call_at and fit()
        if seconds is not None:
            log.warning(
                "%s ejected for %.0fs after %d failed requests in a row (last: %s)",
                u.url,
                seconds,
                u.eject.consecutive_failures,
                why,
            )
            u.readmit = self.loop.call_at(u.eject.ejected_until, self._readmit, u)
            self._refresh(u, "ejected")

    def _readmit(self, u: UpstreamHealth) -> None:
        u.readmit = None
        log.info("%s readmitted after its ejection", u.url)
        self._refresh(u, "readmitted")

    # --- verdicts -------------------------------------------------------------------------------

    def _refresh(self, u: UpstreamHealth, event: str | None = None) -> None:
        assert self.loop is not None
        if u.fit(self.loop.time()):
            self.down.discard(u.pool)
            for app, color in u.users:
                targets = self.ctx.colors.get((app, color))
                if targets is not None and targets.panicking:
                    targets.panicking = False
                    log.info("%s/%s: %s is fit again; panic routing ends", app, color, u.url)
        else:
            self.down.add(u.pool)
        # No hook at all while everything is fit: the per-request pick skips the call.
        self.ctx.health_ok = self.fit_pool if self.down else None
        if event is not None:
            for listener in self.listeners:
                listener(u, event)

    def fit_pool(self, pool: UpstreamPool) -> bool:
        return pool not in self.down

    def health(self, app: str, color: str) -> tuple[bool, list[str]]:
        """The SwitchBoard's hook (views, switch checks, metrics).

        A color is healthy while one of its upstreams is fit; what fails on the
        others, each with the time to its next check.
        """
        now = self._now()
        ups = self.colors.get((app, color), [])
        failing = [f for u in ups for f in u.failing(now)]
        return any(u.fit(now) for u in ups), failing

    def color_view(self, app: str, color: str) -> dict[str, Any]:
        now, wall = self._now(), time.time()
        healthy, failing = self.health(app, color)
        return {
            "healthy": healthy,
            "failing_checks": failing,
            "upstreams": [u.view(now, wall) for u in self.colors.get((app, color), [])],
        }

    def view(self) -> dict[str, Any]:
        """GET /v1/health: {"apps": {APP: {COLOR: {healthy, failing_checks, upstreams}}}}."""
        apps: dict[str, dict[str, Any]] = {}
        for app, color in self.colors:
            apps.setdefault(app, {})[color] = self.color_view(app, color)
        return {"apps": apps}

    def _now(self) -> float:
        return self.loop.time() if self.loop is not None else 0.0
