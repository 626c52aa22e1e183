"""A route's policies, merged (route over site over global) and compiled once.

See the package docstring (`edgeproxy.policies`) for the order in which the
data plane calls these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgeproxy.config import Config, Policies, RateLimit, Route, Site, Timeouts
from edgeproxy.errors import ConfigError
from edgeproxy.policies.cache import REPLACED, CachePolicy
from edgeproxy.policies.cors import UPSTREAM_CORS_HEADERS, CorsPolicy
from edgeproxy.policies.gzip import GzipEncoder, GzipPolicy
from edgeproxy.policies.ratelimit import RateLimiter

Header = tuple[bytes, bytes]

_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VARY_ACCEPT_ENCODING: Header = (b"vary", b"Accept-Encoding")


@dataclass(frozen=True, slots=True, eq=False)
class RoutePolicy:
    """Everything a route applies, precomputed. Treat the lists as read-only."""

    response_headers: list[Header]
    """Added to every response, edgeproxy's own included (names lowercase)."""
    hide: frozenset[bytes]
    """Lowercase names removed from upstream responses (`proxy_hide_header`, the
    upstream's CORS headers when hidden, and every name in `response_headers`,
    so that the configured value replaces the upstream's instead of doubling it)."""
    max_body: int | None
    """Largest request body in bytes (413 above it); None: unlimited."""
    timeouts: Timeouts
    websocket: bool
    rate_limiter: RateLimiter | None
    cors: CorsPolicy | None
    gzip: GzipPolicy | None
    cache: CachePolicy | None
    passthrough: bool
    """True when `response_head` would return the upstream's headers unchanged."""

    def error_headers(self, origin: bytes | None = None) -> list[Header]:
        """Headers for a response edgeproxy writes itself (404, 413, 429, 502, 504 …)."""
        if self.cors is None:
            return self.response_headers
        out = list(self.response_headers)
        self.cors.add_response_headers(out, origin)
        return out

    def response_head(
        self,
        status: int,
        headers: list[Header],
        *,
        method: bytes,
        path: bytes,
        origin: bytes | None = None,
        accept_encoding: bytes | None = None,
        now: float | None = None,
    ) -> tuple[list[Header], GzipEncoder | None]:
        """The upstream's response head as the client gets it, plus a gzip encoder if any.

        `headers` are the upstream's (any name case); `path` is the client's
        request target (before prefix stripping; a query string is ignored);
        `now` is wall-clock seconds (for `Expires`). When an encoder is
        returned, `Content-Length` has been removed and `Content-Encoding:
        gzip` added: send the body through `encoder.feed`/`finish` with chunked
        framing (or close-delimited for HTTP/1.0 clients).
        """
        if self.passthrough:
            return headers, None
        hide = self.hide
        cache = self.cache
        cached = cache is not None and cache.matches(status, path)
        gz = self.gzip
        out: list[Header] = []
        ctype: bytes | None = None
        cenc: bytes | None = None
        clen: int | None = None
        cl_at = etag_at = -1
        no_transform = vary_has_ae = False
        for name, value in headers:
            n = name.lower()
            if n in hide or (cached and n in REPLACED):
                continue
            if gz is not None:
                # Only read what the gzip decision needs, and only when gzip is on.
                if n == b"content-type":
                    ctype = value
                elif n == b"content-length":
                    cl_at = len(out)
                    clen = int(value) if value.strip().isdigit() else None
                elif n == b"content-encoding":
                    cenc = value
                elif n == b"etag":
                    etag_at = len(out)
                elif n == b"cache-control":
                    no_transform = no_transform or value.lower().find(b"no-transform") != -1
                elif n == b"vary":
                    lv = value.lower()
                    # find(), not `in`: a bytes needle is first tried as an int (a TypeError raised and cleared)
                    vary_has_ae = (
                        vary_has_ae or lv.find(b"accept-encoding") != -1 or lv.strip() == b"*"
                    )
            out.append((name, value))
        out.extend(self.response_headers)
        if self.cors is not None:
            self.cors.add_response_headers(out, origin)
        if cached:
            assert cache is not None
            out.extend(cache.headers(now))
        if gz is None or not gz.vary(ctype, cenc, clen, status, method):
            return out, None
        if not vary_has_ae:
            out.append(_VARY_ACCEPT_ENCODING)
        if no_transform or not gz.accepts(accept_encoding):
            return out, None
        # The body changes: a strong validator becomes weak (as nginx does), the
        # length is unknown until the end.
        if etag_at >= 0:
            ename, evalue = out[etag_at]
            if evalue.startswith(b'"'):
                out[etag_at] = (ename, b"W/" + evalue)
        if cl_at >= 0:
            del out[cl_at]
        out.append((b"content-encoding", b"gzip"))
        return out, gz.encoder()


def _pick(site: Policies, route: Policies, name: str) -> Any:
    """The route's value when the route sets the key (even to null), else the site's."""
    return getattr(route if name in route.model_fields_set else site, name)


def _layer_timeouts(base: Timeouts, *layers: Timeouts | None) -> Timeouts:
    """Per key: route over site over global (`timeouts: {read: 300}` keeps the rest)."""
    merged = base.model_dump()
    for layer in layers:
        if layer is not None:
            merged.update(layer.model_dump(exclude_unset=True))
    return Timeouts.model_validate(merged)


def _header_list(where: str, headers: dict[str, str]) -> tuple[list[Header], set[bytes]]:
    """Validated (name, value) pairs to add, and every lowercase name they replace."""
    out: list[Header] = []
    names: set[bytes] = set()
    for name, value in headers.items():
        if not _TOKEN_RE.match(name):
            raise ConfigError([f"{where}response_headers: {name!r} is not a valid header name"])
        if _BAD_VALUE_RE.search(value):
            raise ConfigError(
                [f"{where}response_headers.{name}: the value contains a control character"]
            )
        lname = name.lower().encode()
        names.add(lname)
        if value.strip():
            # An empty value removes the header (the site's, and the upstream's).
            out.append((lname, value.strip().encode("latin-1")))
    return out, names


def compile_route_policy(
    site: Site,
    route: Route,
    *,
    tls: bool,
    config: Config | None = None,
    previous: RoutePolicy | None = None,
) -> RoutePolicy:
    """Merge route over site over global defaults and precompute everything.

    `config` supplies the global fallbacks (`timeouts`, `limits.max_body`).
    `previous` is this route's policy before a config reload: its rate limiter
    (and the clients it remembers) is kept when the rate limit is unchanged.
    """
    where = f"site {site.hosts[0]} route {route.path}: "
    merged = {**site.response_headers, **route.response_headers}
    # Later keys win case-insensitively: `x-frame-options` on a route replaces
    # `X-Frame-Options` from the site.
    by_lower: dict[str, tuple[str, str]] = {}
    for name, value in merged.items():
        by_lower[name.lower()] = (name, value)
    add, replaced = _header_list(where, dict(by_lower.values()))

    hsts: str | None = _pick(site, route, "hsts")
    if hsts is not None and hsts.strip():
        if "max-age=" not in hsts.lower():
            raise ConfigError(
                [
                    f"{where}hsts: {hsts!r} needs max-age=SECONDS, "
                    "e.g. max-age=31536000; includeSubDomains"
                ]
            )
        replaced.add(b"strict-transport-security")
        if tls:
            add.append((b"strict-transport-security", hsts.strip().encode("latin-1")))

    hide = {h.strip().lower().encode() for h in (*site.hide_headers, *route.hide_headers)}
    hide |= replaced

    rate_cfg: RateLimit | None = None if route.no_rate_limit else _pick(site, route, "rate_limit")
    limiter: RateLimiter | None = None
    if rate_cfg is not None:
        secret: bytes | None = None
        if rate_cfg.exempt_header is not None:
            try:
                secret = rate_cfg.exempt_header.secret()
            except ValueError as e:
                raise ConfigError([f"{where}rate_limit.exempt_header: {e}"]) from e
        old = previous.rate_limiter if previous is not None else None
        if old is not None and old.config == rate_cfg:
            limiter = old
            limiter.secret = secret  # a rotated secret takes effect on reload; buckets stay
        else:
            limiter = RateLimiter.from_config(rate_cfg, secret)

    cors_cfg = _pick(site, route, "cors")
    cors: CorsPolicy | None = None
    if cors_cfg is not None:
        try:
            cors = CorsPolicy(cors_cfg)
        except ValueError as e:
            raise ConfigError([f"{where}cors.{e}"]) from e
        if cors.hide_upstream:
            hide |= UPSTREAM_CORS_HEADERS

    gzip_cfg = _pick(site, route, "gzip")
    cache_cfg = _pick(site, route, "static_cache")
    max_body: int | None = _pick(site, route, "max_body")
    if max_body is None and config is not None:
        max_body = config.limits.max_body
    gzip = GzipPolicy(gzip_cfg) if gzip_cfg is not None else None
    cache = CachePolicy(cache_cfg) if cache_cfg is not None else None
    return RoutePolicy(
        response_headers=add,
        hide=frozenset(hide),
        max_body=max_body or None,  # 0 means unlimited, like client_max_body_size 0
        timeouts=_layer_timeouts(
            config.timeouts if config is not None else Timeouts(), site.timeouts, route.timeouts
        ),
        websocket=_pick(site, route, "websocket"),
        rate_limiter=limiter,
        cors=cors,
        gzip=gzip,
        cache=cache,
        passthrough=not (add or hide or cors or gzip or cache),
    )


def compile_route_policies(
    site: Site,
    route: Route,
    config: Config | None = None,
    previous: tuple[RoutePolicy, RoutePolicy] | None = None,
) -> tuple[RoutePolicy, RoutePolicy]:
    """`(plain, tls)` policies for one route, indexable by `is_tls`.

    They share one rate limiter, so a client's budget is the same whichever
    listener it comes in on.
    """
    tls = compile_route_policy(
        site, route, tls=True, config=config, previous=previous[1] if previous else None
    )
    plain = compile_route_policy(site, route, tls=False, config=config, previous=tls)
    return plain, tls


def compile_site_policy(site: Site, *, tls: bool, config: Config | None = None) -> RoutePolicy:
    """The site's own policies (no route's overrides), for responses when no route matched.

    Use its `error_headers()` on a 404 for a path no route of the site takes.
    """
    # A route that sets nothing: every key falls through to the site.
    bare = Route.model_construct(path="/")
    return compile_route_policy(site, bare, tls=tls, config=config)


def policy_problems(config: Config) -> list[str]:
    """Every problem `compile_route_policy` would raise for this config (for check-config)."""
    problems: list[str] = []
    for site in config.sites:
        for route in site.routes:
            try:
                compile_route_policy(site, route, tls=True, config=config)
            except ConfigError as e:
                problems.extend(e.problems)
    return problems
