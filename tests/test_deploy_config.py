"""Deploy config and env file validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from switchctl.deploy.config import load_deploy_config, parse_deploy_config, read_env_file
from switchctl.deploy.errors import DeployConfigError

GOOD = """
app: shop
image: ghcr.io/acme/shop:{ref}
env_file: app.env
required_env: [DATABASE_URL, JWT_SECRET]
roles:
  server: {traffic: true, ports: {blue: 9000, green: 9002}, health_path: /health}
  worker: {ports: {blue: 9001, green: 9003}, command: "node worker.js"}
edgeproxy: {container: edgeproxy, socket: /run/edgeproxy/control.sock}
base_services: [shop-postgres]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(DeployConfigError) as e:
        parse_deploy_config(text, "deploy.yml")
    return e.value.problems


def test_a_good_config_loads_with_paths_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "deploy.yml").write_text(GOOD)
    cfg = load_deploy_config(tmp_path / "deploy.yml")
    assert cfg.env_file == tmp_path / "app.env"
    assert cfg.server_role == "server"
    assert cfg.container_for("worker", "green") == "shop-worker-green"
    assert cfg.roles["worker"].command == ["sh", "-c", "node worker.js"]
    assert cfg.image_for("abc123") == "ghcr.io/acme/shop:abc123"
    assert cfg.canary.steps == [10, 25, 50, 100]


def test_unknown_keys_are_errors_that_name_the_key() -> None:
    out = problems(GOOD + "canary: {stepz: [50, 100]}\n")
    assert out == [
        "deploy.yml: canary.stepz: unknown key; remove it or check its spelling against "
        "compose/deploy.example.yml"
    ]


def test_image_and_build_are_exclusive_and_one_is_required() -> None:
    assert (
        "exactly one of `image`" in problems(GOOD.replace("image: ghcr.io/acme/shop:{ref}", ""))[0]
    )
    both = GOOD + "build: {context: .}\n"
    assert "exactly one of `image`" in problems(both)[0]


def test_two_roles_on_one_port_are_refused_naming_both() -> None:
    out = problems(GOOD.replace("green: 9003", "green: 9002"))
    assert "port 9002 is already used by server/green" in out[0]


def test_canary_steps_must_climb_to_100() -> None:
    assert "must end at 100" in problems(GOOD + "canary: {steps: [10, 50]}\n")[0]
    assert "increasing" in problems(GOOD + "canary: {steps: [50, 10, 100]}\n")[0]


def test_edgeproxy_runs_as_a_container_a_systemd_unit_or_unmanaged_and_only_one_of_them() -> None:
    text = GOOD.replace("{container: edgeproxy,", "{container: edgeproxy, systemd_unit: e.service,")
    assert "exactly one of `container`, `systemd_unit` or `unmanaged: true`" in problems(text)[0]
    neither = GOOD.replace("{container: edgeproxy,", "{")
    assert "exactly one of" in problems(neither)[0]
    unmanaged = parse_deploy_config(GOOD.replace("{container: edgeproxy,", "{unmanaged: true,"))
    assert unmanaged.edgeproxy.unmanaged


def test_an_image_template_needs_a_ref() -> None:
    cfg = parse_deploy_config(GOOD)
    with pytest.raises(DeployConfigError, match="needs --ref"):
        cfg.image_for(None)


def write_env(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_env_file_values_are_parsed_and_never_shown_in_repr(tmp_path: Path) -> None:
    p = write_env(
        tmp_path / "app.env",
        "# secrets\nexport DATABASE_URL='postgres://u:p@db/shop'\nJWT_SECRET=\"s3cr3t\"\n\nEMPTY=\n",
    )
    env = read_env_file(p, ["DATABASE_URL", "JWT_SECRET"])
    assert env.values["DATABASE_URL"] == "postgres://u:p@db/shop"
    assert env.values["JWT_SECRET"] == "s3cr3t"
    assert "s3cr3t" not in repr(env)


def test_a_missing_required_variable_is_named_with_the_file(tmp_path: Path) -> None:
    p = write_env(tmp_path / "app.env", "DATABASE_URL=x\nJWT_SECRET=\n")
    with pytest.raises(DeployConfigError) as e:
        read_env_file(p, ["DATABASE_URL", "JWT_SECRET", "COOKIE_SECRET"])
    assert e.value.problems == [
        f"JWT_SECRET is missing from {p}",
        f"COOKIE_SECRET is missing from {p}",
    ]


def test_an_env_file_readable_by_others_is_refused_with_the_chmod_to_run(tmp_path: Path) -> None:
    p = write_env(tmp_path / "app.env", "A=1\n", 0o644)
    with pytest.raises(DeployConfigError) as e:
        read_env_file(p, [])
    assert e.value.problems == [
        f"env_file {p}: mode is 0644; it holds secrets, run `chmod 600 {p}`"
    ]


def test_a_malformed_env_line_is_reported_without_its_value(tmp_path: Path) -> None:
    p = write_env(tmp_path / "app.env", "A=1\nthis is secret-ish\n")
    with pytest.raises(DeployConfigError) as e:
        read_env_file(p, [])
    assert e.value.problems == [f"env_file {p}:2: expected KEY=VALUE (the value is not shown)"]
    assert "secret-ish" not in str(e.value)


COMPOSE = Path(__file__).resolve().parent.parent / "compose"


@pytest.mark.parametrize("name", ["deploy.example.yml", "medusa/deploy.yml"])
def test_the_shipped_deploy_configs_are_valid(name: str) -> None:
    cfg = load_deploy_config(COMPOSE / name)
    assert cfg.roles[cfg.server_role].ports == {"blue": 9000, "green": 9002}


def test_the_medusa_deploy_config_matches_the_medusa_edgeproxy_config() -> None:
    from edgeproxy.config import load_config

    deploy = load_deploy_config(COMPOSE / "medusa" / "deploy.yml")
    proxy = load_config(COMPOSE / "medusa" / "edgeproxy.yml")
    app = proxy.apps[deploy.app]
    for color, port in deploy.roles[deploy.server_role].ports.items():
        assert app.colors[color].upstreams == [f"http://127.0.0.1:{port}"]
    assert app.health.path == deploy.roles[deploy.server_role].health_path


def test_the_compose_file_mounts_edgeproxy_directories_not_single_files() -> None:
    import yaml

    stack = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = stack["services"]
    assert {"postgres", "redis", "meilisearch", "edgeproxy", "portainer", "uptime-kuma"} <= set(
        services
    )
    assert services["postgres"]["image"] == "postgres:15"
    assert services["redis"]["image"] == "redis:7"
    for mount in services["edgeproxy"]["volumes"]:
        host = mount.split(":")[0]
        assert "." not in Path(host).name, f"{mount} looks like a single file"
    base = load_deploy_config(COMPOSE / "medusa" / "deploy.yml").base_services
    names = {s.get("container_name") for s in services.values()}
    assert set(base) <= names


def test_the_medusa_configs_pass_the_cross_check_that_deploy_check_runs() -> None:
    from edgeproxy.config import load_config
    from switchctl.deploy.crosscheck import cross_check

    deploy = load_deploy_config(COMPOSE / "medusa" / "deploy.yml")
    proxy = load_config(COMPOSE / "medusa" / "edgeproxy.yml")
    assert cross_check(deploy, proxy, "edgeproxy.yml") == []
