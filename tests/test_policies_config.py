"""The shipped configs: the MedusaJS stack's edgeproxy.yml and the annotated example.

What these verify: the files pass `edgeproxy check-config` (the model: keys,
types, cross-field rules), every route's policies compile, and the Medusa file
says what the nginx templates did. They do not verify that the certificate
files exist: check-config validates the model only (CI has no certificates);
files are checked when edgeproxy starts, or with `certs check`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from edgeproxy.config import Config, load_config
from edgeproxy.policies import RoutePolicy, compile_route_policies, policy_problems

ROOT = Path(__file__).resolve().parent.parent
MEDUSA = ROOT / "compose" / "medusa" / "edgeproxy.yml"
EXAMPLE = ROOT / "compose" / "edgeproxy.example.yml"


@pytest.mark.parametrize("path", [MEDUSA, EXAMPLE], ids=["medusa", "example"])
def test_the_shipped_config_passes_edgeproxy_check_config(path: Path) -> None:
    # The example's rate-limit exemption reads its secret from this variable.
    env = {**os.environ, "EDGEPROXY_STOREFRONT_SECRET": "a-long-random-storefront-secret"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeproxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert ": ok (" in proc.stdout


@pytest.mark.parametrize("path", [MEDUSA, EXAMPLE], ids=["medusa", "example"])
def test_every_route_policy_of_the_shipped_config_compiles(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEPROXY_STOREFRONT_SECRET", "a-long-random-storefront-secret")
    assert policy_problems(load_config(path)) == []


def medusa_policies() -> tuple[Config, dict[tuple[str, str], RoutePolicy]]:
    cfg = load_config(MEDUSA)
    out = {}
    for site in cfg.sites:
        for route in site.routes:
            out[site.hosts[0].split(".")[0], route.path] = compile_route_policies(site, route, cfg)[
                True
            ]
    return cfg, out


def headers_of(policy: RoutePolicy) -> dict[bytes, bytes]:
    return dict(policy.response_headers)


def test_medusa_runs_blue_and_green_on_the_ports_the_templates_used() -> None:
    cfg, _ = medusa_policies()
    app = cfg.apps["medusa"]
    assert {c: col.upstreams for c, col in app.colors.items()} == {
        "blue": ["http://127.0.0.1:9000"],
        "green": ["http://127.0.0.1:9002"],
    }
    assert app.health.path == "/health"
    assert cfg.acme.webroot is not None
    assert all(s.https_redirect for s in cfg.sites)
    assert all(str(c.cert).startswith("/etc/edgeproxy/certs/") for c in cfg.tls.certificates)


def test_medusa_api_denies_framing_and_admin_uis_allow_same_origin() -> None:
    _, pol = medusa_policies()
    assert headers_of(pol["api", "/"])[b"x-frame-options"] == b"DENY"
    for ui in ("portainer", "status"):
        h = headers_of(pol[ui, "/"])
        assert h[b"x-frame-options"] == b"SAMEORIGIN"
        assert h[b"strict-transport-security"] == b"max-age=31536000; includeSubDomains"
        assert pol[ui, "/"].websocket


def test_medusa_rate_limits_the_api_and_search_differently_and_never_health() -> None:
    _, pol = medusa_policies()
    api, search, health = pol["api", "/"], pol["api", "/search/"], pol["api", "/health"]
    assert api.rate_limiter is not None
    assert (api.rate_limiter.rate, api.rate_limiter.burst) == (10, 20)
    assert search.rate_limiter is not None
    assert search.rate_limiter.burst == 50
    assert health.rate_limiter is None


def test_medusa_search_route_answers_cors_itself_and_strips_its_prefix() -> None:
    cfg, pol = medusa_policies()
    search = pol["api", "/search/"]
    assert search.cors is not None
    assert b"access-control-allow-origin" in search.hide
    assert search.cors.preflight(b"OPTIONS", b"https://shop.example.com", b"POST") is not None
    route = next(r for r in cfg.sites[0].routes if r.path == "/search/")
    assert route.strip_prefix
    assert route.upstream == "http://127.0.0.1:7700"


def test_medusa_api_compresses_json_and_caches_static_assets_and_allows_50m_bodies() -> None:
    _, pol = medusa_policies()
    api = pol["api", "/"]
    assert api.gzip is not None
    assert api.gzip.min_length == 10240
    assert api.gzip.type_matches(b"application/json; charset=utf-8")
    assert api.cache is not None
    assert api.cache.matches(200, b"/app/assets/index-3f2a.js")
    assert api.max_body == 50 * 1024**2


def _owner(model: type[BaseModel], field: str) -> str:
    """The class that declares `field` (Site and Route share Policies' keys)."""
    return next(
        c.__name__
        for c in reversed(model.__mro__)
        if isinstance(c, type) and issubclass(c, BaseModel) and field in c.model_fields
    )


def _models_in(tp: Any) -> list[type[BaseModel]]:
    """The config models inside an annotation (`X`, `X | None`, `list[X]`, `dict[str, X]`)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, dict):
        return _models_in(args[-1])
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _models_in(a)]
    return []


def _all_keys(model: type[BaseModel], seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    keys: set[str] = set()
    if model.__name__ in seen:
        return keys
    seen.add(model.__name__)
    for name, field in model.model_fields.items():
        keys.add(f"{_owner(model, name)}.{name}")
        for sub in _models_in(field.annotation):
            keys |= _all_keys(sub, seen)
    return keys


def _shown_keys(model: type[BaseModel], data: Any) -> set[str]:
    """The keys `data` sets, walking it along the model."""
    keys: set[str] = set()
    if not isinstance(data, dict):
        return keys
    for name, value in data.items():
        field = model.model_fields[name]
        keys.add(f"{_owner(model, name)}.{name}")
        subs = _models_in(field.annotation)
        if not subs:
            continue
        items: list[Any] = [value]
        if isinstance(value, list):
            items = value
        elif isinstance(value, dict) and typing.get_origin(field.annotation) is dict:
            items = list(value.values())
        for item in items:
            keys |= _shown_keys(subs[0], item)
    return keys


def test_the_example_config_shows_every_key_of_the_config_model() -> None:
    shown = _shown_keys(Config, yaml.safe_load(EXAMPLE.read_text()))
    missing = sorted(_all_keys(Config) - shown)
    assert missing == [], f"document these keys in {EXAMPLE.name}: {missing}"
