"""`switchctl deploy`, `switchctl doctor` and `switchctl releases` (click commands).

Exit codes: 0 done / consistent; 1 the deploy failed (and was rolled back
when it could be) or doctor found inconsistencies; 2 the deploy config or env
file is invalid, or doctor found something that blocks a deploy; 3 another
deploy holds the lock; 4 the plan is blocked (nothing was changed).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click
import docker
import docker.errors

from switchctl.deploy.adopt import adopt as adopt_containers
from switchctl.deploy.config import DeployConfig, load_deploy_config, read_env_file, under_root
from switchctl.deploy.errors import DeployConfigError, DeployError, LockHeld
from switchctl.deploy.history import History
from switchctl.deploy.orchestrate import connect, deploy, stale_lock_note, survey
from switchctl.deploy.plan import Plan
from switchctl.deploy.progress import Progress

DEFAULT_CONFIG = Path("/etc/switchctl/deploy.yml")

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    envvar="SWITCHCTL_DEPLOY_CONFIG",
    help="The deploy config (env SWITCHCTL_DEPLOY_CONFIG).",
)


def server_root() -> Path:
    """`/`, or the scratch folder in SWITCHCTL_ROOT that stands for it (tests, rehearsals).

    Every absolute path in the deploy config, and the default -c path, is taken
    under it; a -c path given on the command line is used as it is.
    """
    return Path(os.environ.get("SWITCHCTL_ROOT") or "/")


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON event per line.")


def _load(config_path: Path) -> DeployConfig:
    root = server_root()
    if config_path == DEFAULT_CONFIG:
        config_path = under_root(config_path, root)
    try:
        return load_deploy_config(config_path, root=root)
    except DeployConfigError as e:
        _die(e, 2)


def _die(e: DeployError, code: int) -> NoReturn:
    click.echo(f"switchctl: {e.step} failed: {e.why}", err=True)
    if e.todo:
        click.echo(f"  what to do: {e.todo}", err=True)
    sys.exit(code)


@click.command("deploy")
@config_option
@click.option("--ref", help="Git ref / image tag to deploy (fills {ref} in `image`).")
@click.option("--check", is_flag=True, help="Validate the deploy config and env file, then exit.")
@click.option(
    "--plan", "plan_only", is_flag=True, help="Print what deploy would do; change nothing."
)
@click.option(
    "--adopt",
    is_flag=True,
    help="Take over the color containers running now without switchctl's labels "
    "(e.g. deploy.sh's medusa-server-blue), then exit; the next deploy treats the "
    "running color as the active one.",
)
@click.option(
    "--adopt-pattern",
    help="Their names, with {app}, {role} and {color} [default: the config's container_name].",
)
@json_option
def deploy_cmd(
    config_path: Path,
    ref: str | None,
    check: bool,
    plan_only: bool,
    adopt: bool,
    adopt_pattern: str | None,
    as_json: bool,
) -> None:
    """Release a new version with zero downtime, from whatever state the server is in."""
    cfg = _load(config_path)
    if adopt:
        _adopt(cfg, adopt_pattern, as_json)
        return
    if check:
        try:
            env = read_env_file(cfg.env_file, cfg.required_env)
        except DeployConfigError as e:
            _die(e, 2)
        click.echo(
            f"{config_path}: ok (app {cfg.app}, roles {', '.join(cfg.roles)}, "
            f"{len(env.values)} variables in {cfg.env_file})"
        )
        return
    _run(cfg, ref, plan_only, as_json)


def _adopt(cfg: DeployConfig, pattern: str | None, as_json: bool) -> None:
    try:
        client = docker.from_env()
        found = adopt_containers(cfg, client, pattern)
    except docker.errors.DockerException as e:
        _die(DeployError("adopt", str(e), "is dockerd running? `docker ps`"), 1)
    except DeployError as e:
        _die(e, 1)
    running = sorted({a.color for a in found if a.state == "running"})
    if as_json:
        click.echo(json.dumps({"adopted": [a.__dict__ for a in found], "running": running}))
        return
    for a in found:
        click.echo(f"adopted {a.name}: {a.color} {a.role} ({a.state})")
    if len(running) == 1:
        other = cfg.other(running[0])
        click.echo(
            f"{running[0]} runs now: the next deploy treats it as the active color, "
            f"releases to {other} and stops {running[0]} once {other} serves everything "
            "(`switchctl deploy --plan --ref SHA` shows the steps)"
        )
    else:
        click.echo(
            f"running colors: {', '.join(running) or 'none'}; "
            "`switchctl doctor` shows what the next deploy does about it"
        )


def _run(cfg: DeployConfig, ref: str | None, plan_only: bool, as_json: bool, **kw: Any) -> None:
    progress = Progress(json_lines=as_json)
    try:
        s = connect(cfg)
        p, rel = deploy(s, ref, progress, plan_only=plan_only, **kw)
    except LockHeld as e:
        _die(e, 3)
    except DeployConfigError as e:
        _die(e, 2)
    except DeployError as e:
        progress.event("deploy_failed", step=e.step, why=e.why, todo=e.todo)
        _die(e, 4 if e.step == "plan" else 1)
    if plan_only:
        click.echo(json.dumps(_plan_json(p)) if as_json else p.render())
        return
    assert rel is not None
    progress.event("deploy_ok", release=rel.id, color=rel.color, seconds=rel.duration_s)
    if not as_json:
        click.echo(f"release {rel.id} is live on {rel.color} ({rel.duration_s}s)")


def _plan_json(p: Plan) -> dict[str, Any]:
    return {
        "live": p.live,
        "target": p.target,
        "findings": [f.__dict__ for f in p.findings],
        "blockers": [f.__dict__ for f in p.blockers],
        "steps": [s.describe() for s in p.steps],
    }


@click.command("doctor")
@config_option
@json_option
def doctor_cmd(config_path: Path, as_json: bool) -> None:
    """Report inconsistencies (containers vs state file vs proxy) and what deploy would do."""
    cfg = _load(config_path)
    try:
        s = connect(cfg)
        obs, p = survey(s, stale_lock_note(s))
    except DeployError as e:
        _die(e, 2)
    if as_json:
        click.echo(json.dumps(_plan_json(p)))
    else:
        click.echo(
            f"edgeproxy: {obs.proxy.status}"
            + (f" ({obs.proxy.active} active)" if obs.proxy.active else "")
        )
        for c in obs.containers:
            click.echo(
                f"  {c.name}: {c.state}{' ' + c.health if c.health else ''} (release {c.release})"
            )
        if not p.findings and not p.blockers:
            click.echo(f"consistent: {p.live} serves; the next deploy goes to {p.target}")
        else:
            click.echo(p.render())
    sys.exit(2 if p.blockers else 1 if p.findings else 0)


@click.group("releases")
def releases_group() -> None:
    """Released versions (history) and rollback to a retained one."""


@releases_group.command("list")
@config_option
@json_option
def releases_list(config_path: Path, as_json: bool) -> None:
    """List releases, newest last."""
    cfg = _load(config_path)
    rels = History(cfg.history_file).load()
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in rels]))
        return
    for r in rels:
        at = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at))
        extra = f" at {r.failed_step}" if r.failed_step else ""
        click.echo(f"{r.id}  {at}  {r.color:6}  {r.outcome}{extra}  {r.image}  {r.git_sha or ''}")


@releases_group.command("rollback")
@config_option
@click.argument("release_id")
@json_option
def releases_rollback(config_path: Path, release_id: str, as_json: bool) -> None:
    """Redeploy RELEASE_ID's retained image through the same health checks and canary gates."""
    cfg = _load(config_path)
    rel = History(cfg.history_file).get(release_id)
    if rel is None or rel.outcome != "success":
        click.echo(
            f"switchctl: no successful release {release_id} (see `switchctl releases list`)",
            err=True,
        )
        sys.exit(2)
    _run(cfg, None, False, as_json, rollback_to=rel)


COMMANDS: list[click.Command] = [deploy_cmd, doctor_cmd, releases_group]


def register(group: click.Group) -> None:
    for cmd in COMMANDS:
        group.add_command(cmd)
