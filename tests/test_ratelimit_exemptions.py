"""Rate-limit exemptions: `rate_limit.exempt` (client networks) and `exempt_header`
(a shared secret for a storefront server whose addresses change), on real sockets."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.config import Config, ExemptHeader, RateLimit
from edgeproxy.policies import policy_problems
from edgeproxy.policies.ratelimit import RateLimiter
from tests.proxy_fixtures import Backend, Edge

SECRET = "s3cr3t-storefront-0123456789abcdef"
ENV = "EDGEPROXY_TEST_STOREFRONT_SECRET"


def limited_site(upstream: str, **rate_limit: Any) -> dict[str, Any]:
    """One site, one route, 1 request per 100 s with a burst of 2 (3 pass, then 429)."""
    return {
        "sites": [
            {
                "hosts": ["shop.test"],
                "https_redirect": False,
                "rate_limit": {"rate": 0.01, "burst": 2, **rate_limit},
                "routes": [{"path": "/", "upstream": upstream}],
            }
        ]
    }


def get(port: int, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path, headers={"Host": "shop.test", **(headers or {})})
    r = c.getresponse()
    out = (r.status, r.read())
    c.close()
    return out


def statuses(port: int, n: int, headers: dict[str, str] | None = None) -> list[int]:
    return [get(port, f"/p{i}", headers)[0] for i in range(n)]


def test_a_client_in_an_exempt_network_is_never_answered_429(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    b = backend("shop")
    proxy = edge(limited_site(b.url, exempt=["127.0.0.0/8"]))
    assert statuses(proxy.http_port, 30) == [200] * 30
    assert len(b.seen) == 30


def test_a_client_outside_the_exempt_networks_is_still_limited(
    edge: Callable[..., Edge], backend: Callable[[str], Backend]
) -> None:
    b = backend("shop")
    proxy = edge(limited_site(b.url, exempt=["10.0.0.0/8", "::1/128"]))
    assert statuses(proxy.http_port, 6) == [200] * 3 + [429] * 3


def test_the_secret_header_bypasses_the_limit_and_never_reaches_the_upstream(
    edge: Callable[..., Edge],
    backend: Callable[[str], Backend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, SECRET)
    b = backend("shop")
    proxy = edge(
        limited_site(b.url, exempt_header={"name": "X-Storefront-Secret", "value_env": ENV})
    )
    assert statuses(proxy.http_port, 30, {"X-Storefront-Secret": SECRET}) == [200] * 30
    status, body = get(proxy.http_port, "/headers", {"x-storefront-secret": SECRET})
    assert status == 200
    seen = json.loads(body)
    assert "x-storefront-secret" not in seen
    assert SECRET not in body.decode()
    assert all("X-Storefront-Secret" not in r.headers for r in b.seen)
    # The secret's requests took no token: this address still has its whole burst.
    assert statuses(proxy.http_port, 4) == [200] * 3 + [429]


def test_a_wrong_secret_is_limited_like_no_secret_and_is_not_forwarded_either(
    edge: Callable[..., Edge],
    backend: Callable[[str], Backend],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV, SECRET)
    b = backend("shop")
    proxy = edge(
        limited_site(b.url, exempt_header={"name": "X-Storefront-Secret", "value_env": ENV})
    )
    wrong = {"X-Storefront-Secret": SECRET[:-1] + "X"}
    assert statuses(proxy.http_port, 5, wrong) == [200] * 3 + [429] * 2
    assert statuses(proxy.http_port, 1, {"X-Storefront-Secret": SECRET[:8]}) == [429]
    assert all("X-Storefront-Secret" not in r.headers for r in b.seen)


def test_the_secret_can_come_from_a_file(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tmp_path: Path
) -> None:
    secret_file = tmp_path / "storefront_secret"
    secret_file.write_text(SECRET + "\n")  # `echo … > file` leaves a newline
    b = backend("shop")
    proxy = edge(
        limited_site(
            b.url,
            exempt_header={"name": "X-Storefront-Secret", "value_file": str(secret_file)},
        )
    )
    assert statuses(proxy.http_port, 10, {"X-Storefront-Secret": SECRET}) == [200] * 10


def test_exempt_header_takes_exactly_one_source_and_never_the_secret_itself() -> None:
    with pytest.raises(ValueError, match="exactly one of value_env"):
        ExemptHeader(name="X-Storefront-Secret")
    with pytest.raises(ValueError, match="exactly one of value_env"):
        ExemptHeader(name="X-S", value_env="A", value_file=Path("/run/secrets/s"))
    with pytest.raises(ValueError, match="Extra inputs"):
        ExemptHeader.model_validate({"name": "X-S", "value": SECRET})
    with pytest.raises(ValueError, match="absolute path"):
        ExemptHeader(name="X-S", value_file=Path("secret.txt"))
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 network"):
        RateLimit(rate=1, exempt=["10.0.0.0/33"])


def test_check_config_names_the_route_and_the_unset_variable_or_the_short_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = limited_site(
        "http://127.0.0.1:1", exempt_header={"name": "X-Storefront-Secret", "value_env": ENV}
    )
    monkeypatch.delenv(ENV, raising=False)
    problems = policy_problems(Config.model_validate(conf))
    assert problems == [
        f"site shop.test route /: rate_limit.exempt_header: environment variable {ENV} "
        "is not set; set it in edgeproxy's environment"
    ]
    monkeypatch.setenv(ENV, "short")
    (problem,) = policy_problems(Config.model_validate(conf))
    assert "shorter than 16 characters" in problem
    monkeypatch.setenv(ENV, SECRET)
    assert policy_problems(Config.model_validate(conf)) == []


def test_a_config_reload_with_a_rotated_secret_keeps_the_buckets_and_takes_the_new_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgeproxy.policies import compile_route_policies

    conf = Config.model_validate(
        limited_site(
            "http://127.0.0.1:1", exempt_header={"name": "X-Storefront-Secret", "value_env": ENV}
        )
    )
    site, route = conf.sites[0], conf.sites[0].routes[0]
    monkeypatch.setenv(ENV, SECRET)
    before = compile_route_policies(site, route, conf)
    monkeypatch.setenv(ENV, SECRET + "-rotated")
    after = compile_route_policies(site, route, conf, previous=before)
    limiter = after[1].rate_limiter
    assert limiter is before[1].rate_limiter
    assert limiter is not None
    key = b"x-storefront-secret"
    assert limiter.exempt_secret([(key, (SECRET + "-rotated").encode())])
    assert not limiter.exempt_secret([(key, SECRET.encode())])


def test_only_the_limiters_own_header_name_and_value_exempt() -> None:
    rl = RateLimiter.from_config(
        RateLimit(
            rate=1, exempt_header=ExemptHeader(name="X-Storefront-Secret", value_env="UNUSED")
        ),
        SECRET.encode(),
    )
    assert rl.exempt_secret([(b"x-storefront-secret", SECRET.encode())])
    assert not rl.exempt_secret([(b"x-other-secret", SECRET.encode())])
    assert not rl.exempt_secret([(b"x-storefront-secret", b"")])
    assert not RateLimiter(rate=1).exempt_secret([(b"x-storefront-secret", SECRET.encode())])


@pytest.mark.parametrize(
    ("ip", "exempt"),
    [("127.0.0.1", True), ("10.1.2.3", True), ("192.0.2.1", False), ("::1", False), ("", False)],
)
def test_exempt_address_matches_the_configured_networks_only(ip: str, exempt: bool) -> None:
    rl = RateLimiter.from_config(RateLimit(rate=1, exempt=["127.0.0.0/8", "10.0.0.0/8"]))
    assert rl.exempt_address(ip) is exempt
