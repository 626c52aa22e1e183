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

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from switchctl.deploy.adopt import adopt as adopt_containers
from switchctl.deploy.config import DeployConfig, load_deploy_config, read_env_file, under_root
from switchctl.deploy.crosscheck import cross_check
from switchctl.deploy.errors import DeployConfigError, DeployError, LockHeld
from switchctl.deploy.history import History
from switchctl.deploy.hosts import check_hosts
from switchctl.deploy.orchestrate import (
    connect,
    deploy,
    deploy_running,
    stale_lock_note,
    survey,
)
from switchctl.deploy.plan import Plan
from switchctl.deploy.progress import Progress
from switchctl.deploy.smoke import referenced

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

HELP = {"help_option_names": ["-h", "--help"]}
"""-h on each command itself too: click caches a command's help option the first time it
is built, so a command first run on its own (scripts, tests) would otherwise lose -h."""

DEPLOY_EXIT_CODES = (
    "Exit codes: 0 live (--check: valid; --plan: nothing blocks); 1 the deploy failed "
    "(rolled back when it could be); 2 invalid deploy config or env file, or it disagrees "
    "with edgeproxy's config; 3 another deploy holds the lock; 4 blocked by the plan "
    "(nothing was changed; the message says what to fix)."
)
DOCTOR_EXIT_CODES = (
    "Exit codes: 0 everything agrees; 1 inconsistencies a deploy repairs; 2 something "
    "blocks a deploy (the message says what to fix), or the deploy config is invalid."
)
RELEASES_EXIT_CODES = (
    "Exit codes: 0 ok; 1 the rollback deploy failed; 2 invalid deploy config or unknown "
    "release; 3 another deploy holds the lock; 4 blocked by the plan."
)


def _config_path(config_path: Path) -> Path:
    """The default -c path is taken under SWITCHCTL_ROOT; a path given on the command line is not."""
    return under_root(config_path, server_root()) if config_path == DEFAULT_CONFIG else config_path


def _load(config_path: Path, as_json: bool = False) -> DeployConfig:
    try:
        return load_deploy_config(_config_path(config_path), root=server_root())
    except DeployConfigError as e:
        _die(e, 2, as_json)


def _die(e: DeployError, code: int, as_json: bool = False) -> NoReturn:
    """The error on stderr; with --json also one JSON line on stdout for scripts."""
    if as_json:
        click.echo(json.dumps({"error": e.why, "step": e.step, "todo": e.todo, "exit": code}))
    click.echo(f"switchctl: {e.step} failed: {e.why}", err=True)
    if e.todo:
        click.echo(f"  what to do: {e.todo}", err=True)
    sys.exit(code)


@click.command("deploy", epilog=DEPLOY_EXIT_CODES, context_settings=HELP)
@config_option
@click.option("--ref", help="Git ref / image tag to deploy (fills {ref} in `image`).")
@click.option(
    "--check",
    is_flag=True,
    help="Validate the deploy config and env file, compare them with edgeproxy's config, then exit.",
)
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
    if adopt:
        _adopt(_load(config_path, as_json), adopt_pattern, as_json)
        return
    if check:
        sys.exit(_check(config_path, as_json))
    cfg = _load(config_path, as_json)
    _run(cfg, ref, plan_only, as_json)


def _check(config_path: Path, as_json: bool) -> int:
    """`deploy --check`: every problem of the deploy config, the env file and their agreement
    with edgeproxy's config, in one run. Returns the exit code."""
    problems: list[str] = []
    notes: list[str] = []
    report: dict[str, Any] = {"config": str(config_path)}
    try:
        cfg: DeployConfig | None = load_deploy_config(_config_path(config_path), root=server_root())
    except DeployConfigError as e:
        cfg, problems = None, list(e.problems)
    if cfg is not None:
        report |= {"app": cfg.app, "roles": list(cfg.roles), "env_file": str(cfg.env_file)}
        try:
            env = read_env_file(cfg.env_file, cfg.required_env)
            report["variables"] = len(env.values)
            problems += [
                f"smoke.checks: ${{{name}}} is used in a header or body but is not set in "
                f"{cfg.env_file}"
                for name in sorted(referenced(cfg.smoke))
                if not env.values.get(name)
            ]
        except DeployConfigError as e:
            problems += e.problems
        if cfg.hosts:
            hosts, unreachable = check_hosts(cfg)
            report["hosts"] = [h.as_json() for h in hosts]
            problems += unreachable
        proxy_file = next(
            (p for p in (cfg.edgeproxy.config, cfg.edgeproxy.config_source) if p and p.exists()),
            None,
        )
        if proxy_file is None:
            notes.append(
                f"not compared with edgeproxy's config: {cfg.edgeproxy.config} does not exist "
                "(edgeproxy.config)"
            )
        else:
            report["edgeproxy_config"] = str(proxy_file)
            try:
                problems += cross_check(cfg, load_config(proxy_file), str(proxy_file))
            except ConfigError as e:
                problems += e.problems
    report |= {"ok": not problems, "problems": problems, "notes": notes}
    if as_json:
        click.echo(json.dumps(report))
    else:
        for p in problems:
            click.echo(f"switchctl: {p}", err=True)
        for n in notes:
            click.echo(f"note: {n}")
        if not problems and cfg is not None:
            compared = f", agrees with {proxy_file}" if proxy_file else ""
            click.echo(
                f"{config_path}: ok (app {cfg.app}, roles {', '.join(cfg.roles)}, "
                f"{report['variables']} variables in {cfg.env_file}{compared})"
            )
        for h in report.get("hosts", []):
            state = f"dockerd {h['version']}" if h["ok"] else f"UNREACHABLE: {h['error']}"
            click.echo(f"host {h['name']}: {h['docker']}, upstreams at {h['address']}: {state}")
    return 2 if problems else 0


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
        _die(e, 3, as_json)
    except DeployConfigError as e:
        _die(e, 2, as_json)
    except DeployError as e:
        progress.event("deploy_failed", step=e.step, why=e.why, todo=e.todo)
        _die(e, 4 if e.step == "plan" else 1)
    if plan_only:
        click.echo(json.dumps(_plan_json(p)) if as_json else p.render())
        if p.blockers:
            sys.exit(4)
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


@click.command("doctor", epilog=DOCTOR_EXIT_CODES, context_settings=HELP)
@config_option
@json_option
def doctor_cmd(config_path: Path, as_json: bool) -> None:
    """Report inconsistencies (containers vs state file vs proxy) and what deploy would do."""
    cfg = _load(config_path, as_json)
    try:
        s = connect(cfg)
        obs, p = survey(s, stale_lock_note(s), deploy_running(s))
    except DeployError as e:
        _die(e, 2, as_json)
    if as_json:
        click.echo(json.dumps(_plan_json(p)))
    else:
        click.echo(
            f"edgeproxy: {obs.proxy.status}"
            + (f" ({obs.proxy.active} active)" if obs.proxy.active else "")
        )
        for c in obs.containers:
            where = f" on {c.host}" if c.host else ""
            click.echo(
                f"  {c.name}{where}: {c.state}{' ' + c.health if c.health else ''} "
                f"(release {c.release})"
            )
        for h in obs.hooks:
            whose = (
                "left by a deploy that did not finish" if h in obs.orphans else "its deploy runs"
            )
            click.echo(f"  {h.name}: {h.state} (one-off container of deploy {h.release}, {whose})")
        if not p.findings and not p.blockers:
            click.echo(f"consistent: {p.live} serves; the next deploy goes to {p.target}")
        else:
            click.echo(p.render())
    sys.exit(2 if p.blockers else 1 if p.findings else 0)


@click.group("releases", epilog=RELEASES_EXIT_CODES, context_settings=HELP)
def releases_group() -> None:
    """Released versions (history) and rollback to a retained one."""


@releases_group.command("list", epilog=RELEASES_EXIT_CODES)
@config_option
@json_option
def releases_list(config_path: Path, as_json: bool) -> None:
    """List releases, newest last."""
    cfg = _load(config_path, as_json)
    rels = History(cfg.history_file).load()
    if as_json:
        click.echo(json.dumps([r.model_dump() for r in rels]))
        return
    for r in rels:
        at = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_at))
        extra = f" at {r.failed_step}" if r.failed_step else ""
        click.echo(f"{r.id}  {at}  {r.color:6}  {r.outcome}{extra}  {r.image}  {r.git_sha or ''}")


@releases_group.command("rollback", epilog=RELEASES_EXIT_CODES)
@config_option
@click.argument("release_id")
@json_option
def releases_rollback(config_path: Path, release_id: str, as_json: bool) -> None:
    """Redeploy RELEASE_ID's retained image through the same health checks and canary gates."""
    cfg = _load(config_path, as_json)
    rel = History(cfg.history_file).get(release_id)
    if rel is None or rel.outcome != "success":
        if as_json:
            click.echo(json.dumps({"error": f"no successful release {release_id}", "exit": 2}))
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
