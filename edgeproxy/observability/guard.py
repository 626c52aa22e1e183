"""The canary guard: back a candidate out when it does worse than the active color.

Every few hundred milliseconds, for each app whose candidate takes traffic,
the candidate's sliding window (error rate = 5xx + upstream failures, and p99)
is compared with the active color's. Once the candidate has at least
`min_requests` requests in the window and is worse by more than the
configured margins, `board.guard_trip` sets its weight to 0, persists that,
logs it and records the reason in the app's state (`switchctl status`).

A candidate's window starts empty each time its share rises from 0, so a
color backed out earlier is judged on its new requests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable

from edgeproxy.config import CanaryGuard as GuardConfig
from edgeproxy.config import Config
from edgeproxy.errors import SwitchError
from edgeproxy.observability.metrics import Metrics
from edgeproxy.observability.stats import Summary
from edgeproxy.switching.board import ChangesFrozen, SwitchBoard
from edgeproxy.switching.shared import StoreUnavailable
from edgeproxy.switching.state import AppState, weights

log = logging.getLogger("edgeproxy.guard")


def verdict(
    cfg: GuardConfig, candidate: str, cand: Summary, active: str, act: Summary
) -> str | None:
    """Why the candidate must be backed out, or None while it is within the margins."""
    if cand.requests < cfg.min_requests:
        return None
    window = f"the last {cfg.window_seconds:g}s"
    rate, active_rate = cand.error_rate, act.error_rate
    if rate > cfg.max_error_rate and rate > cfg.error_rate_factor * active_rate:
        return (
            f"{candidate} failed {cand.errors} of {cand.requests} requests ({rate:.2%}) in "
            f"{window}, above {cfg.max_error_rate:.2%} and {cfg.error_rate_factor:g}x "
            f"{active}'s {active_rate:.2%}"
        )
    if act.requests:
        limit = max(cfg.p99_min_ms, cfg.p99_factor * act.p99_ms)
        if cand.p99_ms > limit:
            return (
                f"{candidate}'s p99 latency {cand.p99_ms:.0f}ms over {cand.requests} requests "
                f"in {window} is above {limit:.0f}ms ({cfg.p99_factor:g}x {active}'s "
                f"{act.p99_ms:.0f}ms, at least {cfg.p99_min_ms:g}ms)"
            )
    return None


class CanaryGuard:
    def __init__(self, config: Config, board: SwitchBoard, metrics: Metrics) -> None:
        self.config = config
        self.board = board
        self.metrics = metrics
        self.window: Callable[[str, str], Summary] = metrics.window
        """(app, color) → the color's window; over every node with a shared state (`nodes.py`)."""
        self.trips: Counter[str] = Counter()
        windows = [a.canary_guard.window_seconds for a in config.apps.values()]
        self.period = min([1.0, *(w / 20 for w in windows)])
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is not None:
            return  # already judging (a reload during a hand-over started it; thaw starts it)
        self.board.add_listener(self.on_switch)
        self.task = asyncio.get_running_loop().create_task(self._run(), name="canary-guard")

    async def stop(self) -> None:
        self.board.remove_listener(self.on_switch)  # a config reload starts another guard
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def on_switch(self, app: str, old: AppState, new: AppState) -> None:
        candidate = new.live_candidate
        if candidate is not None and weights(old).get(candidate, 0) == 0:
            self.metrics.reset_window(app, candidate)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception:
                log.exception("canary guard check failed")

    async def check(self) -> None:
        for app, state in list(self.board.states.items()):
            cfg = self.config.apps[app].canary_guard
            candidate = state.live_candidate
            if not cfg.enabled or candidate is None:
                continue
            reason = verdict(
                cfg,
                candidate,
                self.window(app, candidate),
                state.active,
                self.window(app, state.active),
            )
            if reason is None:
                continue
            try:
                await self.board.guard_trip(app, reason)
            except SwitchError as e:  # the switch moved on meanwhile
                log.info("canary guard for %s: %s", app, e)
                continue
            except (ChangesFrozen, StoreUnavailable) as e:  # a hand-over; the shared store down
                log.warning("canary guard for %s: cannot trip now (%s): %s", app, e, reason)
                continue
            self.trips[app] += 1
            log.warning("canary guard: %s: weight of %s set to 0: %s", app, candidate, reason)
