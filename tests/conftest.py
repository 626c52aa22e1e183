"""Shared test setup: hypothesis profiles ("ci" by default, "deep" on demand)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from edgeproxy.config import Config

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile(
    "deep", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def make_config() -> Callable[..., Config]:
    """`make_config(shop=("blue", "green"))` → a Config with those apps and colors."""

    def build(control: dict[str, Any] | None = None, **apps: tuple[str, ...]) -> Config:
        return Config.model_validate(
            {
                "control": control or {},
                "apps": {
                    name: {"colors": {c: {"upstreams": ["http://127.0.0.1:9"]} for c in colors}}
                    for name, colors in apps.items()
                },
            }
        )

    return build
