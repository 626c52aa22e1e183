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
def serve(
    config_path: Path, log_level: str, log_format: str, takeover: bool, start_if_alone: bool
) -> None:
    """Run the proxy until SIGTERM/SIGINT (graceful); SIGHUP reloads the config and certificates."""
    setup_logging(log_level, log_format)
    config = load_or_exit(config_path)
    from edgeproxy.app import build_server
    from edgeproxy.handover import HandoverError

    still = " (the running edgeproxy keeps serving)" if takeover else ""
    try:
        import uvloop

        uvloop.run(
            build_server(config, config_path).run(takeover=takeover, start_if_alone=start_if_alone)
        )
    except HandoverError as e:
        click.echo(f"edgeproxy: cannot take over: {e}{still}", err=True)
        sys.exit(1)
    except StartupError as e:
        click.echo(f"edgeproxy: cannot start: {e}{still}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
