"""The setup planner (pure): each finding becomes its step; what the operator must do is said."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from switchctl.setup.plan import (
    Check,
    ConfigObs,
    DirObs,
    DirWant,
    ServiceObs,
    SetupObserved,
    plan_setup,
)

CONFIG = 'control:\n  group: "2000"\n  allow_gids: [2000]\n'


def set_up() -> SetupObserved:
    """A server where everything is in place."""
    return SetupObserved(
        app="shop",
        user="deploy",
        group="deploy",
        uid=2000,
        gid=2000,
        user_groups=frozenset({"deploy", "docker"}),
        extra_groups=("docker",),
        accounts_where="scratch",
        checks=(Check("docker compose", True, "docker compose"),),
        dirs=(
            (
                DirWant(Path("/etc/edgeproxy"), 0o2775, "root", "deploy"),
                DirObs(True, 0o2775, 0, 2000),
            ),
        ),
        env_file=Path("/etc/shop/app.env"),
        env_file_exists=True,
        env_missing=(),
        compose_env_file=Path("/etc/shop/base.env"),
        compose_env_exists=True,
        compose_env_missing=(),
        config=ConfigObs(
            live=CONFIG,
            raw=CONFIG,
            desired=CONFIG,
            desired_from="x",
            source=CONFIG,
            has_source=True,
        ),
        deploy_config_path=Path("/etc/switchctl/deploy.yml"),
        deploy_config_given=None,
        deploy_config_live="app: shop\n",
        certs=(),
        compose_file=Path("/srv/stack/docker-compose.yml"),
        services=(ServiceObs("db", "running"), ServiceObs("edgeproxy", "running")),
        proxy_status=None,
        proxy_in_compose=True,
        webroot=Path("/var/www/certbot"),
        certs_dest=Path("/etc/edgeproxy/certs"),
        certbot=True,
    )


def test_a_server_that_is_set_up_plans_no_step_and_no_blocker() -> None:
    p = plan_setup(set_up())
    assert (p.steps, p.blockers, p.held) == ([], [], [])


def test_missing_base_stack_secrets_hold_only_the_stack_and_name_each_variable() -> None:
    obs = dataclasses.replace(
        set_up(),
        services=(ServiceObs("db", "missing"), ServiceObs("edgeproxy", "missing")),
        compose_env_missing=("POSTGRES_PASSWORD", "MEILI_MASTER_KEY"),
        dirs=((DirWant(Path("/etc/edgeproxy"), 0o2775, "root", "deploy"), DirObs(False)),),
    )
    p = plan_setup(obs)
    assert [s.kind for s in p.steps] == ["make_dir"]
    [held] = p.held
    assert "POSTGRES_PASSWORD, MEILI_MASTER_KEY missing from /etc/shop/base.env" in held


def test_a_changed_config_is_installed_kept_as_the_source_and_reloaded_into_the_running_proxy() -> (
    None
):
    new = CONFIG + "# changed\n"
    obs = dataclasses.replace(
        set_up(), config=dataclasses.replace(set_up().config, raw=new, desired=new)
    )
    assert [s.kind for s in plan_setup(obs).steps] == [
        "install_config",
        "update_config_source",
        "reload_proxy",
    ]


def test_an_invalid_config_blocks_everything_with_each_problem() -> None:
    cfg = dataclasses.replace(
        set_up().config, desired="x", problems=("listen.http: expected HOST:PORT",)
    )
    p = plan_setup(dataclasses.replace(set_up(), config=cfg))
    assert p.blockers and "listen.http: expected HOST:PORT" in p.blockers[0]
