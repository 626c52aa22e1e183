"""Canary gates: pure functions over edgeproxy's per-color figures, sound at small counts.

The 5xx gate is a one-sided exact binomial test. Null hypothesis: the new
color's 5xx share in the step is at most the baseline `p0 = max(max_error_rate,
active color's 5xx share in the same step)`. The p-value is P(X >= errors) for
X ~ Binomial(requests, p0); the gate fails when it is below `significance`
(default 0.01). It needs no minimum count: at p0 = 1 % and significance 1 %,
2 errors in 2 requests fail (p = 0.0001) while 1 in 1 does not (p = 0.01), and
a healthy 0.5 % error rate passes however long it runs. The active color's
share is taken as known (at a 10 % canary it has nine times the requests); it
only ever raises the baseline, so a failure shared by both colors (a database
outage) is not blamed on the release.

The p99 gate is a plain comparison, judged once the step has `min_requests`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from switchctl.client import AppView
from switchctl.deploy.config import Gates


def binomial_tail(errors: int, requests: int, p0: float) -> float:
    """P(X >= errors) for X ~ Binomial(requests, p0): the one-sided p-value."""
    if errors <= 0:
        return 1.0
    if errors > requests:
        return 0.0
    if p0 <= 0.0:
        return 0.0
    if p0 >= 1.0:
        return 1.0
    lp, lq = math.log(p0), math.log1p(-p0)
    lgn = math.lgamma(requests + 1)
    mode = (requests + 1) * p0
    total = 0.0
    for i in range(errors, requests + 1):
        term = math.exp(
            lgn - math.lgamma(i + 1) - math.lgamma(requests - i + 1) + i * lp + (requests - i) * lq
        )
        total += term
        if i > mode and term < total * 1e-17:
            break  # past the mode the terms only shrink: the rest is below float precision
    return min(1.0, total)


@dataclass(frozen=True)
class Evidence:
    """What a canary step has seen so far: counts since the step began."""

    color: str
    active: str
    requests: int
    errors: int
    active_requests: int
    active_errors: int
    p99_ms: float
    active_p99_ms: float

    def describe(self) -> str:
        return f"{self.requests} requests, {self.errors} 5xx, p99 {self.p99_ms:.1f}ms"


def step_evidence(start: AppView, now: AppView, color: str) -> Evidence:
    """Counts since `start` (the view before the step's weight was set)."""
    active = now["active"]
    c0, c1 = start["colors"].get(color, {}), now["colors"].get(color, {})
    a0, a1 = start["colors"].get(active, {}), now["colors"].get(active, {})
    return Evidence(
        color=color,
        active=active,
        requests=c1.get("requests", 0) - c0.get("requests", 0),
        errors=c1.get("errors_5xx", 0) - c0.get("errors_5xx", 0),
        active_requests=a1.get("requests", 0) - a0.get("requests", 0),
        active_errors=a1.get("errors_5xx", 0) - a0.get("errors_5xx", 0),
        p99_ms=c1.get("p99_ms", 0.0),
        active_p99_ms=a1.get("p99_ms", 0.0),
    )


def baseline(ev: Evidence, gates: Gates) -> float:
    active_rate = ev.active_errors / ev.active_requests if ev.active_requests > 0 else 0.0
    return max(gates.max_error_rate, active_rate)


def gate_verdict(ev: Evidence, gates: Gates) -> str | None:
    """None while the canary is within its gates, else why it is not."""
    if ev.requests > 0 and ev.errors > 0:
        p0 = baseline(ev, gates)
        p = binomial_tail(ev.errors, ev.requests, p0)
        if p < gates.significance:
            return (
                f"{ev.color} answered {ev.errors} of {ev.requests} requests with 5xx "
                f"({ev.errors / ev.requests:.1%}), above the {p0:.1%} allowed "
                f"(one-sided binomial test p={p:.2g} < {gates.significance:g}; "
                f"{ev.active}: {ev.active_errors} of {ev.active_requests})"
            )
    if ev.requests < max(1, gates.min_requests):
        return None
    limit = max(gates.p99_min_ms, gates.p99_factor * ev.active_p99_ms)
    if ev.p99_ms > limit:
        return (
            f"{ev.color}'s p99 latency is {ev.p99_ms:.0f}ms, above {limit:.0f}ms "
            f"({gates.p99_factor}x {ev.active}'s)"
        )
    return None
