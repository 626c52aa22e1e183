"""Per-route policies: everything the nginx templates did, compiled once per route.

`compile_route_policies(site, route, config)` (at config load) returns the
`(plain, tls)` pair of `RoutePolicy` objects for a route, indexable by
`is_tls`; they differ only in HSTS and share one rate limiter. Bad policy
values raise `ConfigError` naming the site and route; `policy_problems(config)`
lists them all (for `edgeproxy check-config`). Everything is
precomputed: per request there are no regex compiles, no string formatting
when a policy is off, and `policy.passthrough` says when a route has nothing
to do on responses at all.

The data plane calls them in this order (nginx's phase order: the body size
is checked when the location is found, a preflight `return` runs in the
rewrite phase, `limit_req` in the pre-access phase):

1. **Body size** — `policy.max_body` (None: unlimited): a `Content-Length`
   above it, or a chunked body growing past it, is answered 413.
2. **CORS preflight** — `if policy.cors and method == b"OPTIONS"`:
   `answer = policy.cors.preflight(method, origin, access_control_request_method)`;
   when not None it is `(204 or 403, headers)`: reply with those headers plus
   `policy.response_headers`, empty body, never calling the upstream (and
   not counting against the rate limit: it costs nothing upstream).
3. **Rate limit** — `if policy.rate_limiter`:
   `wait = policy.rate_limiter.check(client_key, loop.time())`; when not None,
   reply 429 with `(b"retry-after", retry_after(wait))` plus
   `policy.error_headers(origin)`. `client_key` is the connection's address or
   the trusted forwarded one (the data plane decides). Routes with
   `no_rate_limit` (e.g. `/health`) have no limiter.
4. **WebSocket** — an `Upgrade` request on a route where `policy.websocket` is
   False is forwarded without the upgrade headers (or refused; data plane's call).
5. **Forward** with `policy.timeouts` (connect/read/send/idle, already merged
   route over site over global).
6. **Response head** — `headers, encoder = policy.response_head(status,
   upstream_headers, method=…, path=client_target, origin=…,
   accept_encoding=…)` (skip when `policy.passthrough`): removes `policy.hide`,
   adds the security headers, CORS, static-asset cache headers and
   `Vary: Accept-Encoding`; when `encoder` is not None the body is gzip'd:
   `Content-Length` is already gone and `Content-Encoding: gzip` added, so
   frame it chunked, send `encoder.feed(chunk)` for each upstream chunk
   (skip empty results) and `encoder.finish()` at the end.
7. **Own responses** (404, 413, 429, 502, 504, redirects …) carry
   `policy.error_headers(origin)` (security headers, HSTS on TLS, CORS); when
   the site matched but no route did, use `compile_site_policy(site, tls=…)`'s
   (compiled at load too); when no site matched, there is no policy.
"""

from edgeproxy.policies.cache import CachePolicy
from edgeproxy.policies.compiled import (
    RoutePolicy,
    compile_route_policies,
    compile_route_policy,
    compile_site_policy,
    policy_problems,
)
from edgeproxy.policies.cors import CorsPolicy
from edgeproxy.policies.gzip import GzipEncoder, GzipPolicy, accepts_gzip
from edgeproxy.policies.ratelimit import RateLimiter, retry_after

__all__ = [
    "CachePolicy",
    "CorsPolicy",
    "GzipEncoder",
    "GzipPolicy",
    "RateLimiter",
    "RoutePolicy",
    "accepts_gzip",
    "compile_route_policies",
    "compile_route_policy",
    "compile_site_policy",
    "policy_problems",
    "retry_after",
]
