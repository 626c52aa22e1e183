"""`make demo`: edgeproxy with a self-signed certificate in front of two demo backends.

Walks a live release blue → green 10% → green 100% while a client keeps
sending requests, and prints who answered and how many requests failed (0).
Then keeps serving until Ctrl-C (or exits at once with --once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import yaml
from aiohttp import web

from certs.selfsigned import make_ca_and_leaf
from switchctl.client import ControlClient

HOST = "shop.localhost"


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def backend_app(color: str) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(
            text=f"hello from {color} ({request.method} {request.path})\n",
            headers={"X-Demo-Color": color},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class Backends:
    """The two demo apps (blue and green), served from a thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runners: list[web.AppRunner] = []

    def start(self, ports: dict[str, int]) -> None:
        self.thread.start()
        for color, port in ports.items():
            asyncio.run_coroutine_threadsafe(self._serve(color, port), self.loop).result(10)

    async def _serve(self, color: str, port: int) -> None:
        runner = web.AppRunner(backend_app(color), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.runners.append(runner)

    def stop(self) -> None:
        for r in self.runners:
            asyncio.run_coroutine_threadsafe(r.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def https_get(port: int, ctx: ssl.SSLContext, source: str = "127.0.0.1") -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as s,
    ):
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    return body.decode().split()[2]  # "hello from COLOR (...)"


def split(port: int, ctx: ssl.SSLContext, n: int = 200) -> Counter[str]:
    """n fresh visitors from distinct loopback addresses (the split hashes the client address)."""
    return Counter(https_get(port, ctx, f"127.0.{i // 250}.{i % 250 + 1}") for i in range(n))


class Traffic:
    """A steady client during the walkthrough: counts answers per color and failures."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.seen: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            try:
                self.seen[
                    https_get(self.port, self.ctx, f"127.1.{i // 250 % 250}.{i % 250 + 1}")
                ] += 1
            except Exception as e:  # counted and shown: the demo proves there are none
                self.failures.append(repr(e))


@contextlib.contextmanager
def proxy_process(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = open(config.with_name("edgeproxy.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeproxy",
            "serve",
            "--config",
            str(config),
            "--log-format",
            "text",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"edgeproxy did not start; see {config.with_name('edgeproxy.log')}"
                    ) from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the walkthrough")
    parser.add_argument("--dir", default=".demo", help="working directory (default: .demo)")
    args = parser.parse_args()
    work = Path(args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)

    step("making a self-signed CA and a certificate for shop.localhost")
    tls = make_ca_and_leaf([HOST, "localhost"], work / "tls")
    ports = {"http": free_port(8080), "https": free_port(8443)}
    colors = {"blue": free_port(9000), "green": free_port(9002)}
    sock = work / "control.sock"
    (work / "state.json").unlink(missing_ok=True)
    config = {
        "listen": {"http": f"127.0.0.1:{ports['http']}", "https": f"127.0.0.1:{ports['https']}"},
        "control": {"socket": str(sock)},
        "state_file": str(work / "state.json"),
        "access_log": {"enabled": False},
        "tls": {"certificates": [{"cert": str(tls.fullchain), "key": str(tls.privkey)}]},
        "apps": {
            "shop": {
                "colors": {c: {"upstreams": [f"http://127.0.0.1:{p}"]} for c, p in colors.items()},
                "health": {"path": "/health"},
            }
        },
        "sites": [
            {
                "hosts": [HOST, "localhost"],
                "https_redirect": True,
                "response_headers": {
                    "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff",
                },
                "hsts": "max-age=31536000; includeSubDomains",
                "routes": [{"path": "/", "app": "shop"}],
            }
        ],
    }
    config_path = work / "edgeproxy.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"    config: {config_path}")

    step(f"starting demo backends: blue on :{colors['blue']}, green on :{colors['green']}")
    backends = Backends()
    backends.start(colors)
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        step(
            f"starting edgeproxy: https://{HOST}:{ports['https']} (HTTP :{ports['http']} redirects)"
        )
        with proxy_process(config_path, ports["https"]):
            ctl = ControlClient(sock)
            traffic = Traffic(ports["https"], ctx)
            traffic.thread.start()
            print(f"    answered: {https_get(ports['https'], ctx)}  (all traffic on blue)")

            step("canary: switchctl set green --weight 10")
            ctl.set("shop", "green", 10)
            seen = split(ports["https"], ctx)
            print(f"    200 fresh visitors: {dict(seen)}")

            step("switchctl set green --weight 100 (promote; blue keeps its in-flight requests)")
            ctl.set("shop", "green", 100)
            seen = split(ports["https"], ctx, 50)
            print(f"    50 fresh visitors: {dict(seen)}")

            step("switchctl drain blue")
            view = ctl.drain("shop", "blue", 10)
            print(f"    draining: {list(view['draining'])}")
            time.sleep(0.5)
            traffic.stop.set()
            traffic.thread.join(10)
            total = sum(traffic.seen.values())
            print(
                f"\n    background client during the release: {total} requests, "
                f"{dict(traffic.seen)}, failed: {len(traffic.failures)}"
            )
            if traffic.failures:
                print(f"    first failure: {traffic.failures[0]}")
            print(
                "\nTry it yourself:\n"
                f"  curl --cacert {tls.ca_cert} --resolve {HOST}:{ports['https']}:127.0.0.1 "
                f"https://{HOST}:{ports['https']}/\n"
                f"  export EDGEPROXY_SOCKET={sock}\n"
                "  .venv/bin/switchctl status\n"
                "  .venv/bin/switchctl set blue --weight 10\n"
                "  .venv/bin/switchctl promote\n"
                "  .venv/bin/switchctl rollback\n"
            )
            if traffic.failures:
                raise SystemExit(1)
            if not args.once:
                print("Serving until Ctrl-C ...", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
    finally:
        backends.stop()
    print("demo stopped")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
