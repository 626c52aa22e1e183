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
from bench.peers import EXTRA_PEERS, PEERS
from bench.procs import BenchError, log, set_nice

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
    path = value or OUT_DIR / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)  # the plots are written beside it first
    return path


def finish(doc: dict[str, Any], json_path: Path, markdown: str, plots: list[Path]) -> None:
    """Write the JSON, print the Markdown and where everything went; exit 1 if a run failed."""
    doc["machine"] = report.machine_info()
    report.write_json(doc, json_path)
    click.echo(markdown)
    log(f"JSON: {json_path}")
    for p in plots:
        log(f"plot: {p}")
    if doc.get("failed_runs"):
        log(f"{len(doc['failed_runs'])} runs failed (listed under the tables and in the JSON)")
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Load benches for edgeproxy against nginx, HAProxy and the backend itself."""


def _nice(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        set_nice(value)
        log(f"every process this run starts gets scheduling priority {value} (autogroup nice)")


CPU_OPTIONS = [
    click.option("--proxy-cpus", default="0", help="taskset core list for the proxies"),
    click.option("--load-cpus", default="1", help="taskset core list for wrk/clients and backends"),
    click.option(
        "--nice",
        default=0,
        type=click.IntRange(-20, 19),
        callback=_nice,
        expose_value=False,
        help="priority of every started process (negative: ahead of other work on the machine)",
    ),
]


def cpu_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(CPU_OPTIONS):
        f = opt(f)
    return f


@main.command()
@click.option(
    "--peers",
    default="direct,nginx,haproxy,probe,edgeproxy,edgeproxy-log",
    callback=_csv(PEERS + EXTRA_PEERS),
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


def stage_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--scheme", default="http", type=click.Choice(["http", "https"])),
        click.option(
            "--target", help="URL of a running edgeproxy (staging) instead of a local one"
        ),
        click.option("--socket", help="control socket of the --target edgeproxy"),
        click.option("--app", default="bench", help="app name (with --target)"),
        click.option("--colors", default="blue,green", help="the app's two colors (with --target)"),
        *CPU_OPTIONS,
        click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _stage(kw: dict[str, Any]) -> Any:
    from bench.stage import StageOptions

    colors = tuple(c.strip() for c in kw.pop("colors").split(","))
    if len(colors) != 2:
        raise click.BadParameter("give exactly two colors, e.g. blue,green", param_hint="--colors")
    names = ("scheme", "target", "socket", "app", "proxy_cpus", "load_cpus")
    return StageOptions(colors=colors, **{k: kw.pop(k) for k in names})


@main.command()
@click.option("--switches", default=20, type=click.IntRange(1), help="blue<->green flips")
@click.option("--interval", default=0.25, type=click.FloatRange(0), help="seconds between flips")
@click.option("--workers", default=50, type=click.IntRange(1), help="concurrent clients")
@click.option(
    "--close-share",
    default=0.5,
    type=click.FloatRange(0, 1),
    help="share of clients opening a new connection per request",
)
@click.option(
    "--warmup", default=1.0, type=click.FloatRange(0), help="seconds of load before the first flip"
)
@click.option(
    "--tail", default=1.0, type=click.FloatRange(0), help="seconds of load after the last flip"
)
@stage_options
def switch(json_path: Path | None, **kw: Any) -> None:
    """Flip blue<->green under load; count every response by status and color."""
    from bench import switch_load as sl

    sopts = _stage(kw)
    doc = sl.run_switch(sl.SwitchOptions(**kw), sopts)
    path = _json_path(json_path, "switch")
    finish(
        doc,
        path,
        report.switch_markdown(doc),
        [report.plot_timeline(doc, path.with_suffix(".png"))],
    )


@main.command()
@click.option("--workers", default=20, type=click.IntRange(1), help="steady keep-alive clients")
@click.option(
    "--slow", default=10, type=click.IntRange(1), help="long requests in flight at the drain"
)
@click.option("--slow-ms", default=2000, type=click.IntRange(1), help="their length in phase 1")
@click.option(
    "--timeout", default=5.0, type=click.FloatRange(0.1), help="drain deadline in phase 1 (s)"
)
@click.option("--cut-slow-ms", default=5000, type=click.IntRange(1), help="their length in phase 2")
@click.option(
    "--cut-timeout", default=1.0, type=click.FloatRange(0.1), help="drain deadline in phase 2 (s)"
)
@stage_options
def drain(json_path: Path | None, **kw: Any) -> None:
    """Switch, then drain the old color with requests in flight: they finish, or are cut."""
    from bench import switch_load as sl

    sopts = _stage(kw)
    doc = sl.run_drain(sl.DrainOptions(**kw), sopts)
    path = _json_path(json_path, "drain")
    finish(
        doc, path, report.drain_markdown(doc), [report.plot_timeline(doc, path.with_suffix(".png"))]
    )


@main.command()
@click.option("--weight", default=10, type=click.IntRange(1, 99), help="candidate weight (%)")
@click.option(
    "--clients",
    default=10_000,
    type=click.IntRange(1, 60_000),
    help="fresh clients, each its own source address",
)
@click.option("--workers", default=50, type=click.IntRange(1), help="concurrent clients")
@stage_options
def canary(json_path: Path | None, **kw: Any) -> None:
    """Canary split accuracy: share of fresh clients the candidate gets at a weight."""
    from bench import switch_load as sl

    sopts = _stage(kw)
    doc = sl.run_canary(sl.CanaryOptions(**kw), sopts)
    path = _json_path(json_path, "canary")
    finish(doc, path, report.canary_markdown(doc), [])


@main.command()
@click.option("--peers", default="nginx,haproxy,edgeproxy", callback=_csv(PEERS[1:] + EXTRA_PEERS))
@click.option("--levels", default="1000,10000", help="idle connection counts, ascending")
@click.option(
    "--settle", default=1.0, type=click.FloatRange(0), help="seconds to wait before reading RSS"
)
@click.option("--backend", default="nginx", type=click.Choice(["nginx", "python"]))
@cpu_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file")
def memory(json_path: Path | None, levels: str, **kw: Any) -> None:
    """RSS of each proxy with 1,000 and 10,000 idle keep-alive client connections."""
    from bench import memory as mem

    try:
        counts = sorted(int(v) for v in levels.split(","))
    except ValueError as e:
        raise click.BadParameter(
            "comma-separated numbers, e.g. 1000,10000", param_hint="--levels"
        ) from e
    doc = mem.run(mem.MemoryOptions(levels=counts, **kw))
    path = _json_path(json_path, "memory")
    rows = [
        (f"{r['peer']} @ {lv['held']:,}", lv["rss_kib"] / 1024)
        for r in doc["results"]
        for lv in r["levels"]
    ]
    plot = report.plot_bars(
        rows, "RSS MiB", "RSS with idle keep-alive clients", path.with_suffix(".png")
    )
    finish(doc, path, report.memory_markdown(doc), [plot])


@main.command("tls-handshakes")
@click.option("--peers", default="nginx,haproxy,edgeproxy", callback=_csv(PEERS + EXTRA_PEERS))
@click.option("--rounds", default=3, type=click.IntRange(1))
@click.option("--duration", default=5, type=click.IntRange(1), help="seconds per wrk run")
@click.option("--connections", default=50, type=click.IntRange(1), help="wrk -c")
@cpu_options
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file")
def tls_handshakes(json_path: Path | None, **kw: Any) -> None:
    """Full TLS handshakes per second and per proxy CPU-second (new connection per request)."""
    from bench import handshakes
    from bench import throughput as tp

    opts = tp.Options(schemes=["https"], bodies=["13"], modes=["close"], **kw)
    doc = handshakes.run(opts)
    path = _json_path(json_path, "tls-handshakes")
    rows = [(s["case"]["peer"], s["rps_median"]) for s in doc["summaries"]]
    plot = report.plot_bars(
        rows, "handshakes/s", "full TLS handshakes per second", path.with_suffix(".png")
    )
    finish(doc, path, report.handshakes_markdown(doc), [plot])


@main.command()
@click.option("--rounds", default=3, type=click.IntRange(1))
@click.option("--duration", default=5, type=click.IntRange(1), help="seconds per wrk run")
@click.option("--backend-cpus", default="1", help="core of the backend under test")
@click.option("--wrk-cpus", default="0", help="core of wrk")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file")
def backends(
    json_path: Path | None, rounds: int, duration: int, backend_cpus: str, wrk_cpus: str
) -> None:
    """Which shared backend is cheaper: nginx (`return 200`, static file) or the uvloop server."""
    from bench import throughput as tp

    docs = {}
    for kind in ("nginx", "python"):
        opts = tp.Options(
            peers=["direct"],
            schemes=["http"],
            rounds=rounds,
            duration=duration,
            backend=kind,
            load_cpus=backend_cpus,
            wrk_cpus=wrk_cpus,
        )
        docs[kind] = tp.run(opts)
    doc = {"command": "backends", "runs": docs}
    finish(doc, _json_path(json_path, "backends"), report.backends_markdown(docs), [])


@main.command()
@click.option("--url", required=True, help="base URL of the store API (any server)")
@click.option("--host", help="TLS SNI and Host when --url is an address (e.g. api.shop.test)")
@click.option(
    "--key",
    envvar="MEDUSA_PUBLISHABLE_KEY",
    default="",
    show_default=False,
    help="publishable API key (env MEDUSA_PUBLISHABLE_KEY)",
)
@click.option("--shoppers", default=10, type=click.IntRange(1), help="virtual shoppers")
@click.option("--think", default=1.0, type=click.FloatRange(0), help="mean think time (s)")
@click.option(
    "--fresh-share",
    default=0.2,
    type=click.FloatRange(0, 1),
    help="share of shoppers opening a new connection per request",
)
@click.option("--duration", default=60.0, type=click.FloatRange(0), help="seconds (no --deploy)")
@click.option(
    "--journeys",
    default=0,
    type=click.IntRange(0),
    help="journeys per shopper, then stop (0: until the run ends)",
)
@click.option(
    "--deploy",
    help="release command printing --json events, e.g. "
    "'switchctl deploy --ref abc --json'; the report is split by its phases",
)
@click.option("--before", default=10.0, type=click.FloatRange(0), help="seconds before --deploy")
@click.option("--after", default=10.0, type=click.FloatRange(0), help="seconds after --deploy")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CA (or certificate) to trust",
)
@click.option("--insecure", is_flag=True, help="do not verify the certificate (staging only)")
@click.option("--timeout", default=10.0, type=click.FloatRange(0.1), help="per request (s)")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="output file")
def storefront(json_path: Path | None, **kw: Any) -> None:
    """Shoppers doing regions → products → cart → line item → cart, through a release."""
    from bench import storefront as sf

    doc = sf.run(sf.Options(**kw))
    path = _json_path(json_path, "storefront")
    finish(doc, path, sf.markdown(doc), [sf.plot(doc, path.with_suffix(".png"))])


def _storefront_markdown(doc: dict[str, Any]) -> str:
    from bench import storefront as sf

    return sf.markdown(doc)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "storefront": _storefront_markdown,
    "throughput": report.throughput_markdown,
    "tls-handshakes": report.handshakes_markdown,
    "memory": report.memory_markdown,
    "switch": report.switch_markdown,
    "drain": report.drain_markdown,
    "canary": report.canary_markdown,
    "backends": lambda doc: report.backends_markdown(doc["runs"]),
}


@main.command("report")
@click.argument("json_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def report_cmd(json_file: Path) -> None:
    """Print the Markdown report of a saved run again."""
    doc = json.loads(json_file.read_text())
    render = RENDERERS.get(doc.get("command", ""))
    if render is None:
        raise click.UsageError(f"{json_file} is not a bench JSON file (no known `command` key)")
    click.echo(render(doc))


def run() -> None:
    try:
        main()
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(1)


if __name__ == "__main__":
    run()
