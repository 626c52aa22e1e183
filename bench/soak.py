"""Abusive clients beside normal traffic: does edgeproxy stay flat and keep serving?

    python -m bench.soak [--duration 300] [--interval 10] [--json PATH]

Starts a backend (in a child process: `/` answers, `/ws` echoes WebSocket
messages, `/hang` never answers, `/declines` answers an upgrade request with
200, `/many-headers` answers with thousands of header fields) and edgeproxy
(HTTP and HTTPS listeners, the code as checked out). Then, for `--duration`
seconds, at the same time:

normal traffic, every failure counted by cause
  - keep-alive clients over HTTP and over HTTPS (`--clients` each), a request
    every 20 ms, reconnecting only when the proxy closes the connection;
  - one WebSocket client sending a message a second and expecting its echo;
  - a config reload through the control socket every `--reload-every` s.

abusive clients, each reconnecting whenever the proxy closes on it
  - pending upgrade: `Upgrade: websocket` to `/hang`, then bytes forever;
  - declined upgrade: `Upgrade: websocket` to `/declines` (answered 200), then bytes forever;
  - a WebSocket client that sends to the echo backend and never reads;
  - an fd hog holding `--hog` idle connections from 127.0.0.3;
  - slowloris: connections sending one header byte every few seconds;
  - hostile heads: bad Host shapes, dot-segment paths, TRACE, unknown methods,
    smuggling shapes; and upstream responses with thousands of header fields.

The proxy's RSS and open fds are sampled every `--interval` s. The report says
how many normal requests failed (the goal is zero), how many bytes the abusive
clients pushed, and the RSS and fd figures (first sample after warm-up, end, peak).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import free_port, log
from bench.tlscert import make_selfsigned

UPGRADE_HEAD = (
    b"GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
HOSTILE_HEADS = (
    b"GET / HTTP/1.1\r\nHost: localhost:1@evil.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost:abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost:443/evil?\r\n\r\n",
    b"GET /a/../../etc HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"GET /x/%2e%2e/y HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"TRACE / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: other\r\n\r\n",
    b"GET /many-headers HTTP/1.1\r\nHost: localhost\r\n\r\n",
)


# -- the backend (a child process) -------------------------------------------------


def backend_main(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def ok(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(text="ok\n")

    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        return web.Response(text="late\n")

    async def declines(request: web.Request) -> web.StreamResponse:
        return web.Response(text="no upgrade here\n")

    async def many_headers(request: web.Request) -> web.StreamResponse:
        return web.Response(text="x\n", headers={f"x-h{i}": "v" for i in range(5000)})

    async def ws(request: web.Request) -> web.StreamResponse:
        sock = web.WebSocketResponse(max_msg_size=0)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/hang", hang)
    app.router.add_get("/declines", declines)
    app.router.add_get("/many-headers", many_headers)
    app.router.add_route("*", "/{tail:.*}", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- measurements ------------------------------------------------------------------------


@dataclass
class Tally:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    abusive_bytes: Counter[str] = field(default_factory=Counter)
    abusive_closed: Counter[str] = field(default_factory=Counter)
    hostile_status: Counter[str] = field(default_factory=Counter)
    ws_echoes: int = 0
    reloads: int = 0
    reload_failures: int = 0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- normal traffic --------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """One response (Content-Length or chunked body): (status, server keeps the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, headers.get("connection", "").lower() != "close"


async def keepalive_client(
    port: int, tls: ssl.SSLContext | None, stop: asyncio.Event, tally: Tally
) -> None:
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
                ),
                5,
            )
        except (OSError, TimeoutError) as e:
            tally.failed[f"connect: {type(e).__name__}"] += 1
            await asyncio.sleep(0.2)
            continue
        keep = True
        try:
            while keep and not stop.is_set():
                writer.write(request)
                status, keep = await asyncio.wait_for(read_response(reader), 10)
                if 200 <= status < 300:
                    tally.ok += 1
                else:
                    tally.failed[f"status {status}"] += 1
                await asyncio.sleep(0.02)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            if not stop.is_set():
                tally.failed[f"{'https' if tls else 'http'} keep-alive: {type(e).__name__}"] += 1
        finally:
            writer.close()


async def websocket_client(port: int, stop: asyncio.Event, tally: Tally) -> None:
    import websockets

    while not stop.is_set():
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
                while not stop.is_set():
                    await ws.send("ping")
                    if await asyncio.wait_for(ws.recv(), 10) == "ping":
                        tally.ws_echoes += 1
                    else:
                        tally.failed["websocket: wrong echo"] += 1
                    await asyncio.sleep(1)
        except Exception as e:
            if not stop.is_set():
                tally.failed[f"websocket: {type(e).__name__}"] += 1
                await asyncio.sleep(0.5)


async def reloader(control: Path, every: float, stop: asyncio.Event, tally: Tally) -> None:
    from switchctl.client import ClientError, ControlClient

    client = ControlClient(control)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every)
            return
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(client.reload_config)
            tally.reloads += 1
        except ClientError as e:
            tally.reload_failures += 1
            log(f"config reload failed: {e}")


# -- abusive clients -------------------------------------------------------------------


async def pusher(
    name: str, port: int, head: bytes, stop: asyncio.Event, tally: Tally, *, source: str
) -> None:
    """Send `head`, then bytes as fast as the proxy takes them; reconnect when it closes.

    A write waits for the previous one to drain, so a proxy that stops reading
    holds this client at one buffer (its own memory stays flat too).
    """
    junk = b"\x82\x7e\xff\xff" + b"j" * 65531
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
        except OSError:
            await stop_or(stop, 0.5)
            continue
        try:
            writer.write(head)
            while not stop.is_set() and not reader.at_eof():
                writer.write(junk)
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(writer.drain(), 1)
                        break
                    except TimeoutError:
                        continue  # the proxy paused reading: the bound we want
                tally.abusive_bytes[name] += len(junk)
        except OSError:
            pass
        finally:
            tally.abusive_closed[name] += 1
            writer.close()


async def stop_or(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def websocket_never_reads(port: int, stop: asyncio.Event, tally: Tally) -> None:
    import websockets

    payload = b"w" * 65536
    while not stop.is_set():
        try:
            async with websockets.connect(
                f"ws://127.0.0.1:{port}/ws", max_queue=1, open_timeout=5, ping_interval=None
            ) as ws:
                while not stop.is_set():
                    await asyncio.wait_for(ws.send(payload), 5)
                    tally.abusive_bytes["websocket never reads"] += len(payload)
        except TimeoutError:
            await stop_or(stop, 1)
        except Exception:
            await stop_or(stop, 0.5)
        tally.abusive_closed["websocket never reads"] += 1


async def fd_hog(port: int, count: int, stop: asyncio.Event, tally: Tally) -> None:
    """Hold `count` idle connections from 127.0.0.3, reopening whatever the proxy closes."""
    held: list[socket.socket] = []
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        held = [s for s in held if not closed(s)]
        while len(held) < count and not stop.is_set():
            s = socket.socket()
            s.setblocking(False)
            try:
                s.bind(("127.0.0.3", 0))
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), 2)
            except (OSError, TimeoutError):
                s.close()
                break
            held.append(s)
        tally.abusive_bytes["fd hog connections held"] = len(held)
        await stop_or(stop, 2)
    for s in held:
        s.close()


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def slowloris(port: int, count: int, stop: asyncio.Event, tally: Tally) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.4", 0)
                )
            except OSError:
                await stop_or(stop, 1)
                continue
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: ")
                while not stop.is_set() and not reader.at_eof():
                    await stop_or(stop, 3)
                    writer.write(b"a")
                    await writer.drain()
            except OSError:
                pass
            finally:
                tally.abusive_closed["slowloris"] += 1
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


async def hostile(port: int, stop: asyncio.Event, tally: Tally) -> None:
    i = 0
    while not stop.is_set():
        head = HOSTILE_HEADS[i % len(HOSTILE_HEADS)]
        i += 1
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.5", 0)
            )
            writer.write(head)
            line = await asyncio.wait_for(reader.readline(), 10)
            status = line.split(b" ")[1].decode() if line else "closed"
            first = head.split(b"\r\n")[0].decode()[:40]
            tally.hostile_status[f"{first} -> {status}"] += 1
            writer.close()
        except (OSError, TimeoutError, IndexError):
            tally.hostile_status["error"] += 1
        await stop_or(stop, 0.05)


# -- the run -----------------------------------------------------------------------------


def proxy_config(work: Path, http: int, https: int, backend: int, cert: Any) -> dict[str, Any]:
    return {
        "listen": {"http": f"127.0.0.1:{http}", "https": f"127.0.0.1:{https}"},
        "control": {"socket": str(work / "control.sock"), "mode": "0600"},
        "state_file": str(work / "state.json"),
        "tls": {"certificates": [{"cert": str(cert.cert), "key": str(cert.key)}]},
        "access_log": {"enabled": False},
        "apps": {
            "soak": {
                "colors": {"blue": {"upstreams": [f"http://127.0.0.1:{backend}"]}},
                "default_color": "blue",
                "health": {"path": "/health", "interval": 1.0},
            }
        },
        "sites": [
            {
                "hosts": ["localhost", "127.0.0.1"],
                "https_redirect": False,
                "routes": [{"path": "/", "app": "soak"}],
            }
        ],
    }


@dataclass(frozen=True)
class Stack:
    work: Path
    http: int
    https: int
    backend: int
    cafile: Path
    proxy_pid: int


@contextlib.contextmanager
def started(work: Path) -> Iterator[tuple[Stack, subprocess.Popen[bytes]]]:
    """The backend and edgeproxy as child processes, stopped by PID when the block ends."""
    cert = make_selfsigned(work)
    http, https, backend_port = free_port(), free_port(), free_port()
    conf = work / "edgeproxy.yml"
    conf.write_text(yaml.safe_dump(proxy_config(work, http, https, backend_port, cert)))
    with open(work / "backend.log", "wb") as blog, open(work / "edgeproxy.log", "wb") as plog:
        backend = subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--backend", str(backend_port)],
            stdout=subprocess.DEVNULL,
            stderr=blog,
        )
        proxy = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "serve", "--config", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=plog,
        )
        try:
            wait_port(http, 20)
            wait_port(backend_port, 20)
            time.sleep(1.5)  # the first health check
            yield Stack(work, http, https, backend_port, cert.cert, proxy.pid), proxy
        finally:
            for p in (proxy, backend):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in (proxy, backend):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


def wait_port(port: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {within} s")


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    http, pid = stack.http, stack.proxy_pid
    client_tls = ssl.create_default_context(cafile=str(stack.cafile))
    stop = asyncio.Event()
    tally = Tally()
    tasks = [
        *(keepalive_client(http, None, stop, tally) for _ in range(args.clients)),
        *(keepalive_client(stack.https, client_tls, stop, tally) for _ in range(args.clients)),
        websocket_client(http, stop, tally),
        reloader(stack.work / "control.sock", args.reload_every, stop, tally),
        pusher("pending upgrade", http, UPGRADE_HEAD % b"/hang", stop, tally, source="127.0.0.6"),
        pusher(
            "declined upgrade", http, UPGRADE_HEAD % b"/declines", stop, tally, source="127.0.0.7"
        ),
        websocket_never_reads(http, stop, tally),
        fd_hog(http, args.hog, stop, tally),
        slowloris(http, args.slowloris, stop, tally),
        hostile(http, stop, tally),
    ]
    running = [asyncio.create_task(t) for t in tasks]
    samples: list[dict[str, float]] = []
    start = time.monotonic()
    while (t := time.monotonic() - start) < args.duration:
        sample = {
            "t": round(t, 1),
            "rss_mib": round(rss_mib(pid), 1),
            "fds": fd_count(pid),
            "ok": tally.ok,
            "failed": sum(tally.failed.values()),
            "abusive_gib": round(
                sum(v for k, v in tally.abusive_bytes.items() if "held" not in k) / 2**30, 2
            ),
        }
        samples.append(sample)
        log(
            f"t={t:5.0f}s RSS {sample['rss_mib']:6.1f} MiB fds {sample['fds']:5.0f} "
            f"ok {tally.ok} failed {sample['failed']:.0f} abusive {sample['abusive_gib']} GiB"
        )
        await asyncio.sleep(args.interval)
    stop.set()
    await asyncio.wait(running, timeout=15)
    for task in running:
        task.cancel()
    await asyncio.sleep(3)  # the proxy notices the closed sockets
    after = {"rss_mib": round(rss_mib(pid), 1), "fds": fd_count(pid)}
    ref = next((s for s in samples if s["t"] >= args.warmup), samples[0])
    return {
        "duration_s": args.duration,
        "normal_ok": tally.ok,
        "normal_failed": dict(tally.failed),
        "websocket_echoes": tally.ws_echoes,
        "reloads": tally.reloads,
        "reload_failures": tally.reload_failures,
        "abusive_bytes": dict(tally.abusive_bytes),
        "abusive_reconnects": dict(tally.abusive_closed),
        "hostile_answers": dict(tally.hostile_status),
        "rss_mib": {
            "first": samples[0]["rss_mib"],
            "after_warmup": ref["rss_mib"],
            "end": samples[-1]["rss_mib"],
            "peak": max(s["rss_mib"] for s in samples),
            "after_clients_left": after["rss_mib"],
        },
        "fds": {
            "first": samples[0]["fds"],
            "after_warmup": ref["fds"],
            "end": samples[-1]["fds"],
            "peak": max(s["fds"] for s in samples),
            "after_clients_left": after["fds"],
        },
        "samples": samples,
    }


def markdown(doc: dict[str, Any]) -> str:
    failed = sum(doc["normal_failed"].values())
    pushed = sum(v for k, v in doc["abusive_bytes"].items() if "held" not in k) / 2**30
    r, f = doc["rss_mib"], doc["fds"]
    lines = [
        f"Soak: {doc['duration_s']} s of abusive clients beside normal traffic.",
        "",
        "| normal requests ok | failed | WebSocket echoes | reloads | abusive GiB pushed |",
        "|--:|--:|--:|--:|--:|",
        f"| {doc['normal_ok']:,} | {failed} | {doc['websocket_echoes']} | {doc['reloads']} "
        f"| {pushed:.1f} |",
        "",
        "| | first | after warm-up | end | peak | after the clients left |",
        "|---|--:|--:|--:|--:|--:|",
        f"| RSS MiB | {r['first']} | {r['after_warmup']} | {r['end']} | {r['peak']} "
        f"| {r['after_clients_left']} |",
        f"| open fds | {f['first']} | {f['after_warmup']} | {f['end']} | {f['peak']} "
        f"| {f['after_clients_left']} |",
        "",
    ]
    if failed:
        lines += ["Failed normal requests by cause:", ""]
        lines += [f"- {k}: {v}" for k, v in sorted(doc["normal_failed"].items())]
        lines.append("")
    lines += ["Abusive clients (bytes pushed, times the proxy closed on them):", ""]
    for name, n in sorted(doc["abusive_bytes"].items()):
        closed_n = doc["abusive_reconnects"].get(name, 0)
        lines.append(f"- {name}: {n:,} ({closed_n} closes)")
    lines += ["", "Hostile heads (first line → status):", ""]
    lines += [f"- `{k}`: {v}" for k, v in sorted(doc["hostile_answers"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument(
        "--warmup", type=float, default=20, help="seconds before the reference sample"
    )
    parser.add_argument("--clients", type=int, default=4, help="keep-alive clients per scheme")
    parser.add_argument("--hog", type=int, default=2000, help="idle connections the fd hog holds")
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--reload-every", type=float, default=15)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--backend", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend is not None:
        backend_main(args.backend)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        started(Path(tmp)) as (stack, proxy),
    ):
        doc = uvloop.run(run(args, stack))
        doc["proxy_survived"] = proxy.poll() is None
        if not doc["proxy_survived"]:
            log("edgeproxy exited during the soak; its log:")
            log((stack.work / "edgeproxy.log").read_text()[-3000:])
    print(markdown(doc))
    path = (
        args.json or Path(__file__).parent / "out" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    log(f"JSON: {path}")
    if sum(doc["normal_failed"].values()) or not doc["proxy_survived"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
