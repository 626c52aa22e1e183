"""CORS header sets for allowed, refused and absent origins, and preflights."""

from __future__ import annotations

import pytest

from edgeproxy.config import Cors
from edgeproxy.policies.cors import CorsPolicy

Header = tuple[bytes, bytes]
SHOP = b"https://shop.example.com"


def actual(pol: CorsPolicy, origin: bytes | None) -> list[Header]:
    out: list[Header] = []
    pol.add_response_headers(out, origin)
    return out


def listed(**kw: object) -> CorsPolicy:
    origins = ["https://shop.example.com", "http://localhost:8000"]
    return CorsPolicy(Cors.model_validate({"allow_origins": origins, **kw}))


def test_a_listed_origin_is_echoed_with_vary_origin() -> None:
    assert actual(listed(), SHOP) == [
        (b"vary", b"Origin"),
        (b"access-control-allow-origin", SHOP),
    ]


def test_origin_comparison_ignores_case_but_echoes_what_was_sent() -> None:
    assert (b"access-control-allow-origin", b"HTTPS://Shop.Example.com") in actual(
        listed(), b"HTTPS://Shop.Example.com"
    )


def test_a_refused_or_absent_origin_gets_only_vary_origin() -> None:
    assert actual(listed(), b"https://evil.example.net") == [(b"vary", b"Origin")]
    assert actual(listed(), None) == [(b"vary", b"Origin")]


def test_credentials_and_expose_headers_go_only_to_allowed_origins() -> None:
    pol = listed(allow_credentials=True, expose_headers=["X-Request-ID", "ETag"])
    assert actual(pol, SHOP) == [
        (b"vary", b"Origin"),
        (b"access-control-allow-origin", SHOP),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", b"X-Request-ID, ETag"),
    ]
    assert actual(pol, b"https://evil.example.net") == [(b"vary", b"Origin")]


def test_star_without_credentials_is_a_constant_star_without_vary() -> None:
    pol = CorsPolicy(Cors(allow_origins=["*"]))
    assert actual(pol, SHOP) == [(b"access-control-allow-origin", b"*")]
    assert actual(pol, None) == [(b"access-control-allow-origin", b"*")]


def test_star_with_credentials_echoes_any_origin_because_browsers_refuse_star() -> None:
    pol = CorsPolicy(Cors(allow_origins=["*"], allow_credentials=True))
    assert actual(pol, b"https://any.example.org") == [
        (b"vary", b"Origin"),
        (b"access-control-allow-origin", b"https://any.example.org"),
        (b"access-control-allow-credentials", b"true"),
    ]


def test_a_preflight_from_a_listed_origin_is_answered_204_with_the_configured_lists() -> None:
    pol = listed(max_age=600)
    answer = pol.preflight(b"OPTIONS", SHOP, b"POST")
    assert answer == (
        204,
        [
            (b"vary", b"Origin"),
            (b"access-control-allow-origin", SHOP),
            (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            (b"access-control-allow-headers", b"Authorization, Content-Type, X-Meili-API-Key"),
            (b"access-control-max-age", b"600"),
        ],
    )


def test_a_preflight_from_a_refused_origin_is_403_without_cors_headers() -> None:
    assert listed().preflight(b"OPTIONS", b"https://evil.example.net", b"GET") == (
        403,
        [(b"vary", b"Origin")],
    )


@pytest.mark.parametrize(
    ("method", "origin", "acrm"),
    [(b"GET", SHOP, b"GET"), (b"OPTIONS", None, b"GET"), (b"OPTIONS", SHOP, None)],
)
def test_requests_that_are_not_preflights_go_upstream(
    method: bytes, origin: bytes | None, acrm: bytes | None
) -> None:
    assert listed().preflight(method, origin, acrm) is None


@pytest.mark.parametrize("origin", ["https://shop.example.com/path", "shop.example.com", "ftp://x"])
def test_an_allow_origins_entry_that_is_not_an_origin_is_a_config_error(origin: str) -> None:
    with pytest.raises(ValueError, match="is not an origin"):
        CorsPolicy(Cors(allow_origins=[origin]))


def test_a_trailing_slash_on_a_configured_origin_is_forgiven() -> None:
    pol = CorsPolicy(Cors(allow_origins=["https://shop.example.com/"]))
    assert pol.allowed(SHOP)
