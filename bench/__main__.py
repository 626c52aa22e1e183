"""`python -m bench COMMAND …` (or `make bench ARGS="COMMAND …"`).

Progress goes to stderr, a Markdown report to stdout, the full data to a JSON
file (default `bench/out/COMMAND-TIMESTAMP.json`) with PNG plots beside it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.peers import PEERS
from bench.procs import BenchError, log

OUT_DIR = Path(__file__).resolve().parent / "out"


def _csv(choices: tuple[str, ...]) -> Callable[[click.Context, click.Parameter, str], list[str]]:
    def parse(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
        items = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in items if v not in choices]
        if bad:
            raise click.BadParameter(f"{', '.join(bad)} not in {', '.join(choices)}")
        return items

    return parse


def _targets(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[tuple[str, str]]:
    out = []
    for i, v in enumerate(value):
        name, sep, url = v.partition("=")
        if not sep or "://" in name:
            name, url = f"target{i + 1}" if len(value) > 1 else "target", v
        out.append((name, url))
    return out


def _json_path(value: Path | None, command: str) -> Path:
    return value or OUT_DIR / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def finish(doc: dict[str, Any], json_path: Path, markdown: str, plots: list[Path]) -> None:
    """Write the JSON, print the Markdown and where everything went."""
    doc["machine"] = report.machine_info()
    report.write_json(doc, json_path)
    click.echo(markdown)
    log(f"JSON: {json_path}")
    for p in plots:
        log(f"plot: {p}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Load benches for edgeproxy against nginx, HAProxy and the backend itself."""


CPU_OPTIONS = [
    click.option("--proxy-cpus", default="0", help="taskset core list for the proxies"),
    click.option("--load-cpus", default="1", help="taskset core list for wrk/clients and backends"),
]


def cpu_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(CPU_OPTIONS):
        f = opt(f)
    return f


@main.command()
@click.option(
    "--peers", default="direct,nginx,haproxy,edgeproxy,edgeproxy-log", callback=_csv(PEERS)
)
@click.option("--schemes", default="http,https", callback=_csv(("http", "https")))
@click.option("--bodies", default="13,16k", callback=_csv(("13", "16k")))
@click.option("--modes", default="keepalive,close", callback=_csv(("keepalive", "close")))
@click.option(
    "--rounds",
    default=3,
    type=click.IntRange(1),
    help="each configuration runs this often, alternating",
)
@click.option(
    "--duration",
    default=5,
    type=click.IntRange(1),
    help="seconds per wrk run (wrk takes whole seconds)",
)
@click.option(
    "--warmup",
    default=1,
    type=click.IntRange(0),
    help="seconds of warm-up per configuration (first round; 0: none)",
)
@click.option("--connections", default=50, type=click.IntRange(1), help="wrk -c")
@click.option(
    "--backend",
    default="nginx",
    type=click.Choice(["nginx", "python"]),
    help="shared backend (see `bench backends`)",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    callback=_targets,
    help="[NAME=]URL: measure this server instead of starting local peers (repeatable)",
)
@cpu_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file")
def throughput(json_path: Path | None, **kw: Any) -> None:
    """req/s, p99, CPU% and RSS: direct vs nginx vs HAProxy vs edgeproxy."""
    from bench import throughput as tp

    opts = tp.Options(**kw)
    doc = tp.run(opts)
    path = _json_path(json_path, "throughput")
    plots = [report.plot_throughput(doc, path.with_suffix(".png"))] if doc["summaries"] else []
    finish(doc, path, report.throughput_markdown(doc), plots)


@main.command("report")
@click.argument("json_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def report_cmd(json_file: Path) -> None:
    """Print the Markdown tables of a saved `throughput` JSON again."""
    doc = json.loads(json_file.read_text())
    if doc.get("command") != "throughput":
        raise click.UsageError(
            f"{json_file} holds a {doc.get('command')!r} run; only throughput re-renders"
        )
    click.echo(report.throughput_markdown(doc))


def run() -> None:
    try:
        main()
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(1)


if __name__ == "__main__":
    run()
