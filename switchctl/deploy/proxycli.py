"""`switchctl proxy status` and `switchctl proxy upgrade --image IMAGE` (edgeproxy itself).

Exit codes: 0 done; 1 the upgrade did not happen (the message says why; the
running edgeproxy keeps serving); 3 edgeproxy's control socket does not answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import docker

from switchctl.cli import Options
from switchctl.deploy.errors import DeployError
from switchctl.deploy.proxyupgrade import upgrade_container

EXIT_CODES = (
    "Exit codes: 0 done; 1 the upgrade did not happen or the proxy refused (the message says "
    "why; the running edgeproxy keeps serving); 2 usage error; 3 edgeproxy's control socket "
    "does not answer (proxy status)."
)


@click.group("proxy", epilog=EXIT_CODES)
def proxy_group() -> None:
    """edgeproxy itself: which process serves, and upgrading it without a refused connection."""


def _options(ctx: click.Context) -> Options:
    opts = ctx.find_object(Options)
    assert isinstance(opts, Options), "switchctl's group sets its options"
    return opts


@proxy_group.command("status", epilog=EXIT_CODES)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def proxy_status(ctx: click.Context, as_json: bool) -> None:
    """Which edgeproxy process serves: pid, version, start time, the hand-over it came from."""
    from switchctl.cli import format_process

    opts = _options(ctx)
    view = opts.client().process()
    if view is None:
        raise click.ClickException("this edgeproxy is older than the hand-over (no /v1/process)")
    click.echo(json.dumps(view, indent=2) if as_json or opts.as_json else format_process(view))


@proxy_group.command("upgrade", epilog=EXIT_CODES)
@click.option("--image", required=True, help="The image to run edgeproxy from, e.g. edgeproxy:NEW.")
@click.option("--container", default="edgeproxy", show_default=True, help="edgeproxy's container.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds the new container has to take over.",
)
@click.option(
    "--old-exit-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds the old container has to finish its requests and exit (its shutdown_grace "
    "bounds it) before it is stopped.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def proxy_upgrade(
    ctx: click.Context,
    image: str,
    container: str,
    timeout: float,
    old_exit_timeout: float,
    as_json: bool,
) -> None:
    """Run edgeproxy from IMAGE in place of CONTAINER: the new container takes the listening
    sockets and switch state over (no refused connection), the old one finishes and is
    removed, and the new one takes its name (compose still manages it)."""
    opts = _options(ctx)
    started = time.monotonic()
    say = (lambda line: None) if as_json else (lambda line: click.echo(f"switchctl: {line}"))
    try:
        done = upgrade_container(
            docker.from_env(),
            container,
            image,
            Path(opts.socket),
            timeout=timeout,
            old_exit_timeout=old_exit_timeout,
            say=say,
        )
    except DeployError as e:
        if as_json:
            click.echo(json.dumps({"error": e.why, "todo": e.todo}))
        click.echo(f"switchctl: {e}", err=True)
        ctx.exit(1)
    if as_json:
        click.echo(json.dumps(asdict(done) | {"seconds": round(time.monotonic() - started, 1)}))
        return
    click.echo(
        f"switchctl: {container} now runs {image} (edgeproxy {done.new_version}, hand-over "
        f"{done.handover_id}); the old container exited {done.old_exited_after:.1f} s after "
        "the new one accepted"
    )
