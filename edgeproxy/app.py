"""Wiring: build a Server with its plugins (control API, health, metrics) from a config."""

from __future__ import annotations

from pathlib import Path

from edgeproxy.config import Config
from edgeproxy.server import Server


def build_server(config: Config, config_path: Path | None = None) -> Server:
    return Server(config, config_path=config_path)
