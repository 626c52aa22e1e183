"""Per-client rate limiting, like nginx `limit_req zone=… rate=10r/s burst=20 nodelay`.

A token bucket per client key (capacity `burst + 1`, refilled at `rate` per
second), stored as one float per key: the bucket's *theoretical arrival time*
(GCRA). A key whose time is in the past has a full bucket, which is the same as
having no entry at all, so evicting it changes nothing.

Memory is bounded by `max_clients`: the table is kept in least-recently-allowed
order and, when a new client arrives at a full table, the least recently allowed
client is dropped (O(1); if that client was still rate limited, it starts again
with a full bucket, the price of bounded memory; nginx answers 503 instead).

Exemptions (`rate_limit.exempt`, `exempt_header`): a client in an exempt network
is never refused, and a request carrying the shared secret neither counts nor is
refused. The data plane asks about the network only once `check` has refused (an
exempt client's own bucket empties, nobody else's), so the common request pays
nothing for it.
"""

from __future__ import annotations

import hmac
import math
from collections import OrderedDict

from edgeproxy.config import RateLimit
from edgeproxy.networks import Network, in_networks, parse_networks

# Float slack so that requests spaced exactly 1/rate apart are not refused
# because 0.1 has no exact binary representation.
_EPSILON = 1e-9


class RateLimiter:
    """`check(key, now)`: None when the request may pass, else seconds for `Retry-After`."""

    __slots__ = (
        "_interval",
        "_max_clients",
        "_table",
        "_tolerance",
        "burst",
        "config",
        "exempt_nets",
        "rate",
        "secret",
        "secret_header",
    )

    def __init__(
        self,
        rate: float,
        burst: int = 0,
        max_clients: int = 100_000,
        config: RateLimit | None = None,
        *,
        exempt: tuple[Network, ...] = (),
        secret_header: bytes | None = None,
        secret: bytes | None = None,
    ) -> None:
        if rate <= 0 or burst < 0 or max_clients < 1:
            raise ValueError("rate must be > 0, burst >= 0 and max_clients >= 1")
        self.rate = rate
        # The config it was built from: a reload keeps the limiter when this is unchanged.
        self.config = config
        self.burst = burst
        self._max_clients = max_clients
        self._interval = 1.0 / rate
        self._tolerance = burst * self._interval
        self._table: OrderedDict[str, float] = OrderedDict()
        self.exempt_nets = exempt
        """Client networks never refused (`rate_limit.exempt`)."""
        self.secret_header = secret_header
        """Lowercase name of the header whose value may be `secret` (`exempt_header.name`)."""
        self.secret = secret

    @classmethod
    def from_config(cls, cfg: RateLimit, secret: bytes | None = None) -> RateLimiter:
        """`secret`: the exempt_header's value, read by the caller (`ExemptHeader.secret()`)."""
        header = cfg.exempt_header
        return cls(
            cfg.rate,
            cfg.burst,
            cfg.max_clients,
            config=cfg,
            exempt=parse_networks(cfg.exempt),
            secret_header=header.name.lower().encode() if header is not None else None,
            secret=secret if header is not None else None,
        )

    def exempt_address(self, ip: str) -> bool:
        """True when `ip` is in an exempt network (asked only after `check` refused)."""
        return in_networks(ip, self.exempt_nets)

    def exempt_secret(self, presented: list[tuple[bytes, bytes]]) -> bool:
        """True when one of the (lowercase name, value) secret headers a request carried
        is this limiter's, with its value. Compared in constant time."""
        name, secret = self.secret_header, self.secret
        if name is None or secret is None:
            return False
        return any(n == name and hmac.compare_digest(v, secret) for n, v in presented)

    @property
    def clients(self) -> int:
        """How many clients are remembered (≤ max_clients).

        Deliberately not `__len__`: an empty limiter must still be truthy in
        `if policy.rate_limiter:`.
        """
        return len(self._table)

    def check(self, key: str, now: float) -> float | None:
        """Take a token for `key` at monotonic time `now` (seconds).

        Returns None when allowed; otherwise the whole number of seconds (≥ 1)
        until a request from `key` would be allowed, for `Retry-After`.
        """
        table = self._table
        tat = table.get(key)
        if tat is None:
            # A new client: its bucket is full. Make room first.
            if len(table) >= self._max_clients:
                table.popitem(last=False)
            table[key] = now + self._interval
            return None
        if tat < now:
            tat = now
        wait = tat - self._tolerance - now
        if wait > _EPSILON:
            return float(max(1, math.ceil(wait)))
        table[key] = tat + self._interval
        table.move_to_end(key)
        return None

    def expire(self, now: float) -> int:
        """Drop every client whose bucket is full again; returns how many (optional upkeep)."""
        stale = [k for k, tat in self._table.items() if tat <= now]
        for k in stale:
            del self._table[k]
        return len(stale)


def retry_after(seconds: float) -> bytes:
    """The `Retry-After` header value for what `check` returned."""
    return b"%d" % seconds
