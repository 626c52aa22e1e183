"""Waiting with exponential backoff, full jitter and an overall deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str
    fatal: bool = False
    """Stop waiting at once (e.g. the container exited)."""


class WaitTimeout(Exception):
    def __init__(self, what: str, waited: float, last: Probe | None, attempts: int) -> None:
        self.what = what
        self.waited = waited
        self.last = last
        self.attempts = attempts
        detail = last.detail if last else "no check completed"
        verb = "gave up" if last is not None and last.fatal else f"not after {waited:.1f}s"
        super().__init__(f"{what}: {verb} ({attempts} checks); last: {detail}")


def delays(first: float, maximum: float, rng: Callable[[], float]) -> Callable[[int], float]:
    """Attempt n waits between first*2^n/2 and first*2^n, capped at maximum ("equal jitter")."""

    def delay(n: int) -> float:
        base = min(maximum, first * 2.0**n)
        return base / 2 + rng() * base / 2

    return delay


def wait_until(
    check: Callable[[], Probe],
    what: str,
    deadline: float,
    first: float = 0.25,
    maximum: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
    beat: Callable[[str], None] | None = None,
) -> Probe:
    """Call `check` until it is ok; raise WaitTimeout at the deadline or on a fatal probe.

    `beat` (a `Progress.heartbeat`) is called with the last probe's detail after each
    failed check, so a long wait says what it waits for."""
    start = clock()
    delay = delays(first, maximum, rng)
    attempts = 0
    last: Probe | None = None
    while True:
        attempts += 1
        last = check()
        if last.ok:
            return last
        elapsed = clock() - start
        if last.fatal or elapsed >= deadline:
            raise WaitTimeout(what, elapsed, last, attempts)
        if beat is not None:
            beat(last.detail)
        sleep(min(delay(attempts - 1), max(0.0, deadline - elapsed)))
