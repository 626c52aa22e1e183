"""Merging route over site over global, and the response head the client gets."""

from __future__ import annotations

import gzip
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from edgeproxy.config import Config, Site, StaticCache, parse_config
from edgeproxy.errors import ConfigError
from edgeproxy.policies import (
    RoutePolicy,
    compile_route_policies,
    compile_route_policy,
    compile_site_policy,
)
from edgeproxy.policies.cache import CachePolicy

Header = tuple[bytes, bytes]

SECURITY = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def site(routes: list[dict[str, Any]], **kw: Any) -> Site:
    return Site.model_validate({"hosts": ["api.example.com"], "routes": routes, **kw})


def one(route: dict[str, Any] | None = None, *, tls: bool = True, **site_kw: Any) -> RoutePolicy:
    s = site([route or {"upstream": "http://127.0.0.1:9"}], **site_kw)
    return compile_route_policy(s, s.routes[0], tls=tls)


def head(
    pol: RoutePolicy,
    headers: list[Header],
    *,
    status: int = 200,
    method: bytes = b"GET",
    path: bytes = b"/",
    origin: bytes | None = None,
    accept_encoding: bytes | None = None,
) -> tuple[list[Header], bool]:
    out, enc = pol.response_head(
        status,
        headers,
        method=method,
        path=path,
        origin=origin,
        accept_encoding=accept_encoding,
        now=1_700_000_000.0,
    )
    return out, enc is not None


def test_security_headers_are_lowercased_and_hsts_is_added_only_for_tls() -> None:
    hsts = "max-age=31536000; includeSubDomains"
    tls = one(response_headers=SECURITY, hsts=hsts)
    plain = one(response_headers=SECURITY, hsts=hsts, tls=False)
    assert tls.response_headers == [
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"strict-origin-when-cross-origin"),
        (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    ]
    assert plain.response_headers == tls.response_headers[:3]


def test_route_headers_override_site_headers_case_insensitively_and_empty_removes() -> None:
    pol = one(
        {
            "upstream": "http://127.0.0.1:9",
            "response_headers": {"x-frame-options": "SAMEORIGIN", "Referrer-Policy": ""},
        },
        response_headers=SECURITY,
    )
    assert pol.response_headers == [
        (b"x-frame-options", b"SAMEORIGIN"),
        (b"x-content-type-options", b"nosniff"),
    ]
    assert b"referrer-policy" in pol.hide


def test_upstream_copies_of_configured_headers_are_replaced_not_doubled() -> None:
    pol = one(response_headers=SECURITY)
    out, _ = head(pol, [(b"X-Frame-Options", b"ALLOWALL"), (b"Content-Type", b"text/html")])
    assert out == [(b"Content-Type", b"text/html"), *pol.response_headers]


def test_hidden_headers_are_the_union_of_site_and_route_and_removed_in_any_case() -> None:
    pol = one(
        {"upstream": "http://127.0.0.1:9", "hide_headers": ["X-Powered-By"]},
        hide_headers=["Server"],
    )
    out, _ = head(pol, [(b"SERVER", b"express"), (b"x-powered-by", b"Express"), (b"a", b"1")])
    assert out == [(b"a", b"1")]


def test_a_route_setting_a_key_to_null_overrides_the_site_value() -> None:
    pol = one({"upstream": "http://127.0.0.1:9", "gzip": None}, gzip={})
    assert pol.gzip is None
    inherited = one(gzip={})
    assert inherited.gzip is not None


def test_no_rate_limit_drops_the_site_limiter() -> None:
    s = site(
        [
            {"path": "/", "upstream": "http://127.0.0.1:9"},
            {
                "path": "/health",
                "app": None,
                "upstream": "http://127.0.0.1:9",
                "no_rate_limit": True,
            },
        ],
        rate_limit={"rate": 10, "burst": 20},
    )
    api, health = (compile_route_policy(s, r, tls=True) for r in s.routes)
    assert api.rate_limiter is not None
    assert api.rate_limiter.burst == 20
    assert health.rate_limiter is None


def test_plain_and_tls_policies_share_one_limiter_and_a_reload_keeps_it_if_unchanged() -> None:
    s = site([{"upstream": "http://127.0.0.1:9"}], rate_limit={"rate": 10, "burst": 20})
    plain, tls = compile_route_policies(s, s.routes[0])
    assert plain.rate_limiter is tls.rate_limiter is not None
    again = compile_route_policies(s, s.routes[0], previous=(plain, tls))
    assert again[0].rate_limiter is tls.rate_limiter
    changed = site([{"upstream": "http://127.0.0.1:9"}], rate_limit={"rate": 10, "burst": 50})
    fresh = compile_route_policies(changed, changed.routes[0], previous=(plain, tls))
    assert fresh[1].rate_limiter is not tls.rate_limiter


def test_timeouts_are_layered_per_key_over_the_global_ones() -> None:
    cfg = parse_config("timeouts: {connect: 2, read: 30}\n")
    s = site(
        [{"upstream": "http://127.0.0.1:9", "timeouts": {"read": 300}}],
        timeouts={"send": 10},
    )
    pol = compile_route_policy(s, s.routes[0], tls=True, config=cfg)
    t = pol.timeouts
    assert (t.connect, t.read, t.send, t.upstream_idle) == (2, 300, 10, 4.0)


def test_max_body_comes_from_route_then_site_then_limits_and_zero_means_unlimited() -> None:
    cfg = Config()
    s = site(
        [
            {"path": "/", "upstream": "http://127.0.0.1:9"},
            {"path": "/upload", "upstream": "http://127.0.0.1:9", "max_body": "200M"},
            {"path": "/any", "upstream": "http://127.0.0.1:9", "max_body": 0},
        ],
        max_body="1M",
    )
    got = [compile_route_policy(s, r, tls=True, config=cfg).max_body for r in s.routes]
    assert got == [1024**2, 200 * 1024**2, None]
    bare = site([{"upstream": "http://127.0.0.1:9"}])
    assert compile_route_policy(bare, bare.routes[0], tls=True, config=cfg).max_body == 50 * 1024**2


def test_websocket_is_inherited_from_the_site_unless_the_route_sets_it() -> None:
    assert one(websocket=False).websocket is False
    assert one({"upstream": "http://127.0.0.1:9", "websocket": True}, websocket=False).websocket


def test_a_route_without_policies_passes_upstream_headers_through_untouched() -> None:
    pol = one()
    headers = [(b"content-type", b"application/json")]
    out, enc = head(pol, headers)
    assert pol.passthrough
    assert out is headers
    assert not enc
    assert pol.error_headers(b"https://x.example") == []


@pytest.mark.parametrize(
    ("where", "bad", "message"),
    [
        ("response_headers", {"Bad Name": "x"}, "not a valid header name"),
        ("response_headers", {"X-A": "a\r\nSet-Cookie: x=1"}, "control character"),
        ("hsts", "includeSubDomains", "needs max-age"),
        ("cors", {"allow_origins": ["https://x.example/path"]}, "is not an origin"),
    ],
)
def test_bad_policy_values_are_config_errors_naming_the_site_and_route(
    where: str, bad: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        one(**{where: bad})
    assert "site api.example.com route /" in str(e.value)


def test_cors_route_hides_upstream_cors_headers_and_adds_its_own() -> None:
    pol = one(
        {
            "upstream": "http://127.0.0.1:9",
            "cors": {"allow_origins": ["https://shop.example.com"]},
        },
        response_headers=SECURITY,
    )
    out, _ = head(
        pol,
        [(b"Access-Control-Allow-Origin", b"*"), (b"content-type", b"application/json")],
        origin=b"https://shop.example.com",
    )
    assert out == [
        (b"content-type", b"application/json"),
        *pol.response_headers,
        (b"vary", b"Origin"),
        (b"access-control-allow-origin", b"https://shop.example.com"),
    ]
    assert pol.error_headers(b"https://evil.example") == [
        *pol.response_headers,
        (b"vary", b"Origin"),
    ]


def test_gzip_response_drops_length_weakens_etag_and_adds_encoding_and_vary() -> None:
    pol = one(gzip={})
    out, enc = head(
        pol,
        [
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"20000"),
            (b"ETag", b'"abc"'),
        ],
        accept_encoding=b"gzip, br",
    )
    assert enc
    assert out == [
        (b"Content-Type", b"application/json"),
        (b"ETag", b'W/"abc"'),
        (b"vary", b"Accept-Encoding"),
        (b"content-encoding", b"gzip"),
    ]


def test_gzip_encoder_from_response_head_round_trips_the_body() -> None:
    pol = one(gzip={"min_length": 0})
    _, enc = pol.response_head(
        200, [(b"content-type", b"text/plain")], method=b"GET", path=b"/", accept_encoding=b"gzip"
    )
    assert enc is not None
    body = [b"hello " * 1000, b"world " * 1000]
    assert gzip.decompress(b"".join(enc.feed(c) for c in body) + enc.finish()) == b"".join(body)


def test_small_or_unaccepted_bodies_stay_plain_with_vary_only_when_compressible() -> None:
    pol = one(gzip={})
    small = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    out, enc = head(pol, small, accept_encoding=b"gzip")
    assert not enc
    assert out == small
    big = [(b"content-type", b"application/json"), (b"content-length", b"99999")]
    out, enc = head(pol, big, accept_encoding=b"identity")
    assert not enc
    assert out == [*big, (b"vary", b"Accept-Encoding")]


def test_no_transform_and_an_existing_vary_are_respected() -> None:
    pol = one(gzip={})
    hdrs = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"private, no-transform"),
        (b"vary", b"Accept-Encoding, Origin"),
    ]
    out, enc = head(pol, hdrs, accept_encoding=b"gzip")
    assert not enc
    assert out == hdrs


def test_static_assets_get_a_year_of_immutable_caching_replacing_the_upstreams() -> None:
    pol = one(static_cache={})
    out, _ = head(
        pol,
        [(b"Cache-Control", b"no-cache"), (b"Expires", b"0"), (b"content-type", b"text/css")],
        path=b"/app/main.3f2a.CSS?v=2",
    )
    assert out[0] == (b"content-type", b"text/css")
    assert out[1] == (b"cache-control", b"public, max-age=31536000, immutable")
    assert out[2][0] == b"expires"
    assert parsedate_to_datetime(out[2][1].decode()).timestamp() == 1_700_000_000 + 31536000


def test_static_cache_skips_other_paths_and_error_statuses() -> None:
    pol = one(static_cache={})
    hdrs = [(b"cache-control", b"no-store")]
    assert head(pol, hdrs, path=b"/admin/products")[0] == hdrs
    assert head(pol, hdrs, path=b"/main.js", status=404)[0] == hdrs
    assert head(pol, hdrs, path=b"/store/products?file=x.css")[0] == hdrs


def test_expires_is_formatted_once_per_second() -> None:
    cp = CachePolicy(StaticCache(max_age=60))
    a = cp.headers(1000.2)[1][1]
    b = cp.headers(1000.9)[1][1]
    assert a is b
    assert cp.headers(1001.0)[1][1] != a


def test_the_site_policy_applies_site_values_without_any_route_override() -> None:
    s = site(
        [{"upstream": "http://127.0.0.1:9", "response_headers": {"X-Frame-Options": "SAMEORIGIN"}}],
        response_headers={"X-Frame-Options": "DENY"},
        hsts="max-age=60",
    )
    pol = compile_site_policy(s, tls=True)
    assert pol.error_headers() == [
        (b"x-frame-options", b"DENY"),
        (b"strict-transport-security", b"max-age=60"),
    ]
