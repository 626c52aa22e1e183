"""The compose files: every container's logs are rotated, and docker-compose v1 reads the file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchctl.deploy.config import load_deploy_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yml"


def services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    out: dict[str, Any] = data["services"]
    return out


def size_in_bytes(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = value.strip().lower()
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


@pytest.mark.parametrize("name", sorted(services()))
def test_every_base_service_rotates_its_json_logs(name: str) -> None:
    logging = services()[name].get("logging")
    assert logging is not None, f"{name} has no logging section: its log file grows forever"
    assert logging["driver"] == "json-file"
    options = logging["options"]
    assert 0 < size_in_bytes(str(options["max-size"])) <= 100 * 1024**2
    assert 1 <= int(options["max-file"]) <= 20


def test_the_colors_switchctl_starts_get_the_same_rotation_by_default() -> None:
    cfg = load_deploy_config(ROOT / "compose" / "medusa" / "deploy.yml")
    assert cfg.logging.driver == "json-file"
    assert cfg.logging.options == services()["edgeproxy"]["logging"]["options"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_v1_accepts_the_base_stack_file_with_the_rotation() -> None:
    env = {**os.environ, "POSTGRES_PASSWORD": "x", "MEILI_MASTER_KEY": "y"}
    out = subprocess.run(
        ["docker-compose", "-p", "shop", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)["services"]
    assert all(s["logging"]["options"]["max-size"] == "10m" for s in resolved.values())
