"""What every connection shares: config, router, pools, color choice, tracking.

Built once per server (and rebuilt on config reload); connections keep a
reference to the context they started with.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mypy_extensions import trait

from edgeproxy.config import Config, Upstream
from edgeproxy.fds import connection_budget, nofile_limit
from edgeproxy.networks import in_networks, parse_networks
from edgeproxy.policies import compile_route_policies, compile_site_policy
from edgeproxy.proxy.headers import header_codes, response_codes
from edgeproxy.proxy.upstream import UpstreamPool
from edgeproxy.routing.router import Router
from edgeproxy.switching.decide import Fitness, Picker

log = logging.getLogger("edgeproxy.proxy")
limits_log = logging.getLogger("edgeproxy.limits")

ADMITTED, OVER_TOTAL, OVER_PER_CLIENT = 0, 1, 2
"""What `ConnectionCaps.admit` answers."""


@dataclass(slots=True)
class ColorTargets:
    """The upstream pools of one color of one app, chosen round-robin."""

    app: str
    color: str
    pools: list[UpstreamPool]
    _next: int = 0
    panic_routed: int = 0
    """Requests routed here while no upstream was fit (`when_all_down: route`)."""
    panicking: bool = False
    """Set by the first panic-routed request, cleared when an upstream is fit again."""

    def pick(self, healthy: Callable[[UpstreamPool], bool] | None = None) -> UpstreamPool | None:
        pools = self.pools
        n = len(pools)
        for _ in range(n):
            self._next = (self._next + 1) % n
            pool = pools[self._next]
            if healthy is None or healthy(pool):
                return pool
        return None

    def pick_anyway(self) -> UpstreamPool:
        """Panic routing: no upstream is fit, so take the next one round-robin regardless.

        Passive ejection and the 502/504 path then judge each request; this is
        logged once per entry into panic (`HealthMonitor` notes the way out).
        """
        self.panic_routed += 1
        if not self.panicking:
            self.panicking = True
            log.warning(
                "%s/%s: no upstream is fit for traffic; panic routing: requests go to its "
                "upstreams anyway until one is fit again (when_all_down: route)",
                self.app,
                self.color,
            )
        self._next = (self._next + 1) % len(self.pools)
        return self.pools[self._next]


@trait
class InFlight:
    """An exchange as the `Tracker` sees it (`proxy/exchange.py`'s `Exchange` is one).

    A trait, so that this module need not import the exchange (no import circle
    in `proxy/`); the tracker calls these only in its sweep and in drains.
    """

    __slots__ = ()

    def in_tunnel(self) -> bool:
        """Upgraded: its connection is a WebSocket tunnel now."""
        raise NotImplementedError

    def read_overdue(self, now: float) -> bool:
        """Its upstream has been silent longer than the route's read timeout."""
        raise NotImplementedError

    def time_out(self) -> None:
        """End it with 504 (or cut it if its response had begun)."""
        raise NotImplementedError

    def cut(self) -> None:
        """Drain deadline passed: 503 if nothing was sent yet, else close."""
        raise NotImplementedError


@dataclass(slots=True)
class Tracker:
    """In-flight exchanges per (app, color), so drains can count and cut them.

    An exchange joins the set of its app and color when it starts and leaves it
    when it finishes (`Exchange.track`/`untrack`): no lookup on the way out.
    """

    live: dict[tuple[str, str], set[InFlight]] = field(default_factory=dict)

    def set_of(self, app: str, color: str) -> set[InFlight]:
        key = (app, color)
        s = self.live.get(key)
        if s is None:
            s = self.live[key] = set()
        return s

    def counts(self, app: str, color: str) -> tuple[int, int]:
        s = self.live.get((app, color), ())
        tunnels = sum(1 for ex in s if ex.in_tunnel())
        return len(s) - tunnels, tunnels

    def expire(self, now: float) -> int:
        """504 every exchange whose upstream has been silent longer than its read timeout.

        One sweep a few times a second replaces a timer per request (a
        call_later + cancel per request measured ~3% of the hot path).
        """
        late = [ex for live in self.live.values() for ex in live if ex.read_overdue(now)]
        for ex in late:
            ex.time_out()
        return len(late)

    def cut(self, app: str, color: str) -> int:
        s = list(self.live.get((app, color), ()))
        for ex in s:
            ex.cut()
        return len(s)


class OpenConnection(Protocol):
    """A client connection as the server sees it: `proxy/client.py`'s `ClientConnection`
    (HTTP/1.1) or `proxy/h2conn.py`'s `H2Connection`."""

    ctx: ProxyContext
    tls: bool
    transport: asyncio.Transport | None

    def shutdown(self) -> None: ...


class ConnectionCaps:
    """`limits.max_connections` and `limits.max_connections_per_client`, counted per address.

    Checked once per accepted connection (after the TLS handshake); the counts and
    the refusals carry over a config reload.
    """

    __slots__ = (
        "exempt",
        "fd_limit",
        "max_per_client",
        "max_total",
        "per_client",
        "refused",
        "warned_at",
    )

    def __init__(self, config: Config, previous: ConnectionCaps | None) -> None:
        limits = config.limits
        self.fd_limit = nofile_limit()
        self.max_total = connection_budget(limits.max_connections, self.fd_limit)
        self.max_per_client = limits.max_connections_per_client
        self.exempt = parse_networks(
            limits.max_connections_per_client_exempt + config.forwarding.trusted_proxies
        )
        self.per_client: dict[str, int] = {} if previous is None else previous.per_client
        """Open connections per client address (addresses with none are removed)."""
        self.refused: list[int] = [0, 0, 0] if previous is None else previous.refused
        """Connections refused so far, indexed by OVER_TOTAL / OVER_PER_CLIENT."""
        self.warned_at = [0.0, 0.0, 0.0]

    def admit(self, ip: str, open_now: int, now: float) -> int:
        """ADMITTED (and counted: call `release` when it closes), or the cap it is over."""
        if open_now >= self.max_total:
            return self._refuse(OVER_TOTAL, ip, now)
        per = self.per_client
        n = per.get(ip, 0)
        cap = self.max_per_client
        if cap and n >= cap and not in_networks(ip, self.exempt):
            return self._refuse(OVER_PER_CLIENT, ip, now)
        per[ip] = n + 1
        return ADMITTED

    def release(self, ip: str) -> None:
        per = self.per_client
        n = per.get(ip, 0)
        if n <= 1:
            per.pop(ip, None)
        else:
            per[ip] = n - 1

    def _refuse(self, why: int, ip: str, now: float) -> int:
        self.refused[why] += 1
        if now - self.warned_at[why] >= 10.0:  # one line per cap per 10 s, not one per connection
            self.warned_at[why] = now
            if why == OVER_TOTAL:
                limits_log.warning(
                    "refusing connections: %d open, limits.max_connections is %d "
                    "(%d descriptors); %d refused so far (edgeproxy_connections_refused_total)",
                    self.max_total,
                    self.max_total,
                    self.fd_limit,
                    self.refused[why],
                )
            else:
                limits_log.warning(
                    "refusing connections from %s: %d open, limits.max_connections_per_client "
                    "is %d; %d refused so far (edgeproxy_connections_refused_total)",
                    ip,
                    self.per_client.get(ip, 0),
                    self.max_per_client,
                    self.refused[why],
                )
        return why


def _address(entry: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """One forwarded address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:80`."""
    text = entry.strip().decode("latin-1")
    if text.startswith("["):
        end = text.find("]")
        text = text[1:end] if end > 0 else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    if "%" in text:  # a zone id is no client address
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def secret_headers(config: Config) -> frozenset[bytes]:
    """Lowercase names of every rate-limit exemption header (dropped before forwarding,
    on every route: a secret never reaches an upstream)."""
    names: set[bytes] = set()
    for site in config.sites:
        for policies in (site, *site.routes):
            rl = policies.rate_limit
            if rl is not None and rl.exempt_header is not None:
                names.add(rl.exempt_header.name.lower().encode())
    return frozenset(names)


class RequestIds:
    """Request ids, cheap and unique per process: a random prefix and a counter.

    One object, handed on by each config reload to the next context (so ids never
    repeat); a native counter attribute, not `next()` of an iterator (a generic
    call once compiled).
    """

    __slots__ = ("count", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex().encode() + b"-"
        self.count = 0

    def new(self) -> bytes:
        self.count += 1
        return self.prefix + b"%x" % self.count


class ProxyContext(Fitness):
    """Shared state of the data plane (one per loaded config)."""

    def __init__(
        self, config: Config, *, picker: Picker | None = None, previous: ProxyContext | None = None
    ) -> None:
        """`previous`: the context a config reload replaces. Its pools (and their idle
        keep-alive connections), in-flight tracker, connection set and counters carry
        over, so drains, metrics and graceful shutdown see one data plane."""
        self.config = config
        self.router = Router(config)
        self.timeouts = config.timeouts
        self.limits = config.limits
        self.pools: dict[tuple[str, int], UpstreamPool] = (
            {} if previous is None else dict(previous.pools)
        )
        for pool in self.pools.values():
            pool.max_headers = config.limits.max_headers
        self.colors: dict[tuple[str, str], ColorTargets] = {}
        self.color_exposed: frozenset[str] = frozenset(
            name for name, app in config.apps.items() if app.expose_color
        )
        """Apps whose every response names the color that served it (apps.NAME.expose_color)."""
        for app_name, app in config.apps.items():
            for color, spec in app.colors.items():
                pools = [self.pool_for(Upstream.parse(u)) for u in spec.upstreams]
                self.colors[(app_name, color)] = ColorTargets(app_name, color, pools)
        for site in self.router.sites:
            site.policy = (
                compile_site_policy(site.config, tls=False, config=config),
                compile_site_policy(site.config, tls=True, config=config),
            )
            for route in site.routes:
                route.policy = compile_route_policies(site.config, route.config, config)
                if route.upstream is not None:
                    self.pool_for(route.upstream)
        self.trusted = parse_networks(config.forwarding.trusted_proxies)
        self.request_id_header = config.forwarding.request_id_header.lower().encode()
        self.override_headers = {
            app.override.header.lower().encode()
            for app in config.apps.values()
            if app.override.header
        }
        real_ip_header = config.forwarding.real_ip_header.lower().encode()
        self.real_ip_from_xff = real_ip_header == b"x-forwarded-for"
        self.header_codes = header_codes(
            self.request_id_header, self.override_headers, real_ip_header, secret_headers(config)
        )
        self.response_codes = response_codes(self.request_id_header)
        self.webroot: Path | None = config.acme.webroot
        self.tracker: Tracker = Tracker() if previous is None else previous.tracker
        self.picker: Picker = picker if picker is not None else Picker(config, None, self)
        """The switch decision per request (`Switching` gives it the board's states;
        without, each app stays on its first color)."""
        self.connections: set[OpenConnection] = set() if previous is None else previous.connections
        self.https_port_suffix: bytes = b"" if previous is None else previous.https_port_suffix
        """`:8443` when the HTTPS listener is not on 443 (for redirects)."""
        self.request_ids: RequestIds = RequestIds() if previous is None else previous.request_ids
        self.exchange_observers: list[Callable[[Any], None]] = []
        """Called with every finished `Exchange` (metrics, passive health, access log).
        Typed `Any` here: this module does not import the exchange (no import circle)."""
        self.health_ok: Callable[[UpstreamPool], bool] | None = None
        self.accepted: list[int] = [0, 0] if previous is None else previous.accepted
        """Connections accepted so far: [plain HTTP, TLS (handshake done)]."""
        self.h2_accepted: int = 0 if previous is None else previous.h2_accepted
        """TLS connections among them that chose HTTP/2 by ALPN."""
        self.replaced_by: ProxyContext | None = None
        """The context a config reload put in force after this one."""
        self.stepping_back = False
        """A new process took over the listeners (edgeproxy/handover.py): every request
        parsed from now on is answered with `Connection: close` and ends its connection
        (`ClientConnection.on_headers_complete`), so keep-alive clients move over
        without a request racing a close."""
        self.caps: ConnectionCaps = ConnectionCaps(
            config, None if previous is None else previous.caps
        )

    def pool_for(self, upstream: Upstream) -> UpstreamPool:
        key = (upstream.host, upstream.port)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = UpstreamPool(
                upstream,
                idle_timeout=self.timeouts.upstream_idle,
                connect_timeout=self.timeouts.connect,
                max_headers=self.limits.max_headers,
            )
        return pool

    def fit(self, app: str, color: str) -> bool:
        """Whether `color` of `app` has an upstream fit for traffic (asked by the switch
        decision; with every upstream healthy, `health_ok` is None and this costs nothing)."""
        ok = self.health_ok
        if ok is None:
            return True
        return any(ok(pool) for pool in self.colors[(app, color)].pools)  # mypyc: a loop

    def new_request_id(self) -> bytes:
        return self.request_ids.new()

    def newest(self) -> ProxyContext:
        """The context in force now: this one, or the last a config reload put after it
        (a connection accepted before a reload, handshake done after it, takes that)."""
        ctx = self
        while ctx.replaced_by is not None:
            ctx = ctx.replaced_by
        return ctx

    def is_trusted(self, ip: str) -> bool:
        return in_networks(ip, self.trusted)

    def forwarded_client(self, chain: bytes) -> str | None:
        """The client address in a trusted peer's `real_ip_header` (a comma list).

        The rightmost entry that is not in `trusted_proxies`: every hop to its
        right is a proxy we trust to have appended what it saw, and the ones to
        its left were written by the client, so they may be forged (nginx's
        realip module with `real_ip_recursive on`, Traefik). All trusted: the
        leftmost. An entry that is not an address: None (the peer stays the
        client, as nginx does).
        """
        found: str | None = None
        for entry in reversed(chain.split(b",")):
            addr = _address(entry)
            if addr is None:
                return None
            found = str(addr)
            if not any(addr in n for n in self.trusted):
                return found
        return found

    def close_idle_of_color(self, app: str, color: str) -> int:
        targets = self.colors.get((app, color))
        if targets is None:
            return 0
        return sum(p.close_idle() for p in targets.pools)
