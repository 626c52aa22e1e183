"""Reports from a bench JSON document: Markdown tables, PNG plots, machine facts.

Everything here works on the JSON-able dict a command returns, so
`python -m bench report FILE.json` re-renders a saved run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import fmt_k, fmt_num, fmt_ratio

PEER_ORDER = ("direct", "nginx", "haproxy", "probe", "edgeproxy", "edgeproxy-log")


def _version(cmd: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {
        "nginx": _version(["nginx", "-v"], r"nginx/(\S+)"),
        "haproxy": _version(["haproxy", "-v"], r"version (\S+)"),
        "wrk": _version(["wrk", "--version"], r"wrk (\S+)"),
        "openssl": _version(["openssl", "version"], r"OpenSSL (\S+)"),
        "python": platform.python_version(),
    }
    for mod in ("uvloop", "httptools"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    git = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    )
    return {
        "git": git.stdout.strip() or "unknown",
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "versions": versions,
        "argv": ["python", "-m", "bench", *sys.argv[1:]],
    }


def _sort_key(summary: dict[str, Any]) -> tuple[str, int]:
    case = summary["case"]
    peer = case["peer"]
    return (
        f"{case['scheme']} {case['body']} {case['mode']}",
        PEER_ORDER.index(peer) if peer in PEER_ORDER else len(PEER_ORDER),
    )


def config_of(case: dict[str, Any]) -> str:
    return f"{case['scheme']} {case['body']} {case['mode']}"


def throughput_markdown(doc: dict[str, Any]) -> str:
    lines = [
        "| config | peer | req/s (median) | min-max | p99 ms | proxy CPU % | req per proxy CPU-s "
        "| proxy RSS MiB | backend CPU % | other load CPU % | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in sorted(doc["summaries"], key=_sort_key):
        case = s["case"]
        lines.append(
            f"| {config_of(case)} | {case['peer']} | {fmt_num(s['rps_median'])} "
            f"| {fmt_k(s['rps_min'])}-{fmt_k(s['rps_max'])} | {fmt_num(s['p99_ms_median'], 2)} "
            f"| {fmt_num(s['proxy_cpu_pct'])} | {fmt_num(s['req_per_cpu_s'])} "
            f"| {fmt_num(s['proxy_rss_mib'], 1)} | {fmt_num(s['backend_cpu_pct'])} "
            f"| {fmt_num(s['other_cpu_pct'])} | {s['errors']} |"
        )
    out = ["\n".join(lines)]
    for key, title in (("ratios", "edgeproxy"), ("ratios_access_log", "edgeproxy-log")):
        rows = doc.get(key) or []
        if not rows:
            continue
        table = [
            f"| config | {title} ÷ nginx req/s | {title} ÷ HAProxy req/s | p99 ÷ nginx "
            "| p99 ÷ HAProxy | per CPU-s ÷ nginx | per CPU-s ÷ HAProxy |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in rows:
            table.append(
                f"| {r['config']} | {fmt_ratio(r['rps_vs_nginx'])} "
                f"| {fmt_ratio(r['rps_vs_haproxy'])} "
                f"| {fmt_ratio(r['p99_vs_nginx'])} | {fmt_ratio(r['p99_vs_haproxy'])} "
                f"| {fmt_ratio(r['per_cpu_vs_nginx'])} | {fmt_ratio(r['per_cpu_vs_haproxy'])} |"
            )
        out.append("\n".join(table))
    notes = [f"- skipped {k}: {v}" for k, v in doc.get("skipped", {}).items()]
    notes += [
        f"- failed run: {config_of(f['case'])} {f['case']['peer']} round {f['round'] + 1}: "
        + f["error"].splitlines()[0]
        for f in doc.get("failed_runs", [])
    ]
    if notes:
        out.append("\n".join(notes))
    return "\n\n".join(out) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(doc: dict[str, Any], path: Path) -> Path:
    """Grouped bars: median req/s (min-max whiskers) and p99 per config, one bar per peer."""
    plt = _pyplot()
    from matplotlib import ticker

    summaries = sorted(doc["summaries"], key=_sort_key)
    configs = list(dict.fromkeys(config_of(s["case"]) for s in summaries))
    peers = [p for p in PEER_ORDER if any(s["case"]["peer"] == p for s in summaries)]
    peers += sorted({s["case"]["peer"] for s in summaries} - set(peers))
    index = {(config_of(s["case"]), s["case"]["peer"]): s for s in summaries}
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(configs)), 8), sharex=True)
    width = 0.8 / max(1, len(peers))
    for i, peer in enumerate(peers):
        xs, rps, lo, hi, p99 = [], [], [], [], []
        for j, config in enumerate(configs):
            s = index.get((config, peer))
            if s is None:
                continue
            xs.append(j + (i - (len(peers) - 1) / 2) * width)
            rps.append(s["rps_median"])
            lo.append(s["rps_median"] - s["rps_min"])
            hi.append(s["rps_max"] - s["rps_median"])
            p99.append(s["p99_ms_median"])
        ax1.bar(xs, rps, width, yerr=[lo, hi], capsize=2, label=peer)
        ax2.bar(xs, p99, width, label=peer)
    ax1.set_yscale("log")  # new-TLS-connection rates are ~50x below keep-alive ones
    ax1.set_ylabel("req/s (median, min-max; log scale)")
    ax1.legend(fontsize="small", ncol=len(peers))
    ax1.grid(axis="y", alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 latency (ms, median; log scale)")
    for ax in (ax1, ax2):  # plain numbers on the log axes, not 4x10^1
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_xticks(range(len(configs)))
    ax2.set_xticklabels(configs, rotation=30, ha="right", fontsize="small")
    fig.suptitle("edgeproxy bench: throughput (wrk, proxies on one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_timeline(doc: dict[str, Any], path: Path) -> Path:
    """Responses per bucket by color (and failures) over time, with a line at each switch."""
    plt = _pyplot()
    tl = doc["timeline"]
    bucket = tl["bucket_seconds"]
    fig, ax = plt.subplots(figsize=(10, 4))
    palette = {"blue": "tab:blue", "green": "tab:green", "failed": "tab:red"}
    for name, counts in tl["series"].items():
        xs = [i * bucket for i in range(len(counts))]
        ys = [c / bucket for c in counts]
        ax.plot(xs, ys, label=name, color=palette.get(name), linewidth=1)
    for t in tl.get("switches", []):
        ax.axvline(t, color="grey", alpha=0.25, linewidth=0.8)
    ax.set_xlabel("seconds since load started (grey lines: set replies)")
    ax.set_ylabel("responses/s")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title(doc.get("title", "edgeproxy bench: switch under load"))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_bars(rows: Sequence[tuple[str, float]], ylabel: str, title: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    ax.bar([r[0] for r in rows], [r[1] for r in rows])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_json(doc: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def simple_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def _ms(stats: dict[str, Any]) -> str:
    return " / ".join(fmt_num(stats[k], 2) for k in ("median_ms", "p99_ms", "max_ms"))


def switch_markdown(doc: dict[str, Any]) -> str:
    r = doc["result"]
    rows = [
        ("load", f"{', '.join(doc['groups'])} ({fmt_num(r['rps'])} responses/s)"),
        ("responses", fmt_num(r["responses"])),
        ("failed (not 200)", fmt_num(r["failures"])),
        ("switches (refused)", f"{r['switches']} ({len(r['switches_refused'])})"),
        ("switches/second", fmt_num(r["switches_per_second"], 1)),
        ("set reply ms: median / p99 / max", _ms(r["set_reply"])),
        (
            "set reply → first response of new color, ms: median / p99 / max",
            _ms(r["reply_to_first_new_color"]),
        ),
        (
            "stale responses (exchange wholly between a set reply and the next set, other color)",
            fmt_num(r["stale_responses"]),
        ),
    ]
    out = simple_table(["figure", "value"], rows)
    out += "\n" + simple_table(["status color", "responses"], list(r["counts"].items()))
    if r["failure_examples"]:
        out += "\nfirst failures:\n" + "\n".join(f"- {f}" for f in r["failure_examples"]) + "\n"
    return out


def drain_markdown(doc: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("finish_in_time", "slow requests finish"),
        ("cut_at_deadline", "cut at deadline"),
    ):
        p = doc[key]
        rows.append(
            (
                label,
                f"{p['old']} → {p['new']}",
                f"{p['slow_ms']} ms",
                f"{p['drain_timeout_s']:g} s",
                p["in_flight_at_drain_start"],
                fmt_num(p["drain_finished_after_s"], 2),
                ", ".join(f"{k}: {v}" for k, v in p["slow_requests"].items()),
                ", ".join(f"{k}: {v}" for k, v in p["steady_requests"].items()),
                p["sent_to_old_after_drain"],
            )
        )
    return simple_table(
        [
            "phase",
            "switch",
            "slow request",
            "drain timeout",
            "in flight at drain",
            "drain done after s",
            "slow requests",
            "steady load",
            "sent to old color after drain",
        ],
        rows,
    )


def canary_markdown(doc: dict[str, Any]) -> str:
    rows = []
    for key, label in (("split", "pass 1"), ("second_pass_split", "pass 2 (same clients)")):
        s = doc[key]
        rows.append(
            (
                label,
                s["clients"],
                s["failures"],
                f"{s['weight_percent']} %",
                f"{s['observed_percent']:.2f} %",
                f"{s['ci95_percent'][0]:.2f}-{s['ci95_percent'][1]:.2f} %",
                "yes" if s["within_ci"] else "no",
            )
        )
    out = simple_table(
        [
            "pass",
            "distinct clients",
            "failed",
            "weight",
            f"observed {doc['split']['color']}",
            "95 % CI",
            "weight inside CI",
        ],
        rows,
    )
    return (
        out
        + f"\nsame color for a client in both passes: {100 * doc['same_color_both_passes']:.2f} %\n"
    )


def memory_markdown(doc: dict[str, Any]) -> str:
    results = doc["results"]
    wanted = [lv["wanted"] for lv in results[0]["levels"]] if results else []
    headers = ["peer", "baseline RSS MiB"]
    for w in wanted:
        headers += [f"RSS MiB @ {w:,}", f"held @ {w:,}"]
    headers += ["KiB per idle connection", "RSS MiB after close"]
    rows = []
    for r in results:
        row: list[Any] = [r["peer"], fmt_num(r["baseline_rss_kib"] / 1024, 1)]
        for lv in r["levels"]:
            row += [fmt_num(lv["rss_kib"] / 1024, 1), f"{lv['held']:,}"]
        row += [fmt_num(r["kib_per_connection"], 1), fmt_num(r["after_close_rss_kib"] / 1024, 1)]
        rows.append(row)
    out = simple_table(headers, rows)
    notes = [f"- {r['peer']}: {n}" for r in results for n in r["notes"]]
    notes += [f"- skipped {k}: {v}" for k, v in doc.get("skipped", {}).items()]
    return out + ("\n" + "\n".join(notes) + "\n" if notes else "")


def handshakes_markdown(doc: dict[str, Any]) -> str:
    res = doc.get("resumption", {})
    rows = []
    for s in sorted(doc["summaries"], key=_sort_key):
        peer = s["case"]["peer"]
        check = res.get(peer, {})
        rows.append(
            (
                peer,
                fmt_num(s["rps_median"]),
                f"{fmt_k(s['rps_min'])}-{fmt_k(s['rps_max'])}",
                fmt_num(s["p99_ms_median"], 2),
                fmt_num(s["proxy_cpu_pct"]),
                fmt_num(s["req_per_cpu_s"]),
                fmt_num(s.get("wrk_cpu_pct")),
                f"{check.get('version', '?')} {check.get('cipher', '')}".strip(),
                {True: "yes", False: "no"}.get(check.get("resumed"), "?"),
                s["errors"],
            )
        )
    out = simple_table(
        [
            "peer",
            "handshakes/s (median)",
            "min-max",
            "p99 ms",
            "proxy CPU %",
            "handshakes per proxy CPU-s",
            "wrk CPU %",
            "TLS",
            "would resume",
            "errors",
        ],
        rows,
    )
    ratio_rows = [
        (
            r["subject"],
            fmt_ratio(r["rps_vs_nginx"]),
            fmt_ratio(r["rps_vs_haproxy"]),
            fmt_ratio(r["per_cpu_vs_nginx"]),
            fmt_ratio(r["per_cpu_vs_haproxy"]),
        )
        for r in doc.get("ratios", [])
    ]
    if ratio_rows:
        out += "\n" + simple_table(
            ["", "÷ nginx per s", "÷ HAProxy per s", "÷ nginx per CPU-s", "÷ HAProxy per CPU-s"],
            ratio_rows,
        )
    return out


def backends_markdown(docs: dict[str, dict[str, Any]]) -> str:
    rows = []
    for kind, doc in docs.items():
        for s in sorted(doc["summaries"], key=_sort_key):
            rows.append(
                (
                    kind,
                    config_of(s["case"]),
                    fmt_num(s["rps_median"]),
                    fmt_num(s["p99_ms_median"], 2),
                    fmt_num(s["backend_cpu_pct"]),
                    fmt_num(s["req_per_backend_cpu_s"]),
                    fmt_num(s["other_cpu_pct"]),
                )
            )
    return simple_table(
        [
            "backend",
            "config",
            "req/s",
            "p99 ms",
            "backend CPU %",
            "req per backend CPU-s",
            "other load %",
        ],
        rows,
    )
