"""`python -m bench storefront`: virtual shoppers against a Medusa storefront API, through a release.

N shoppers (asyncio, one process) each repeat a journey — GET /store/regions →
GET /store/products → POST /store/carts → POST /store/carts/ID/line-items →
GET /store/carts/ID — with the publishable key, a think time between requests,
over HTTP(S) with keep-alive (a share of shoppers opens a fresh connection per
request instead). It works against any base URL: `--host` sets the TLS SNI and
Host when the URL is an address, `--ca-file` the trust (verification stays on;
`--insecure` must be asked for).

Every request is recorded: time, step, status (0: no response), latency, the
error class of a failure, the color that served it (edgeproxy's
`X-Edgeproxy-Color` response header, when staging exposes it) and whether the
connection was fresh. `--deploy CMD` runs a release command (`switchctl deploy
... --json`) after `--before` seconds and reads its events to split the run
into phases: before, prepare (image, migration, start, health, smoke), one per
canary step, promote, drain, finish, after (`--after` seconds). The report per
phase counts requests and failed requests by cause; JSON + Markdown + a PNG
timeline of requests by color with failures marked.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import shlex
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.stats import percentile

STEPS = ("regions", "products", "cart", "line_item", "get_cart")
SERVED_BY = b"x-edgeproxy-color"


@dataclass(frozen=True)
class Options:
    url: str
    shoppers: int = 10
    duration: float = 60.0
    """Seconds of load without --deploy (with it: before + the deploy + after)."""
    journeys: int = 0
    """Journeys per shopper (0: until the run ends)."""
    think: float = 1.0
    """Mean think time between a shopper's requests (exponential), seconds."""
    fresh_share: float = 0.2
    """Share of shoppers that open a new connection for every request."""
    key: str = ""
    host: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    timeout: float = 10.0
    deploy: str | None = None
    before: float = 10.0
    after: float = 10.0
    seed: int = 1


@dataclass
class Records:
    """One entry per request, column-wise; times are seconds since the run started."""

    t: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    step: list[str] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    error: list[str] = field(default_factory=list)
    """Empty for a success; else the failure's class (http-500, connect-refused, timeout, …)."""
    color: list[str] = field(default_factory=list)
    fresh: list[bool] = field(default_factory=list)
    shopper: list[int] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        for k, v in row.items():
            getattr(self, k).append(v)

    def __len__(self) -> int:
        return len(self.t)


class HttpError(Exception):
    """A failure with its class, e.g. `http-500`, `bad-json`, `connect-refused`."""

    def __init__(self, cause: str, status: int = 0, color: str = "") -> None:
        super().__init__(cause)
        self.cause = cause
        self.status = status
        self.color = color


def error_class(e: BaseException) -> str:
    if isinstance(e, HttpError):
        return e.cause
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "connect-refused"
    if isinstance(e, ConnectionResetError | BrokenPipeError):
        return "connection-reset"
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed-mid-response"
    if isinstance(e, ssl.SSLError):
        return "tls"
    return type(e).__name__


class Conn:
    """One HTTP/1.1 client connection: Content-Length or chunked responses."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        closing: list[asyncio.StreamWriter],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.closing = closing
        """Closed connections whose (TLS) shutdown the run awaits at its end."""

    async def exchange(self, head: bytes, body: bytes) -> tuple[int, str, bytes, bool]:
        """(status, served-by color, body, keep-alive) for one request."""
        self.writer.write(head + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, keep, color = -1, False, True, b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.lower() == b"close":
                keep = False
            elif name == SERVED_BY:
                color = value
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            data = b"".join(parts)
        elif length >= 0:
            data = await self.reader.readexactly(length)
        else:
            data, keep = await self.reader.read(), False
        return status, color.decode(errors="replace"), data, keep

    def close(self) -> None:
        self.writer.close()
        self.closing.append(self.writer)


class Storefront:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        u = urlsplit(opts.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{opts.url!r}: expected http(s)://HOST[:PORT]")
        self.address = (u.hostname, u.port or (443 if u.scheme == "https" else 80))
        self.prefix = u.path.rstrip("/")
        self.host = opts.host or u.netloc
        self.sni = (opts.host or u.hostname) if u.scheme == "https" else None
        self.ssl: ssl.SSLContext | None = None
        if u.scheme == "https":
            self.ssl = ssl.create_default_context(
                cafile=str(opts.ca_file) if opts.ca_file else None
            )
            if opts.ca_file:
                self.ssl.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            if opts.insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        self.records = Records()
        self.closing: list[asyncio.StreamWriter] = []
        self.started = time.monotonic()
        self.stopping = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.started

    def head(self, method: str, path: str, body: bytes, keep: bool, shopper: int = -1) -> bytes:
        lines = [
            f"{method} {self.prefix}{path} HTTP/1.1",
            f"Host: {self.host}",
            "Accept: application/json",
            "User-Agent: edgeproxy-bench-storefront",
        ]
        if shopper >= 0:
            # What the Next.js storefront's server sends per visitor (compose/medusa/edgeproxy.yml
            # canary_key: header:X-Shopper-Id): each shopper draws its own canary bucket. A
            # random-looking id, like the starter's `_medusa_cache_id`: sequential ids
            # (`shopper-1-0`, `-1`, ...) hash into lumpy buckets (40 of them: none below 12 %).
            sid = hashlib.sha256(f"{self.opts.seed}-{shopper}".encode()).hexdigest()[:24]
            lines.append(f"X-Shopper-Id: {sid}")
        if self.opts.key:
            lines.append(f"x-publishable-api-key: {self.opts.key}")
        if body or method == "POST":
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        if not keep:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def connect(self) -> Conn:
        reader, writer = await asyncio.open_connection(
            *self.address, ssl=self.ssl, server_hostname=self.sni
        )
        return Conn(reader, writer, self.closing)

    async def shopper(self, n: int, fresh: bool, rng: random.Random) -> None:
        conn: Conn | None = None
        journeys = 0

        async def call(step: str, method: str, path: str, payload: Any = None) -> Any:
            nonlocal conn
            body = json.dumps(payload).encode() if payload is not None else b""
            t0 = self.now()
            status, color, new = 0, "", conn is None or fresh
            try:
                if conn is None:
                    conn = await self.connect()
                status, color, data, keep = await asyncio.wait_for(
                    conn.exchange(self.head(method, path, body, not fresh, n), body),
                    self.opts.timeout,
                )
                if fresh or not keep:
                    conn.close()
                    conn = None
                if status >= 400:
                    raise HttpError(f"http-{status}", status, color)
                try:
                    doc = json.loads(data)
                except ValueError as e:
                    raise HttpError("bad-json", status, color) from e
            except Exception as e:
                if conn is not None and not isinstance(e, HttpError):
                    conn.close()
                    conn = None
                self.records.add(
                    t=t0,
                    latency_ms=(self.now() - t0) * 1000,
                    step=step,
                    status=status,
                    error=error_class(e),
                    color=color or getattr(e, "color", ""),
                    fresh=new,
                    shopper=n,
                )
                raise
            self.records.add(
                t=t0,
                latency_ms=(self.now() - t0) * 1000,
                step=step,
                status=status,
                error="",
                color=color,
                fresh=new,
                shopper=n,
            )
            return doc

        async def think() -> None:
            if self.opts.think > 0:
                try:
                    await asyncio.wait_for(
                        self.stopping.wait(), rng.expovariate(1 / self.opts.think)
                    )
                except TimeoutError:
                    pass

        try:
            while not self.stopping.is_set() and (
                not self.opts.journeys or journeys < self.opts.journeys
            ):
                journeys += 1
                try:
                    regions = await call("regions", "GET", "/store/regions")
                    region = regions["regions"][0]["id"]
                    await think()
                    products = await call(
                        "products", "GET", f"/store/products?limit=12&region_id={region}"
                    )
                    variant = products["products"][0]["variants"][0]["id"]
                    await think()
                    cart = (await call("cart", "POST", "/store/carts", {"region_id": region}))[
                        "cart"
                    ]["id"]
                    await think()
                    await call(
                        "line_item",
                        "POST",
                        f"/store/carts/{cart}/line-items",
                        {"variant_id": variant, "quantity": 1},
                    )
                    await think()
                    await call("get_cart", "GET", f"/store/carts/{cart}")
                    await think()
                except (
                    HttpError,
                    OSError,
                    TimeoutError,
                    asyncio.IncompleteReadError,
                    ValueError,
                    KeyError,
                    IndexError,
                    TypeError,
                ):
                    await think()  # the journey failed: a shopper starts again
        finally:
            if conn is not None:
                conn.close()

    async def run(self, seconds: float | None) -> Records:
        rng = random.Random(self.opts.seed)
        fresh_count = round(self.opts.shoppers * self.opts.fresh_share)
        tasks = [
            asyncio.create_task(
                self.shopper(i, i < fresh_count, random.Random(rng.random())),
                name=f"shopper-{i}",
            )
            for i in range(self.opts.shoppers)
        ]
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self.stopping.set)
        await asyncio.gather(*tasks)
        await asyncio.gather(*(w.wait_closed() for w in self.closing), return_exceptions=True)
        return self.records


# --- phases from the deploy's --json events ---------------------------------------------------

PHASE_OF_KIND = {"promote": "promote", "go_live": "promote", "drain_old": "drain"}


@dataclass
class Phase:
    name: str
    start: float
    end: float = float("inf")


def phases_from_events(
    events: Sequence[tuple[float, dict[str, Any]]], deploy_start: float, deploy_end: float
) -> list[Phase]:
    """before / prepare / canary N% / promote / drain / finish / after, from (time, event) pairs
    (times on the run's clock). `canary` steps carry their weight in the step text."""
    phases = [Phase("before", 0.0), Phase("prepare", deploy_start)]
    for t, e in events:
        if e.get("event") != "step_start":
            continue
        kind = str(e.get("kind", ""))
        if kind == "canary":
            weight = str(e.get("step", "")).split("%")[0].split()[-1]
            name = f"canary {weight}%"
        elif kind in PHASE_OF_KIND:
            name = PHASE_OF_KIND[kind]
        elif phases[-1].name in ("prepare",):
            continue
        else:
            name = "finish"
        if name != phases[-1].name:
            phases.append(Phase(name, t))
    phases.append(Phase("after", deploy_end))
    for a, b in itertools.pairwise(phases):
        a.end = b.start
    return [p for p in phases if p.end > p.start]


def run_deploy(command: str, sf: Storefront) -> tuple[list[tuple[float, dict[str, Any]]], int]:
    """Run the release command; its stdout JSON lines stamped on the run's clock."""
    events: list[tuple[float, dict[str, Any]]] = []
    proc = subprocess.Popen(
        shlex.split(command), stdout=subprocess.PIPE, stderr=sys.stderr, text=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            try:
                events.append((sf.now(), json.loads(line)))
            except ValueError:
                continue
    return events, proc.wait()


async def _with_deploy(sf: Storefront, opts: Options) -> dict[str, Any]:
    assert opts.deploy is not None
    load = asyncio.create_task(sf.run(None), name="storefront-load")
    await asyncio.sleep(opts.before)
    start = sf.now()
    events, rc = await asyncio.to_thread(run_deploy, opts.deploy, sf)
    end = sf.now()
    await asyncio.sleep(opts.after)
    sf.stopping.set()
    await load
    return {
        "deploy": {"command": opts.deploy, "exit": rc, "start": start, "end": end},
        "events": [{"t": t, **e} for t, e in events],
        "phases": [p.__dict__ for p in phases_from_events(events, start, end)],
    }


def run(opts: Options) -> dict[str, Any]:
    sf = Storefront(opts)

    async def go() -> dict[str, Any]:
        sf.started = time.monotonic()
        if opts.deploy:
            return await _with_deploy(sf, opts)
        await sf.run(opts.duration if not opts.journeys else None)
        return {"phases": [Phase("run", 0.0, sf.now()).__dict__]}

    doc = asyncio.run(go())
    for p in doc["phases"]:
        if p["end"] == float("inf"):
            p["end"] = sf.now()
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items()}
    options["key"] = "set" if opts.key else ""
    doc.update(
        command="storefront",
        options=options,
        records=sf.records.__dict__,
        summary=summarize(sf.records.__dict__, doc["phases"]),
    )
    return doc


def summarize(records: dict[str, list[Any]], phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per phase: requests, failures by cause, by color, latency; and a total row."""
    out = []
    n = len(records["t"])
    bounds = [(p["name"], p["start"], p["end"]) for p in phases]
    bounds.append(("total", float("-inf"), float("inf")))
    for name, start, end in bounds:
        rows = [i for i in range(n) if start <= records["t"][i] < end]
        lat = [records["latency_ms"][i] for i in rows if not records["error"][i]]
        span = (end - start) if end != float("inf") and start != float("-inf") else 0
        out.append(
            {
                "phase": name,
                "start": start if start != float("-inf") else None,
                "seconds": round(span, 3) if span else None,
                "requests": len(rows),
                "failed": sum(1 for i in rows if records["error"][i]),
                "causes": dict(Counter(records["error"][i] for i in rows if records["error"][i])),
                "colors": dict(Counter(records["color"][i] or "-" for i in rows)),
                "failed_colors": dict(
                    Counter(records["color"][i] or "-" for i in rows if records["error"][i])
                ),
                "steps": dict(Counter(records["step"][i] for i in rows)),
                "p50_ms": percentile(lat, 50) if lat else None,
                "p99_ms": percentile(lat, 99) if lat else None,
                "rps": round(len(rows) / span, 2) if span else None,
            }
        )
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"storefront: {doc['options']['shoppers']} shoppers against {doc['options']['url']}",
        "",
        "| phase | seconds | requests | req/s | failed | failures by cause | by color "
        "| p50 ms | p99 ms |",
        "|---|--:|--:|--:|--:|---|---|--:|--:|",
    ]

    def fmt(v: Any, digits: int = 1) -> str:
        return "-" if v is None else f"{v:,.{digits}f}"

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "-"

    for s in doc["summary"]:
        lines.append(
            f"| {s['phase']} | {fmt(s['seconds'])} | {s['requests']} | {fmt(s['rps'])} "
            f"| {s['failed']} | {counts(s['causes'])} | {counts(s['colors'])} "
            f"| {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} |"
        )
    dep = doc.get("deploy")
    if dep:
        lines += ["", f"deploy `{dep['command']}` exited {dep['exit']}"]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path:
    """Requests per second by the color that served them (stacked), failures marked."""
    from bench.report import _pyplot

    plt = _pyplot()
    r = doc["records"]
    end = max(r["t"], default=0.0) + 1
    bins = [i * 1.0 for i in range(int(end) + 2)]
    colors = sorted({c or "-" for c in r["color"]})
    palette = {"blue": "tab:blue", "green": "tab:green", "-": "tab:gray"}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    series = [
        [t for t, c in zip(r["t"], r["color"], strict=True) if (c or "-") == k] for k in colors
    ]
    ax.hist(series, bins=bins, stacked=True, label=colors, color=[palette.get(k) for k in colors])
    fails = [t for t, e in zip(r["t"], r["error"], strict=True) if e]
    if fails:
        ax.plot(fails, [0.5] * len(fails), "rx", label=f"failed ({len(fails)})")
    for p in doc["phases"]:
        ax.axvline(p["start"], color="black", linewidth=0.6, linestyle=":")
        ax.text(p["start"], ax.get_ylim()[1] * 0.95, f" {p['name']}", fontsize=8, va="top")
    ax.set_xlabel("seconds since the start")
    ax.set_ylabel("requests per second")
    ax.set_title("storefront requests by the color that served them")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
