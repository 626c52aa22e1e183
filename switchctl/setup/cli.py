"""`switchctl setup`: make a fresh server ready for its first deploy (idempotent).

See SETUP_EXIT_CODES for what its exit codes mean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import docker
import docker.errors

from switchctl.deploy.commands import DEFAULT_CONFIG, _die, _load, config_option, server_root
from switchctl.deploy.config import DeployConfig, under_root
from switchctl.deploy.errors import DeployError
from switchctl.deploy.progress import Progress
from switchctl.setup.accounts import accounts_for
from switchctl.setup.execute import SetupExecutor
from switchctl.setup.observe import observe_setup
from switchctl.setup.plan import SetupObserved, SetupPlan, plan_setup


def _docker() -> tuple[docker.DockerClient | None, str]:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        return None, f"dockerd does not answer ({e})"
    return client, ""


def survey(
    cfg: DeployConfig, desired: Path | None, given: Path | None
) -> tuple[SetupObserved, SetupPlan, docker.DockerClient | None]:
    """Observe and plan; `given`: the -c file when it is not deploy's default path."""
    client, why = _docker()
    obs = observe_setup(cfg, accounts_for(cfg.root), client, why, desired, DEFAULT_CONFIG, given)
    return obs, plan_setup(obs), client


SETUP_EXIT_CODES = (
    "Exit codes: 0 set up (or nothing to do); 1 a step failed (the message says which "
    "and what to do; run it again once fixed: it picks up where it stopped); 2 the deploy "
    "config is invalid; 4 blocked (nothing was changed) or held (the steps it could do are "
    "done; the message says what the operator must provide)."
)


@click.command("setup", epilog=SETUP_EXIT_CODES)
@config_option
@click.option(
    "--edgeproxy-config",
    "desired",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The edgeproxy.yml to serve (checked, then installed; also kept as "
    "edgeproxy.config_source) [default: the live one].",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="The plan (--dry-run) or one event a line.")
def setup_cmd(config_path: Path, desired: Path | None, dry_run: bool, as_json: bool) -> None:
    """Prepare this server: users, folders, config, certificates, base stack, edgeproxy.

    With -c FILE (e.g. the deploy.yml shipped with a release) it checks FILE and
    installs it where `switchctl deploy` reads it (/etc/switchctl/deploy.yml);
    --edgeproxy-config FILE is checked with `edgeproxy check-config`, installed
    as the live config (edgeproxy reloads it) and as the known-good copy that
    deploy restores when the live one breaks (edgeproxy.config_source).

    Safe to run again at any time: it does only what is missing or different,
    and a second run changes nothing. SWITCHCTL_ROOT points it (and deploy) at a
    scratch folder standing for / (tests, rehearsals): users and groups are then
    recorded in ROOT/etc/passwd and ROOT/etc/group, never the system's.
    """
    cfg = _load(config_path)
    default = under_root(DEFAULT_CONFIG, server_root())
    given = None if config_path in (DEFAULT_CONFIG, default) else config_path
    obs, plan, client = survey(cfg, desired, given)
    if dry_run:
        click.echo(json.dumps(plan.as_json()) if as_json else plan.render())
        sys.exit(4 if plan.blockers else 0)
    progress = Progress(json_lines=as_json)
    if not as_json:
        for c in plan.checks:
            click.echo(f"{'ok' if c.ok else 'MISSING'}: {c.name}: {c.detail}")
    try:
        SetupExecutor(cfg, obs, accounts_for(cfg.root), client, progress).run(plan)
    except DeployError as e:
        progress.event("setup_failed", step=e.step, why=e.why, todo=e.todo)
        _die(e, 4 if e.step == "setup plan" else 1)
    progress.event("setup_done", held=plan.held, next=plan.next)
    if not as_json:
        click.echo("done" if plan.steps else "nothing to do: the server is set up")
        for h in plan.held:
            click.echo(f"HELD: {h}")
        if plan.next:
            click.echo("next:")
            for n in plan.next:
                click.echo(f"  - {n}")
    sys.exit(4 if plan.held else 0)
