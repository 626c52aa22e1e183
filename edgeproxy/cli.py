"""`edgeproxy serve --config FILE` and `edgeproxy check-config FILE`.

Exit codes: 0 ok; 1 could not start (the message says why and what to do);
2 the config is invalid (every problem is printed with its key path).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import NoReturn

import click

from edgeproxy import __version__
from edgeproxy.config import Config, load_config
from edgeproxy.errors import ConfigError, StartupError
from edgeproxy.policies import policy_problems

EXIT_CODES = (
    "Exit codes: 0 ok; 1 could not start (the message says why and what to do); "
    "2 the config is invalid (every problem is printed with its key path)."
)


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (errors and state changes; not the access log)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeproxy")
def cli() -> None:
    """edgeproxy: a TLS edge proxy with blue/green switching for Docker apps."""


def load_or_exit(file: Path) -> Config:
    """The validated config (model and compiled policies), or exit 2 listing every problem."""
    try:
        config = load_config(file)
        problems = policy_problems(config)
    except ConfigError as e:
        problems = e.problems
    if problems:
        for p in problems:
            click.echo(p if p.startswith(str(file)) else f"{file}: {p}", err=True)
        sys.exit(2)
    return config


@cli.command("check-config", epilog=EXIT_CODES)
@click.argument("file", type=click.Path(path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE; exit 0, or exit 2 printing every problem with its key path."""
    config = load_or_exit(file)
    apps = ", ".join(config.apps) or "none"
    click.echo(f"{file}: ok ({len(config.sites)} sites, apps: {apps})")


@cli.command(epilog=EXIT_CODES)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    envvar="EDGEPROXY_CONFIG",
    help="The YAML config file.",
)
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Take the listening sockets and switch state of the edgeproxy running with this "
    "config's control socket, then serve in its place (an upgrade or restart without a "
    "refused connection). If this process cannot start, the running one keeps serving.",
)
@click.option(
    "--start-if-alone",
    is_flag=True,
    help="With --takeover: when nothing answers on the control socket, start normally "
    "(for a container or unit whose restart after a crash runs the takeover command).",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Start the server in the background and exit once it serves (0) or could not "
    "start (1, with why): for systemd's ExecReload with --takeover.",
)
def serve(
    config_path: Path,
    log_level: str,
    log_format: str,
    takeover: bool,
    start_if_alone: bool,
    detach: bool,
) -> None:
    """Run the proxy until SIGTERM/SIGINT (graceful); SIGHUP reloads the config and certificates."""
    if detach:
        sys.exit(run_detached([a for a in sys.argv[1:] if a != "--detach"]))
    setup_logging(log_level, log_format)
    config = load_or_exit(config_path)
    still = " (the running edgeproxy keeps serving)" if takeover else ""
    bound = None
    if not takeover:
        # listen() before the heavy imports (aiohttp, the data plane): a connection
        # arriving meanwhile (a crash restart) waits in the queue instead of being refused.
        from edgeproxy.listeners import bind_listeners

        try:
            bound = bind_listeners(config)
        except StartupError as e:
            fail(f"edgeproxy: cannot start: {e}")
    from edgeproxy.app import build_server
    from edgeproxy.handover import HandoverError

    try:
        import uvloop

        server = build_server(config, config_path, bound)
        uvloop.run(server.run(takeover=takeover, start_if_alone=start_if_alone))
    except HandoverError as e:
        fail(f"edgeproxy: cannot take over: {e}{still}")
    except StartupError as e:
        fail(f"edgeproxy: cannot start: {e}{still}")
    except KeyboardInterrupt:
        pass


def fail(message: str) -> NoReturn:
    from edgeproxy.supervisor import tell_parent

    click.echo(message, err=True)
    tell_parent(message)
    sys.exit(1)


def run_detached(args: list[str]) -> int:
    """`serve ... --detach`: run `edgeproxy ARGS` in its own session, wait for its first line."""
    import os
    import subprocess

    from edgeproxy.supervisor import READY_FD_ENV

    read, write = os.pipe()
    env = {**os.environ, READY_FD_ENV: str(write)}
    child = subprocess.Popen(
        [sys.executable, "-m", "edgeproxy", *args],
        pass_fds=(write,),
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line.startswith("ok"):
        click.echo(f"edgeproxy: {line.removeprefix('ok').strip()}")
        return 0
    try:
        code: int | None = child.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    click.echo(line or f"edgeproxy: exited with {code} before it served", err=True)
    return 1


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
