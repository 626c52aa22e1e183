"""A Medusa-v2-shaped aiohttp backend and the shipped compose/medusa configs, adapted for tests.

`FakeMedusa` answers the storefront routes a shop uses (regions, products, carts,
line items) the way Medusa v2 does where it matters here: every `/store/` route
answers 400 without the right `x-publishable-api-key`. `broken=True` makes the
store routes answer 500 (a release that boots and passes /health, then fails).
`served_by=True` adds `X-Edgeproxy-Color: <color>` to every answer, as an app
trying to speak for edgeproxy would: edgeproxy drops it and names the color
itself, only for an honoured override (or with `expose_color`).
Every request is counted by (method, route, status).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from aiohttp import web

from switchctl.deploy.config import DeployConfig, load_deploy_config
from switchctl.deploy.smoke import SmokeClient, trust
from tests.proxy_fixtures import Edge, LoopThread

COMPOSE = Path(__file__).resolve().parent.parent / "compose" / "medusa"
API = "api.shop.example.com"
PUBLISHABLE_KEY = "pk_01test0publishable0key"


@dataclass
class FakeMedusa:
    color: str
    broken: bool = False
    served_by: bool = True
    port: int = 0
    seen: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    """(method, route, status) → count, health probes included under route `/health`."""
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        carts: dict[str, list[dict[str, Any]]] = {}
        ids = itertools.count(1)

        def reply(
            request: web.Request, route: str, status: int, body: dict[str, Any]
        ) -> web.Response:
            self.seen[(request.method, route, status)] += 1
            headers = {"X-Edgeproxy-Color": self.color} if self.served_by else {}
            return web.Response(
                status=status,
                text=json.dumps(body),
                content_type="application/json",
                headers=headers,
            )

        def store(route: str) -> Any:
            def wrap(handler: Any) -> Any:
                async def run(request: web.Request) -> web.Response:
                    if request.headers.get("x-publishable-api-key") != PUBLISHABLE_KEY:
                        return reply(
                            request,
                            route,
                            400,
                            {
                                "type": "not_allowed",
                                "message": "Publishable API key required in the request header: "
                                "x-publishable-api-key.",
                            },
                        )
                    if self.broken:
                        return reply(request, route, 500, {"type": "unknown_error"})
                    status, body = await handler(request)
                    return reply(request, route, status, body)

                return run

            return wrap

        async def health(request: web.Request) -> web.Response:
            self.seen[(request.method, "/health", 200)] += 1
            headers = {"X-Edgeproxy-Color": self.color} if self.served_by else {}
            return web.Response(text="OK", headers=headers)

        @store("/store/regions")
        async def regions(request: web.Request) -> tuple[int, dict[str, Any]]:
            return 200, {"regions": [{"id": "reg_01", "currency_code": "eur"}], "count": 1}

        @store("/store/products")
        async def products(request: web.Request) -> tuple[int, dict[str, Any]]:
            return 200, {"products": [{"id": "prod_01", "variants": [{"id": "variant_01"}]}]}

        @store("/store/carts")
        async def new_cart(request: web.Request) -> tuple[int, dict[str, Any]]:
            cart_id = f"cart_{next(ids)}"
            carts[cart_id] = []
            return 200, {"cart": {"id": cart_id, "items": []}}

        @store("/store/carts/{id}/line-items")
        async def line_item(request: web.Request) -> tuple[int, dict[str, Any]]:
            items = carts.get(request.match_info["id"])
            if items is None:
                return 404, {"type": "not_found"}
            items.append(await request.json())
            return 200, {"cart": {"id": request.match_info["id"], "items": items}}

        @store("/store/carts/{id}")
        async def cart(request: web.Request) -> tuple[int, dict[str, Any]]:
            items = carts.get(request.match_info["id"])
            if items is None:
                return 404, {"type": "not_found"}
            return 200, {"cart": {"id": request.match_info["id"], "items": items}}

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/store/regions", regions)
        app.router.add_get("/store/products", products)
        app.router.add_post("/store/carts", new_cart)
        app.router.add_post("/store/carts/{id}/line-items", line_item)
        app.router.add_get("/store/carts/{id}", cart)
        return app

    def start(self, loop: LoopThread) -> FakeMedusa:
        async def boot() -> int:
            self.runner = web.AppRunner(self.app(), access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = loop.run(boot())
        return self

    def stop(self, loop: LoopThread) -> None:
        if self.runner is not None:
            loop.run(self.runner.cleanup())

    def store_requests(self) -> int:
        return sum(n for (_, route, _), n in self.seen.items() if route != "/health")


def shipped_edgeproxy_config(
    tmp_path: Path, ca: trustme.CA, upstreams: dict[str, str], **app: Any
) -> dict[str, Any]:
    """compose/medusa/edgeproxy.yml as shipped, with port-0 listeners, a test certificate,
    and the colors pointing at `upstreams`; `app` overrides keys of apps.medusa."""
    conf: dict[str, Any] = yaml.safe_load((COMPOSE / "edgeproxy.yml").read_text())
    leaf = ca.issue_cert(API, "portainer.shop.example.com", "status.shop.example.com")
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    webroot = tmp_path / "webroot"
    webroot.mkdir(exist_ok=True)
    conf["listen"] = {"http": "127.0.0.1:0", "https": "127.0.0.1:0"}
    conf["tls"]["certificates"] = [{"cert": str(cert), "key": str(key)}]
    conf["acme"]["webroot"] = str(webroot)
    conf["control"] = {"socket": str(tmp_path / "control.sock")}
    conf["state_file"] = str(tmp_path / "state.json")
    conf["access_log"] = {"enabled": False}
    conf["shutdown_grace"] = 1
    medusa = conf["apps"]["medusa"]
    for color, url in upstreams.items():
        medusa["colors"][color]["upstreams"] = [url]
    medusa["health"] = {"path": "/health", "interval": 0.2, "timeout": 1}
    # These tests run on a server where blue was released before (the shipped
    # `first_release: hold` is for the first deploy, tests/test_first_release.py).
    medusa["first_release"] = "serve"
    medusa.update(app)
    return conf


@dataclass
class Shop:
    edge: Edge
    blue: FakeMedusa
    green: FakeMedusa
    deploy: DeployConfig
    proxy_config: Path

    def smoke(self, **changes: Any) -> SmokeClient:
        smoke = self.deploy.smoke.model_copy(
            update={"url": f"https://127.0.0.1:{self.edge.https_port}", **changes}
        )
        env = {"MEDUSA_PUBLISHABLE_KEY": PUBLISHABLE_KEY}
        return SmokeClient(smoke, env, trust(smoke, [self.proxy_config]), "app.env")

    def failures(self, color: str = "green", **changes: Any) -> list[str]:
        c = self.smoke(**changes)
        return [str(o.problem) for o in (c.run(ch, color) for ch in c.smoke.checks) if not o.ok]


@pytest.fixture
def shop(
    edge: Callable[..., Edge],
    backend_loop: LoopThread,
    tls_ca: trustme.CA,
    tmp_path: Path,
) -> Iterator[Callable[..., Shop]]:
    started: list[FakeMedusa] = []

    def start(green_broken: bool = False, served_by: bool = True, **app: Any) -> Shop:
        blue = FakeMedusa("blue", served_by=served_by).start(backend_loop)
        green = FakeMedusa("green", broken=green_broken, served_by=served_by).start(backend_loop)
        started.extend([blue, green])
        conf = shipped_edgeproxy_config(
            tmp_path, tls_ca, {"blue": blue.url, "green": green.url}, **app
        )
        path = tmp_path / "edgeproxy.yml"
        path.write_text(yaml.safe_dump(conf))
        e = edge(conf)
        return Shop(e, blue, green, load_deploy_config(COMPOSE / "deploy.yml"), path)

    yield start
    for b in started:
        b.stop(backend_loop)
