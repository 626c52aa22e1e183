"""Pure analysis of load-client records: counts, switch timing, stale responses, splits."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.stats import binomial_ci95, median, percentile


@dataclass(frozen=True)
class Response:
    t_sent: float
    t_done: float
    status: int
    color: str
    group: int
    source: int
    error: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def load_records(doc: dict[str, Any]) -> list[Response]:
    r = doc["records"]
    cols = (r["t_sent"], r["t_done"], r["status"], r["color"], r["group"], r["source"], r["error"])
    return [Response(*row) for row in zip(*cols, strict=True)]


@dataclass(frozen=True)
class Flip:
    color: str
    t_sent: float
    t_reply: float
    ok: bool
    generation: int | None
    error: str | None = None


def counts(responses: Sequence[Response]) -> dict[str, int]:
    """`"200 blue": n`, `"failed ConnectionResetError": n`, …"""
    c: Counter[str] = Counter()
    for r in responses:
        if r.status:
            c[f"{r.status} {r.color or '?'}"] += 1
        else:
            c[f"failed {r.error.split(':', 1)[0]}"] += 1
    return dict(sorted(c.items(), key=lambda kv: -kv[1]))


def _ms_stats(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "count": len(ms),
        "median_ms": median(ms),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


def analyze_switch(responses: Sequence[Response], flips: Sequence[Flip]) -> dict[str, Any]:
    """Failures, flip rate, set-reply → first-new-color delay, and stale responses.

    A response is *stale* when its whole exchange (sent → done) lies after a set
    reply and before the next set was sent, yet it came from another color: the
    proxy cannot have seen any other state in between.
    """
    by_done = sorted(responses, key=lambda r: r.t_done)
    done_times = [r.t_done for r in by_done]
    by_sent = sorted(responses, key=lambda r: r.t_sent)
    sent_times = [r.t_sent for r in by_sent]
    delays: list[float] = []
    never: list[int] = []
    stale: list[tuple[Response, Flip]] = []
    ok_flips = [f for f in flips if f.ok]
    for i, flip in enumerate(ok_flips):
        j = bisect.bisect_left(done_times, flip.t_reply)
        while j < len(by_done) and not (by_done[j].ok and by_done[j].color == flip.color):
            j += 1
        if j < len(by_done):
            delays.append(by_done[j].t_done - flip.t_reply)
        else:
            never.append(i)
        end = ok_flips[i + 1].t_sent if i + 1 < len(ok_flips) else float("inf")
        lo = bisect.bisect_left(sent_times, flip.t_reply)
        hi = bisect.bisect_left(sent_times, end)
        for r in by_sent[lo:hi]:
            if r.ok and r.color != flip.color and r.t_done < end:
                stale.append((r, flip))
    failures = [r for r in responses if not r.ok]
    span = flips[-1].t_reply - flips[0].t_sent if flips else 0.0
    t0 = min(sent_times) if sent_times else 0.0
    t1 = max(done_times) if done_times else 0.0
    return {
        "responses": len(responses),
        "rps": len(responses) / (t1 - t0) if t1 > t0 else 0.0,
        "counts": counts(responses),
        "failures": len(failures),
        "failure_examples": [
            {"t": round(r.t_sent - t0, 4), "status": r.status, "error": r.error}
            for r in failures[:10]
        ],
        "switches": len(flips),
        "switches_refused": [asdict(f) for f in flips if not f.ok],
        "switches_per_second": len(flips) / span if span > 0 else 0.0,
        "set_reply": _ms_stats([f.t_reply - f.t_sent for f in flips]),
        "reply_to_first_new_color": _ms_stats(delays),
        "switches_without_new_color": never,
        "stale_responses": len(stale),
        "stale_examples": [
            {
                "group": r.group,
                "color": r.color,
                "sent_after_reply_ms": round(1000 * (r.t_sent - f.t_reply), 3),
                "took_ms": round(1000 * (r.t_done - r.t_sent), 3),
            }
            for r, f in stale[:10]
        ],
    }


def timeline(
    responses: Sequence[Response], marks: Sequence[float], t0: float, bucket: float = 0.1
) -> dict[str, Any]:
    """Responses per `bucket` seconds by color (failures apart), and mark times, from t0."""
    if not responses:
        return {"bucket_seconds": bucket, "series": {}, "switches": []}
    n = int((max(r.t_done for r in responses) - t0) / bucket) + 1
    series: dict[str, list[int]] = {}
    for r in responses:
        name = r.color if r.ok else "failed"
        i = int((r.t_done - t0) / bucket)
        if 0 <= i < n:
            series.setdefault(name, [0] * n)[i] += 1
    return {
        "bucket_seconds": bucket,
        "series": dict(sorted(series.items())),
        "switches": [round(m - t0, 4) for m in marks],
    }


def canary_split(responses: Sequence[Response], color: str, weight: int) -> dict[str, Any]:
    ok = [r for r in responses if r.ok]
    hits = sum(1 for r in ok if r.color == color)
    lo, hi = binomial_ci95(hits, len(ok))
    share = hits / len(ok) if ok else float("nan")
    return {
        "clients": len({r.source for r in responses}),
        "responses": len(responses),
        "failures": len(responses) - len(ok),
        "color": color,
        "weight_percent": weight,
        "observed_percent": 100 * share,
        "ci95_percent": [100 * lo, 100 * hi],
        "within_ci": lo <= weight / 100 <= hi,
        "error_points": 100 * share - weight,
    }


def same_color_share(first: Sequence[Response], second: Sequence[Response]) -> float:
    """Share of clients (by source address) that got the same color in both passes."""
    a = {r.source: r.color for r in first if r.ok}
    b = {r.source: r.color for r in second if r.ok}
    both = a.keys() & b.keys()
    return sum(1 for s in both if a[s] == b[s]) / len(both) if both else float("nan")
