"""`metrics.enabled: false` (for benches) stops per-request counting, nothing else."""

from __future__ import annotations

from switchctl.client import ControlClient
from tests.proxy_fixtures import http_get, site


def requests_total(text: str) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("edgeproxy_requests_total{")
    )


def test_with_metrics_disabled_requests_are_served_but_not_counted(backend, edge):
    b = backend("blue")
    conf = {"apps": {"shop": {"colors": {"blue": {"upstreams": [b.url]}}}}, "sites": [site("shop")]}
    on = edge(conf)
    off = edge({**conf, "metrics": {"enabled": False}})
    for e in (on, off):
        for _ in range(5):
            assert http_get(e.http_port).status == 200
    assert requests_total(ControlClient(on.socket_path).metrics()) == 5
    text = ControlClient(off.socket_path).metrics()
    assert requests_total(text) == 0
    assert "edgeproxy_switch_generation" in text
