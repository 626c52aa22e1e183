"""switchctl: the operator's CLI for edgeproxy's blue/green switch (talks to the control socket).

Every command validates its arguments before it sends anything, has `--json`
for scripts, and exits 0 ok, 1 refused by the proxy, 2 usage error, 3 proxy
unreachable, 4 (status, health) an app has no healthy color, so nothing can
serve it. The `deploy` commands live in `switchctl.deploy` and register
themselves on the `cli` group below when that package is installed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from edgeproxy import __version__
from edgeproxy.config import COLOR_RE
from edgeproxy.switching.state import FULL
from switchctl import nodes
from switchctl.client import (
    DEFAULT_SOCKET,
    AppView,
    ControlClient,
    ControlError,
    ProxyUnreachable,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOTHING_SERVES = 0, 1, 2, 3, 4
EXIT_STORE_DOWN, EXIT_NODES_BEHIND = 5, 6
EXIT_CODES = (
    "Exit codes: 0 ok; 1 refused by the proxy (the message says why); "
    "2 usage error; 3 proxy unreachable (is edgeproxy running? is --socket right?); "
    "5 the shared state store (Redis) is unreachable, nothing was changed; "
    "6 (--wait-nodes) committed, but a node had not applied it in time."
)
EXIT_CODES_HEALTH = EXIT_CODES.removesuffix(".") + (
    "; 4 an app has no healthy color, so nothing can serve it."
)
DEPLOY_CONFIG = "/etc/switchctl/deploy.yml"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    socket: str
    app: str | None
    as_json: bool

    def client(self) -> ControlClient:
        return ControlClient(self.socket)


class _Group(click.Group):
    """Turns the client's errors into a message on stderr and the documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ControlError as e:
            _fail(ctx, e.message, e.status, EXIT_STORE_DOWN if e.status == 503 else EXIT_REFUSED)
        except ProxyUnreachable as e:
            _fail(ctx, e.describe(_deploy_config_hint(e.socket_path)), None, EXIT_UNREACHABLE)


def _deploy_config_hint(socket_path: str) -> str | None:
    """How edgeproxy runs here, from the deploy config when it names this socket."""
    from switchctl.deploy.config import load_deploy_config
    from switchctl.deploy.errors import DeployConfigError

    path = os.environ.get("SWITCHCTL_DEPLOY_CONFIG") or DEPLOY_CONFIG
    try:
        proxy = load_deploy_config(path).edgeproxy
    except (DeployConfigError, OSError):
        return None
    return proxy.hint() if str(proxy.socket) == socket_path else None


def _fail(ctx: click.Context, message: str, status: int | None, code: int) -> None:
    if isinstance(ctx.obj, Options) and ctx.obj.as_json:
        click.echo(json.dumps({"error": message, "status": status}))
    click.echo(f"switchctl: {message}", err=True)
    ctx.exit(code)


def common(f: F) -> F:
    """`--app` and `--json` on every command (they may also come before the command)."""
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)
    return click.option(
        "--app", default=None, help="App to act on (optional when the proxy has exactly one)."
    )(f)


def _opts(ctx: click.Context, app: str | None, as_json: bool) -> Options:
    """The group's options, updated with the ones given after the command name."""
    found = ctx.find_object(Options)
    opts = found if isinstance(found, Options) else Options(DEFAULT_SOCKET, None, False)
    opts.app = app or opts.app
    opts.as_json = as_json or opts.as_json
    ctx.obj = opts
    return opts


def _color(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not COLOR_RE.match(value):
        raise click.BadParameter(
            f"{value!r} is not a color name (lowercase letters, digits, - or _)"
        )
    return value


def resolve_app(opts: Options, client: ControlClient) -> str:
    if opts.app:
        return opts.app
    apps = sorted(client.apps())
    if len(apps) == 1:
        return apps[0]
    listed = ", ".join(apps) if apps else "none are configured"
    raise click.UsageError(f"--app is required: the proxy has {len(apps)} apps ({listed})")


@click.group(
    cls=_Group,
    epilog=EXIT_CODES_HEALTH,
    context_settings={"show_default": True, "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="switchctl")
@click.option(
    "--socket",
    "socket_path",
    envvar="EDGEPROXY_SOCKET",
    show_envvar=True,
    default=DEFAULT_SOCKET,
    help="edgeproxy's control socket.",
)
@click.option("--app", default=None, help="App to act on (optional when there is exactly one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def cli(ctx: click.Context, socket_path: str, app: str | None, as_json: bool) -> None:
    """Switch edgeproxy's traffic between an app's colors (blue/green, canary weights)."""
    ctx.obj = Options(socket_path, app, as_json)


# --- rendering ------------------------------------------------------------------------------


def _table(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    ]


def _fmt(value: Any, suffix: str = "", spec: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def format_status(views: dict[str, AppView], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [["APP", "ACTIVE", "CANDIDATE", "DRAINING", "PAUSED", "GEN"]]
    for name, v in sorted(views.items()):
        candidate = f"{v['candidate']} {v['weight']}%" if v["candidate"] else "-"
        if not v.get("released", True):
            candidate = "(not released yet: visitors get 503 maintenance)"
        draining = ", ".join(
            f"{c} ({max(0.0, d['deadline'] - now):.0f}s left)" for c, d in v["draining"].items()
        )
        rows.append(
            [name, v["active"], candidate, draining or "-", "yes" if v["paused"] else "no",
             str(v["generation"])]
        )  # fmt: skip
    lines = _table(rows)
    for name, v in sorted(views.items()):
        lines.append("")
        header = (
            f"{name}: guard backed out the canary: {v['guard']['reason']}"
            if v["guard"]
            else f"{name}:"
        )
        lines.append(header)
        if v.get("set_aside"):
            copy = v.get("set_aside_copy")
            where = f"; the file as it was: {copy}" if copy else ""
            lines.append(f"  SAVED STATE SET ASIDE AT BOOT{where}:")
            lines.extend(f"    - {note}" for note in v["set_aside"])
        color_rows = [["COLOR", "WEIGHT", "IN-FLIGHT", "TUNNELS", "HEALTH", "ERR", "P99"]]
        for color, c in v["colors"].items():
            health = "healthy" if c.get("healthy", True) else "UNHEALTHY"
            if c.get("failing_checks"):
                health += " (" + "; ".join(c["failing_checks"]) + ")"
            color_rows.append(
                [color, f"{v['weights'].get(color, 0)}%", _fmt(c.get("in_flight")),
                 _fmt(c.get("tunnels")), health, _fmt(_pct(c.get("error_rate")), "%", ".2f"),
                 _fmt(c.get("p99_ms"), "ms", ".1f")]
            )  # fmt: skip
        lines.extend(_table(color_rows, indent="  "))
        upstream_rows = format_upstreams(v["colors"], now)
        if upstream_rows:
            lines.extend(["", *_table(upstream_rows, indent="  ")])
    return "\n".join(lines)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def format_process(proc: dict[str, Any]) -> str:
    """`edgeproxy 0.2.0, pid 4321, serving since ... (took over from pid 4300, version 0.1.0)`."""
    line = (
        f"edgeproxy {proc.get('version')}, pid {proc.get('pid')}, serving since "
        f"{_utc(float(proc.get('started_at') or 0))}"
    )
    took = proc.get("took_over")
    if took:
        line += (
            f" (took over from pid {took.get('from_pid')}, version {took.get('from_version')}, "
            f"hand-over {took.get('id')})"
        )
    return line


def format_upstreams(colors: dict[str, Any], now: float) -> list[list[str]]:
    """One row per upstream of each color (empty when the proxy reports none)."""
    rows = [["COLOR", "UPSTREAM", "FIT", "CHECK", "EJECTIONS", "DETAILS"]]
    for color, c in colors.items():
        for u in c.get("upstreams") or []:
            fit = "yes" if u.get("healthy") else "NO"
            if u.get("ejected_until"):
                fit += f" (ejected, {max(0.0, u['ejected_until'] - now):.0f}s left)"
            rows.append(
                [color, u["url"], fit, str(u.get("check", "-")), _fmt(u.get("ejections")),
                 u.get("failing") or "-"]
            )  # fmt: skip
    return rows if len(rows) > 1 else []


def _pct(rate: float | None) -> float | None:
    return None if rate is None else rate * 100


def format_weights(v: AppView) -> str:
    shares = " · ".join(f"{c} {w}%" for c, w in v["weights"].items() if w)
    if not v.get("released", True):
        shares = f"not released yet ({v['active']} is next; visitors get 503 maintenance)"
    extra = " · paused" if v["paused"] else ""
    if v["draining"]:
        extra += " · draining " + ", ".join(v["draining"])
    return f"{v['app']}: {shares}{extra} (generation {v['generation']})"


def _app_verb(
    ctx: click.Context,
    app: str | None,
    as_json: bool,
    call: Callable[[ControlClient, str], AppView],
) -> None:
    """Run one change on the resolved app and show the new weights."""
    opts = _opts(ctx, app, as_json)
    client = opts.client()
    view = call(client, resolve_app(opts, client))
    click.echo(json.dumps(view, indent=2) if opts.as_json else format_weights(view))


# --- commands -------------------------------------------------------------------------------


def _exit_if_nothing_serves(ctx: click.Context, colors_by_app: dict[str, dict[str, Any]]) -> None:
    """Exit 4 naming each app whose every color is unhealthy (nothing can serve it)."""
    dead = [
        app
        for app, colors in sorted(colors_by_app.items())
        if colors and not any(c.get("healthy", True) for c in colors.values())
    ]
    for app in dead:
        click.echo(
            f"switchctl: nothing can serve {app}: every color is unhealthy "
            f"(`switchctl health --app {app}` shows why)",
            err=True,
        )
    if dead:
        ctx.exit(EXIT_NOTHING_SERVES)


_BY_PROTOCOL = re.compile(
    r'^edgeproxy_connections_(open_by_protocol|by_protocol_total)\{protocol="([^"]+)"\} ([0-9.e+]+)$',
    re.M,
)


def connection_kinds(metrics: str) -> dict[str, tuple[int, int]]:
    """{protocol: (open, accepted since start)} from the metrics text (http/1.1, h2)."""
    kinds: dict[str, list[int]] = {}
    for family, proto, value in _BY_PROTOCOL.findall(metrics):
        kinds.setdefault(proto, [0, 0])[family != "open_by_protocol"] = int(float(value))
    return {proto: (v[0], v[1]) for proto, v in kinds.items()}


@cli.command(epilog=EXIT_CODES_HEALTH)
@common
@click.pass_context
def status(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Show every app's colors, weights, drains, health and in-flight requests."""
    opts = _opts(ctx, app, as_json)
    client = opts.client()
    views = {opts.app: client.app(opts.app)} if opts.app else client.apps()
    if opts.as_json:
        click.echo(json.dumps(views, indent=2))
    else:
        click.echo(format_status(views))
        cluster = nodes.cluster_or_none(client)
        if cluster is not None:
            click.echo("\n" + nodes.format_nodes(cluster))
        certs = client.certs().get("certificates", [])
        if certs:
            click.echo("\ncertificates:")
            for c in certs:
                names = ", ".join(c.get("sans", [])) or c.get("subject", "?")
                click.echo(
                    f"  {names}: expires {c.get('not_after')} ({c.get('days_left')} days left)"
                )
        proc = client.process()
        if proc is not None:
            click.echo("\n" + format_process(proc))
        kinds = connection_kinds(client.metrics())
        if kinds:
            click.echo("\nclient connections (open / since start):")
            for proto, (open_now, total) in kinds.items():
                click.echo(f"  {proto}: {open_now} / {total}")
    _exit_if_nothing_serves(ctx, {name: dict(v["colors"]) for name, v in views.items()})


@cli.command("set", epilog=EXIT_CODES)
@click.argument("color", callback=_color)
@click.option(
    "--weight",
    type=click.IntRange(0, FULL),
    default=FULL,
    help="COLOR's share of new requests in percent; 100 makes it the active color.",
)
@click.option("--force", is_flag=True, help="Switch even if COLOR fails its health checks.")
@click.option(
    "--wait-nodes",
    is_flag=True,
    help="With a shared state: return once every live edge node serves the change.",
)
@click.option(
    "--wait-timeout",
    type=click.FloatRange(0),
    default=10.0,
    help="Seconds --wait-nodes waits before naming the nodes behind (exit 6).",
)
@common
@click.pass_context
def set_(
    ctx: click.Context,
    color: str,
    weight: int,
    force: bool,
    wait_nodes: bool,
    wait_timeout: float,
    app: str | None,
    as_json: bool,
) -> None:
    """Give COLOR a share of new requests (a canary below 100, the active color at 100)."""
    views: list[AppView] = []

    def call(client: ControlClient, name: str) -> AppView:
        views.append(client.set(name, color, weight, force))
        return views[-1]

    _app_verb(ctx, app, as_json, call)
    if wait_nodes:
        view = views[-1]
        client = _opts(ctx, app, as_json).client()
        behind = nodes.wait_nodes(client, view["app"], view["generation"], wait_timeout)
        if behind:
            click.echo(
                f"switchctl: generation {view['generation']} of {view['app']} was committed, "
                f"but after {wait_timeout:g}s " + "; ".join(behind) + " (`switchctl nodes` "
                "shows every node; a node that stays behind is unreachable from the store "
                "or runs another config)",
                err=True,
            )
            ctx.exit(EXIT_NODES_BEHIND)


@cli.command("nodes", epilog=EXIT_CODES)
@common
@click.pass_context
def nodes_(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """List the edge nodes sharing the switch state (and flag any not on the latest one)."""
    opts = _opts(ctx, app, as_json)
    cluster = nodes.cluster_or_none(opts.client())
    if opts.as_json:
        click.echo(json.dumps(cluster or {"backend": None}, indent=2))
    elif cluster is None:
        click.echo("this edgeproxy runs alone: no state_backend in its config")
    else:
        click.echo(nodes.format_nodes(cluster))


@cli.command(epilog=EXIT_CODES)
@click.option("--force", is_flag=True, help="Promote even if the candidate is unhealthy.")
@common
@click.pass_context
def promote(ctx: click.Context, force: bool, app: str | None, as_json: bool) -> None:
    """Make the candidate the active color at 100%."""
    _app_verb(ctx, app, as_json, lambda client, name: client.promote(name, force=force))


@cli.command(epilog=EXIT_CODES)
@click.option("--force", is_flag=True, help="Roll back even if the previous color is unhealthy.")
@common
@click.pass_context
def rollback(ctx: click.Context, force: bool, app: str | None, as_json: bool) -> None:
    """Send all traffic back to the previous active color."""
    _app_verb(ctx, app, as_json, lambda client, name: client.rollback(name, force=force))


@cli.command(epilog=EXIT_CODES)
@click.argument("color", callback=_color)
@click.option(
    "--timeout",
    type=click.FloatRange(0, 86400, min_open=True),
    default=None,
    help="Seconds before what is left is cut [default: the app's drain_timeout].",
)
@click.option("--wait", is_flag=True, help="Show in-flight requests and tunnels until drained.")
@click.option("--poll", type=click.FloatRange(0.01), default=0.5, hidden=True)
@common
@click.pass_context
def drain(
    ctx: click.Context,
    color: str,
    timeout: float | None,
    wait: bool,
    poll: float,
    app: str | None,
    as_json: bool,
) -> None:
    """Stop sending new requests to COLOR; let what it serves finish, then cut it."""
    opts = _opts(ctx, app, as_json)
    client = opts.client()
    name = resolve_app(opts, client)
    view = client.drain(name, color, timeout)
    if not wait:
        click.echo(json.dumps(view, indent=2) if opts.as_json else format_weights(view))
        return
    while color in view["draining"]:
        c = view["colors"].get(color, {})
        if not opts.as_json:
            left = view["draining"][color]["deadline"] - time.time()
            click.echo(
                f"draining {name}/{color}: {c.get('in_flight', 0)} in flight, "
                f"{c.get('tunnels', 0)} tunnels, {max(0.0, left):.0f}s until cut"
            )
        time.sleep(poll)
        view = client.app(name)
    click.echo(json.dumps(view, indent=2) if opts.as_json else f"{name}/{color} drained")


@cli.command(epilog=EXIT_CODES)
@common
@click.pass_context
def pause(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Hold new requests (up to the app's pause_max_wait) until resume."""
    _app_verb(ctx, app, as_json, ControlClient.pause)


@cli.command(epilog=EXIT_CODES)
@common
@click.pass_context
def resume(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Release held requests in the order they arrived."""
    _app_verb(ctx, app, as_json, ControlClient.resume)


@cli.command(epilog=EXIT_CODES_HEALTH)
@common
@click.pass_context
def health(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Show the health of every color."""
    opts = _opts(ctx, app, as_json)
    apps: dict[str, dict[str, dict[str, Any]]] = opts.client().health()["apps"]
    if opts.app:
        apps = {opts.app: apps.get(opts.app, {})}
    if opts.as_json:
        click.echo(json.dumps({"apps": apps}, indent=2))
        _exit_if_nothing_serves(ctx, apps)
        return
    rows = [["APP", "COLOR", "HEALTH", "DETAILS"]]
    for name, colors in sorted(apps.items()):
        for color, h in colors.items():
            state = "healthy" if h.get("healthy") else "UNHEALTHY"
            details = "; ".join(h.get("failing_checks") or []) or "-"
            rows.append([name, color, state, details])
    lines = _table(rows)
    for name, colors in sorted(apps.items()):
        upstream_rows = format_upstreams(colors, time.time())
        if upstream_rows:
            lines += ["", f"{name}:", *_table(upstream_rows, indent="  ")]
    click.echo("\n".join(lines))
    _exit_if_nothing_serves(ctx, apps)


def format_watch(view: AppView, rates: dict[str, float | None]) -> str:
    rows = [["COLOR", "WEIGHT", "IN-FLIGHT", "TUNNELS", "REQ/S"]]
    for color, c in view["colors"].items():
        rows.append(
            [color, f"{view['weights'].get(color, 0)}%", _fmt(c.get("in_flight")),
             _fmt(c.get("tunnels")), _fmt(rates.get(color), spec=".1f")]
        )  # fmt: skip
    return "\n".join([format_weights(view), *_table(rows, indent="  ")])


@cli.command(epilog=EXIT_CODES)
@click.option("--interval", type=click.FloatRange(0.05), default=2.0, help="Seconds per refresh.")
@click.option("--count", type=click.IntRange(1), default=None, help="Stop after N refreshes.")
@common
@click.pass_context
def watch(
    ctx: click.Context, interval: float, count: int | None, app: str | None, as_json: bool
) -> None:
    """Refresh weights, in-flight requests and request rates per color (Ctrl-C stops)."""
    opts = _opts(ctx, app, as_json)
    client = opts.client()
    name = resolve_app(opts, client)
    last: tuple[float, dict[str, int]] | None = None
    frame = 0
    try:
        while True:
            view, now = client.app(name), time.monotonic()
            counts = {c: int(v.get("requests", 0)) for c, v in view["colors"].items()}
            rates: dict[str, float | None] = dict.fromkeys(counts)
            if (
                last is not None
                and now > last[0]
                and any("requests" in v for v in view["colors"].values())
            ):
                rates = {c: (n - last[1].get(c, 0)) / (now - last[0]) for c, n in counts.items()}
            last = (now, counts)
            if opts.as_json:
                click.echo(json.dumps({"view": view, "rates": rates}))
            else:
                if sys.stdout.isatty():
                    click.clear()
                click.echo(format_watch(view, rates) + "\n")
            frame += 1
            if count is not None and frame >= count:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@cli.group(epilog=EXIT_CODES)
def certs() -> None:
    """TLS certificates served by edgeproxy."""


@certs.command("reload", epilog=EXIT_CODES)
@common
@click.pass_context
def certs_reload(ctx: click.Context, app: str | None, as_json: bool) -> None:
    """Reload the certificate files without dropping connections."""
    opts = _opts(ctx, app, as_json)
    result = opts.client().reload_certs()
    if opts.as_json:
        click.echo(json.dumps(result, indent=2))
        return
    loaded = result.get("certificates", [])
    click.echo(f"reloaded {len(loaded)} certificate(s)")
    for c in loaded:
        click.echo(f"  {c.get('cert', '?')}: {c.get('days_left', '?')} days left")


@cli.group(epilog=EXIT_CODES)
def config() -> None:
    """edgeproxy's config file."""


@config.command("reload", epilog=EXIT_CODES)
@click.option(
    "--force",
    is_flag=True,
    help="Reload even if the new config drops a color in use (active, candidate, draining).",
)
@common
@click.pass_context
def config_reload(ctx: click.Context, force: bool, app: str | None, as_json: bool) -> None:
    """Re-read the config file: new sites, routes, upstreams and policies, no dropped connection.

    A config with problems is refused (exit 1, each problem printed) and the
    previous one stays in force. So is one that drops a color an app uses
    (its active color, its canary candidate, a color draining): switch away
    first, or pass --force (the active color then moves to the app's
    default_color, refused while that one is unhealthy). Changing listen,
    control or state_file needs a restart. `kill -HUP $(pidof edgeproxy)` does
    the same reload, without --force.
    """
    opts = _opts(ctx, app, as_json)
    result = opts.client().reload_config(force=force)
    if opts.as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"reloaded: {result.get('sites')} site(s), apps: {', '.join(result.get('apps', [])) or 'none'}"
    )
    for name, change in sorted((result.get("switch") or {}).items()):
        click.echo(f"  {name}: {change.get('old') or '-'} → {change.get('new') or '-'}")


def _load_plugins() -> None:
    """`switchctl deploy …` is registered by switchctl.deploy.cli when it exists."""
    try:
        importlib.import_module("switchctl.deploy.cli")
    except ModuleNotFoundError as e:
        if e.name not in ("switchctl.deploy", "switchctl.deploy.cli"):
            raise


def main() -> None:
    _load_plugins()
    cli(prog_name="switchctl")
