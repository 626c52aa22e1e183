"""Real-socket fixtures: edgeproxy on uvloop in a thread, aiohttp backends, TLS material.

`edge(config_dict)` starts the real Server (production wiring from
`edgeproxy.app.build_server`) on port 0 in its own uvloop thread and returns
its addresses; `backend(name)` starts an aiohttp server that answers with its
name and records every request it saw.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trustme
import uvloop
from aiohttp import WSMsgType, web

from edgeproxy.app import build_server
from edgeproxy.config import Config
from edgeproxy.server import Server

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread; run coroutines on it from tests."""

    def __init__(self, name: str, *, use_uvloop: bool = True) -> None:
        self.loop = uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@dataclass
class Backend:
    name: str
    port: int
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    release: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    def release_slow(self) -> None:
        """Let requests waiting on /slow finish (thread-safe)."""
        assert self.loop is not None and self.release is not None
        self.loop.call_soon_threadsafe(self.release.set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def make_backend_app(b: Backend) -> web.Application:
    async def any_route(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("User-Agent", "").startswith("edgeproxy-health"):
            return web.Response(text="ok\n")  # health probes are not the traffic under test
        b.seen.append(request)
        b.bodies.append(body)
        path = request.path
        if path.startswith("/status/"):
            return web.Response(status=int(path.split("/")[2]), text=f"{b.name}\n")
        if path == "/slow":
            assert b.release is not None
            await b.release.wait()
            return web.Response(text=f"{b.name} slow done\n")
        if path == "/sleep":
            await asyncio.sleep(float(request.query.get("s", "1")))
            return web.Response(text=f"{b.name} slept\n")
        if path == "/big":
            size = int(request.query.get("n", "1048576"))
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            chunk = b"x" * 65536
            sent = 0
            while sent < size:
                part = chunk[: size - sent]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
            return resp
        if path == "/echo":
            return web.Response(body=body, headers={"X-Body-Length": str(len(body))})
        if path == "/headers":
            return web.json_response({k.lower(): v for k, v in request.headers.items()})
        if path == "/respond-header":  # ?name=X&value=Y: a response header of the app's choice
            q = request.query
            return web.Response(text=f"{b.name}\n", headers={q["name"]: q["value"]})
        return web.Response(text=f"{b.name}\n", headers={"X-Backend": b.name})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        b.seen.append(request)
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{b.name}: {msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", any_route)
    return app


@pytest.fixture(scope="session")
def backend_loop() -> Iterator[LoopThread]:
    lt = LoopThread("backends", use_uvloop=False)
    yield lt
    lt.stop()


@pytest.fixture
def backend(backend_loop: LoopThread) -> Iterator[Callable[[str], Backend]]:
    runners: list[web.AppRunner] = []
    backends: list[Backend] = []

    def start(name: str) -> Backend:
        b = Backend(name, 0)
        backends.append(b)

        async def boot() -> int:
            b.release = asyncio.Event()
            b.loop = asyncio.get_running_loop()
            runner = web.AppRunner(make_backend_app(b), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            server = site._server
            assert server is not None
            return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        b.port = backend_loop.run(boot())
        return b

    yield start
    for r in runners:

        async def cleanup(r: web.AppRunner = r) -> None:
            for b in backends:
                if b.release is not None:
                    b.release.set()  # let /slow handlers end so shutdown doesn't wait
            await r.cleanup()

        backend_loop.run(cleanup())


@dataclass
class Edge:
    server: Server
    thread: LoopThread
    config: Config
    tmp: Path

    @property
    def http_port(self) -> int:
        return self.server.addresses["http"][1]

    @property
    def https_port(self) -> int:
        return self.server.addresses["https"][1]

    @property
    def socket_path(self) -> Path:
        return self.config.control.socket

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self.thread.run(coro, timeout)

    def stop(self) -> None:
        self.server.stopping.set()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tmp_path: Path, tls_ca: trustme.CA) -> dict[str, Path]:
    """A leaf for `*.example.test`, `example.test`, `a.test`, `127.0.0.1`, plus its CA."""
    leaf = tls_ca.issue_cert("example.test", "*.example.test", "a.test", "127.0.0.1")
    cert = tmp_path / "fullchain.pem"
    key = tmp_path / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls_ca.cert_pem.bytes())
    return {"cert": cert, "key": key, "ca": ca}


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Callable[..., Edge]]:
    started: list[Edge] = []

    def start(conf: dict[str, Any]) -> Edge:
        conf = dict(conf)
        conf.setdefault("listen", {"http": "127.0.0.1:0"})
        conf.setdefault("control", {"socket": str(tmp_path / f"ctl{len(started)}.sock")})
        conf.setdefault("state_file", str(tmp_path / f"state{len(started)}.json"))
        conf.setdefault("access_log", {"enabled": False})
        conf.setdefault("shutdown_grace", 2)
        config = Config.model_validate(conf)
        lt = LoopThread("edgeproxy")
        server = build_server(config)

        async def boot() -> None:
            await server.start()

        lt.run(boot())
        e = Edge(server, lt, config, tmp_path)
        started.append(e)
        return e

    yield start
    for e in started:

        async def down(e: Edge = e) -> None:
            await e.server.shutdown()

        try:
            e.run(down())
        finally:
            e.thread.stop()


def site(
    app_or_upstream: str, hosts: tuple[str, ...] = ("a.test",), **route: Any
) -> dict[str, Any]:
    """A one-route site: `site("shop")` routes / to app shop; `site("http://…")` to an upstream."""
    target = {"upstream": app_or_upstream} if "://" in app_or_upstream else {"app": app_or_upstream}
    return {
        "hosts": list(hosts),
        "https_redirect": False,
        "routes": [{"path": "/", **target, **route}],
    }


def raw_request(
    port: int,
    data: bytes,
    *,
    timeout: float = 5.0,
    read_until_close: bool = True,
    source: str | None = None,
) -> bytes:
    """Send raw bytes, return everything the server answers until it closes (or times out).

    `source`: the loopback address to connect from (a distinct client per address).
    """
    address = (source, 0) if source is not None else None
    with socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=address
    ) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                chunks.append(got)
                if not read_until_close:
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def client_tls_context(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


@dataclass
class Resp:
    status: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        value: str | None = self.headers.get(name)
        return value


def http_get(
    port: int,
    path: str = "/",
    host: str = "a.test",
    method: str = "GET",
    body: bytes | None = None,
    **headers: str,
) -> Resp:
    """One request on a fresh connection, closed afterwards."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host, **headers})
        r = conn.getresponse()
        return Resp(r.status, r.headers, r.read())
    finally:
        conn.close()


def in_memory_config(**extra: Any) -> Config:
    """Site `a.test` → app `shop` (one color, blue); for in-memory `connect_in_memory` tests."""
    return Config.model_validate(
        {
            "access_log": {"enabled": False},
            "apps": {"shop": {"colors": {"blue": {"upstreams": ["http://127.0.0.1:9"]}}}},
            "sites": [
                {
                    "hosts": ["a.test"],
                    "https_redirect": False,
                    "routes": [{"path": "/", "app": "shop"}],
                }
            ],
            **extra,
        }
    )
