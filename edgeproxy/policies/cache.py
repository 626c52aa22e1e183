"""Cache headers for static assets, like nginx
`location ~* \\.(js|css|png|…)$ { expires 1y; add_header Cache-Control "public, immutable"; }`.

The path pattern is compiled once, case-insensitive like `location ~*`, and
matched against the request path without its query string. Like nginx
`expires`, the headers replace the upstream's `Cache-Control`/`Expires` and are
only set on success and redirect statuses: a 404 must never be cached for a year.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from edgeproxy.config import StaticCache

# The statuses nginx's `expires` applies to.
CACHEABLE_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})
REPLACED = frozenset({b"cache-control", b"expires"})

Header = tuple[bytes, bytes]


class CachePolicy:
    """A route's compiled static-asset rule: `headers(status, path, now)`."""

    __slots__ = ("_cache_control", "_expires_at", "_expires_value", "_regex", "max_age")

    def __init__(self, cfg: StaticCache) -> None:
        self._regex = re.compile(cfg.pattern.encode(), re.IGNORECASE)
        self.max_age = cfg.max_age
        value = b"public, max-age=%d" % cfg.max_age
        if cfg.immutable:
            value += b", immutable"
        self._cache_control = value
        self._expires_at = -1
        self._expires_value = b""

    def matches(self, status: int, path: bytes) -> bool:
        """Does this response get the cache headers? `path` may carry a query string."""
        if status not in CACHEABLE_STATUSES:
            return False
        q = path.find(b"?")
        if q >= 0:
            path = path[:q]
        return self._regex.search(path) is not None

    def headers(self, now: float | None = None) -> list[Header]:
        """`Cache-Control` and `Expires` (now + max_age, formatted once per second)."""
        second = int(time.time() if now is None else now)
        if second != self._expires_at:
            # Formatting a date costs microseconds; do it once per second.
            self._expires_value = formatdate(second + self.max_age, usegmt=True).encode()
            self._expires_at = second
        return [(b"cache-control", self._cache_control), (b"expires", self._expires_value)]
