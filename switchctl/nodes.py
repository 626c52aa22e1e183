"""Several edge nodes sharing one switch state: the node list and waiting for every node.

`GET /v1/cluster` on any node answers every live node (its heartbeat record:
id, address, version, the generation it serves per app, stale or not) and
the store's latest generation per app; a lone node answers `{"backend": null}`.
"""

from __future__ import annotations

import time
from typing import Any

from switchctl.client import ControlClient, ControlError


def cluster_or_none(client: ControlClient) -> dict[str, Any] | None:
    """The cluster view, or None for a lone node (or one older than the shared state)."""
    try:
        view = client.cluster()
    except ControlError as e:
        if e.status == 404:
            return None
        raise
    return view if view.get("backend") else None


def _when(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def format_nodes(cluster: dict[str, Any]) -> str:
    """The shared store, this node's standing, and one row per live node (laggards flagged)."""
    latest: dict[str, int] = cluster.get("latest") or {}
    head = f"shared state: {cluster['backend']} (asked node {cluster['node']})"
    lines = [head]
    if cluster.get("stale_since"):
        lines.append(
            f"  STALE since {_when(cluster['stale_since'])}: {cluster.get('error') or '?'}; "
            "this node serves its last applied state and refuses changes until the store answers"
        )
    for app, why in sorted((cluster.get("diverged") or {}).items()):
        lines.append(f"  {app}: NOT APPLYING the shared state: {why}")
    rows = [["NODE", "ADDRESS", "VERSION", "GENERATION", "LAST SEEN", "STATE"]]
    for n in cluster.get("nodes") or []:
        gens = n.get("generations") or {}
        lagging = n.get("lagging") or []
        state = "in step"
        if lagging:
            state = (
                "LAGGING ("
                + ", ".join(f"{a} {gens.get(a, '-')} < {latest.get(a, '-')}" for a in lagging)
                + ")"
            )
        if n.get("stale_since"):
            state += f"; STALE since {_when(n['stale_since'])}"
        for app, why in sorted((n.get("diverged") or {}).items()):
            state += f"; {app}: {why}"
        rows.append(
            [
                str(n.get("id")) + (" (this one)" if n.get("self") else ""),
                str(n.get("address") or "-"),
                str(n.get("version") or "-"),
                ", ".join(f"{a} {g}" for a, g in sorted(gens.items())) or "-",
                f"{float(n.get('age') or 0.0):.1f}s ago",
                state,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if latest:
        lines.append("  latest: " + ", ".join(f"{a} {g}" for a, g in sorted(latest.items())))
    return "\n".join(lines)


def laggards(cluster: dict[str, Any], app: str, generation: int) -> list[str]:
    """Each live node not yet serving `generation` of `app`, described in a few words."""
    out = []
    for n in cluster.get("nodes") or []:
        have = (n.get("generations") or {}).get(app, -1)
        if have < generation:
            why = (n.get("diverged") or {}).get(app)
            out.append(
                f"node {n.get('id')} ({n.get('address')}) is on generation {have}"
                + (f": {why}" if why else "")
            )
    return out


def wait_nodes(
    client: ControlClient, app: str, generation: int, timeout: float, poll: float = 0.02
) -> list[str]:
    """Wait until every live node serves `generation` of `app`; the laggards left on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        cluster = cluster_or_none(client)
        if cluster is None:
            return []  # a lone node: it answered with the change applied
        behind = laggards(cluster, app, generation)
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(poll)
