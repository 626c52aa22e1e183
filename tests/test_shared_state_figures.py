"""Per-color figures summed over nodes (`observability/nodes.py`): pure, no Redis."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict

from edgeproxy.observability.nodes import Figures
from edgeproxy.observability.stats import BOUNDS, NBUCKETS, quantile


def figures(latencies: list[float], errors: int = 0) -> Figures:
    hist: dict[int, int] = {}
    for d in latencies:
        i = bisect_left(BOUNDS, d)
        hist[i] = hist.get(i, 0) + 1
    n = len(latencies)
    return Figures(n, errors, 0, 0, n, errors, hist)


def test_the_summed_window_has_the_p99_of_every_request_together_not_of_either_node() -> None:
    fast, slow = [0.001] * 90, [0.2] * 10
    total = Figures()
    for part in (figures(fast), figures(slow, errors=3)):
        total.add(part)
    dense = [0] * NBUCKETS
    for d in fast + slow:
        dense[bisect_left(BOUNDS, d)] += 1
    w = total.window()
    assert (w.requests, w.errors) == (100, 3)
    assert w.p99_ms == round(quantile(dense, 100, 0.99) * 1000, 3)
    assert w.p99_ms > figures(fast).window().p99_ms


def test_figures_survive_their_json_form_and_garbage_is_ignored() -> None:
    f = figures([0.002, 0.004], errors=1)
    as_json = {**asdict(f), "hist": {str(k): v for k, v in f.hist.items()}}
    assert Figures.parse(as_json) == f
    assert Figures.parse("nonsense") is None
    assert Figures.parse({"requests": "many"}) is None
    assert Figures().window().p99_ms == 0.0
