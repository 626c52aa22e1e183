"""CORS for a route (Meilisearch behind `/search/`), answered by edgeproxy.

Three origin modes, chosen once from the config:

- `allow_origins: ["*"]` without credentials: `Access-Control-Allow-Origin: *`
  on every response (cache-safe, nothing depends on the request).
- `allow_origins: ["*"]` with `allow_credentials`: browsers refuse `*` with
  credentials, so any origin is echoed back, with `Vary: Origin`.
- a list of origins: the request's origin is echoed when listed; the answer
  depends on the request's `Origin`, so `Vary: Origin` is set on every response
  of the route (allowed, refused or no Origin at all), keeping shared caches right.

A refused origin gets no CORS headers on actual responses (the browser then
blocks the page from reading them) and **403** on a preflight, with no CORS
headers. nginx-style configs answer 204 without the headers; the browser's
outcome is the same, and a 403 shows up in the access log and the metrics as
what it is. The preflight is answered with the configured method and header
lists whatever the request asked for: the browser does the comparing.
"""

from __future__ import annotations

import re

from edgeproxy.config import Cors

Header = tuple[bytes, bytes]

_ORIGIN_RE = re.compile(r"^(https?://([a-z0-9.-]+|\[[0-9a-f:]+\])(:\d{1,5})?|null)$")

# What an upstream may say about CORS; hidden when `hide_upstream` is set.
UPSTREAM_CORS_HEADERS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)

ACAO = b"access-control-allow-origin"
VARY_ORIGIN: Header = (b"vary", b"Origin")


class CorsPolicy:
    """A route's compiled CORS rule."""

    __slots__ = (
        "_allowed_extra",
        "_any",
        "_echo",
        "_origins",
        "_preflight_extra",
        "_star",
        "hide_upstream",
    )

    def __init__(self, cfg: Cors) -> None:
        origins = [o.strip().lower().rstrip("/") for o in cfg.allow_origins]
        for o in origins:
            if o != "*" and not _ORIGIN_RE.match(o):
                raise ValueError(
                    f"allow_origins: {o!r} is not an origin; write scheme://host[:port] "
                    "such as https://shop.example.com (no path), or * for any"
                )
        self._any = "*" in origins
        # `*` is only usable as a literal header value without credentials.
        self._star = self._any and not cfg.allow_credentials
        self._echo = not self._star
        self._origins = frozenset(o.encode() for o in origins if o != "*")
        self.hide_upstream = cfg.hide_upstream

        allowed: list[Header] = []
        if cfg.allow_credentials:
            allowed.append((b"access-control-allow-credentials", b"true"))
        if cfg.expose_headers:
            allowed.append(
                (b"access-control-expose-headers", ", ".join(cfg.expose_headers).encode())
            )
        self._allowed_extra = allowed
        pre: list[Header] = []
        if cfg.allow_credentials:
            pre.append((b"access-control-allow-credentials", b"true"))
        if cfg.allow_methods:
            pre.append((b"access-control-allow-methods", ", ".join(cfg.allow_methods).encode()))
        if cfg.allow_headers:
            pre.append((b"access-control-allow-headers", ", ".join(cfg.allow_headers).encode()))
        pre.append((b"access-control-max-age", b"%d" % cfg.max_age))
        self._preflight_extra = pre

    def allowed(self, origin: bytes | None) -> bool:
        if not origin:
            return False
        return self._any or origin.lower() in self._origins

    def _allow_origin(self, origin: bytes | None) -> Header | None:
        """The `Access-Control-Allow-Origin` header for this origin, or None if refused."""
        if self._star:
            return (ACAO, b"*")
        if origin and (self._any or origin.lower() in self._origins):
            return (ACAO, origin)
        return None

    def add_response_headers(self, out: list[Header], origin: bytes | None) -> None:
        """Append the CORS headers of an actual (non-preflight) response to `out`."""
        if self._echo:
            out.append(VARY_ORIGIN)
        acao = self._allow_origin(origin)
        if acao is not None:
            out.append(acao)
            out.extend(self._allowed_extra)

    def preflight(
        self, method: bytes, origin: bytes | None, request_method: bytes | None
    ) -> tuple[int, list[Header]] | None:
        """Answer a preflight: (204 or 403, headers), or None when this is not one.

        A preflight is `OPTIONS` with both `Origin` and
        `Access-Control-Request-Method`; any other request goes upstream.
        """
        if method != b"OPTIONS" or not origin or not request_method:
            return None
        headers: list[Header] = [VARY_ORIGIN] if self._echo else []
        acao = self._allow_origin(origin)
        if acao is None:
            return 403, headers
        headers.append(acao)
        headers.extend(self._preflight_extra)
        return 204, headers
