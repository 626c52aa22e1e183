"""The canary step against a real edgeproxy (the shipped compose/medusa config over TLS),
Medusa-shaped backends, visitors at a small shop's rate and the synthetic probe.

The step runs through `Executor._canary` with a real control socket; nothing here
needs docker (the step only talks to edgeproxy).
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from switchctl.client import ControlClient
from switchctl.deploy.config import EnvFile
from switchctl.deploy.containers import ReleaseSpec
from switchctl.deploy.errors import DeployError
from switchctl.deploy.execute import Executor
from switchctl.deploy.plan import Step
from switchctl.deploy.progress import Progress
from tests import medusa_fixtures
from tests.medusa_fixtures import API, PUBLISHABLE_KEY, Shop

shop = medusa_fixtures.shop


class Visitors:
    """Storefront visitors at `rate` requests a second, each request a new TLS connection from
    the next of 200 loopback addresses (edgeproxy splits a canary by client address)."""

    def __init__(self, s: Shop, rate: float) -> None:
        self.port = s.edge.https_port
        self.ctx = ssl.create_default_context(cafile=str(s.proxy_config.parent / "fullchain.pem"))
        self.ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf is its own anchor
        self.rate = rate
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        start = time.monotonic()
        while not self._stop.is_set():
            n += 1
            conn = http.client.HTTPSConnection(API, self.port, context=self.ctx, timeout=5)
            try:
                sock = socket.create_connection(
                    ("127.0.0.1", self.port), 5, source_address=(f"127.0.3.{n % 200 + 1}", 0)
                )
                conn.sock = self.ctx.wrap_socket(sock, server_hostname=API)
                conn.request(
                    "GET", "/store/products", headers={"x-publishable-api-key": PUBLISHABLE_KEY}
                )
                self.statuses[conn.getresponse().status] += 1
            except (OSError, http.client.HTTPException):
                self.statuses[0] += 1
            finally:
                conn.close()
            self._stop.wait(max(0.0, start + n / self.rate - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def visitors() -> Iterator[Callable[[Shop, float], Visitors]]:
    started: list[Visitors] = []

    def start(s: Shop, rate: float) -> Visitors:
        v = Visitors(s, rate)
        started.append(v)
        return v

    yield start
    for v in started:
        v.stop()


def executor(s: Shop, **canary: Any) -> tuple[Executor, io.StringIO]:
    """An Executor for the shipped deploy config, pointed at this edgeproxy; `canary` changes
    keys of the shipped `canary` section (gates by `gates={...}`)."""
    shipped = s.deploy
    gates = shipped.canary.gates.model_copy(update=canary.pop("gates", {}))
    cfg = shipped.model_copy(
        update={
            "smoke": shipped.smoke.model_copy(
                update={"url": f"https://127.0.0.1:{s.edge.https_port}"}
            ),
            "canary": shipped.canary.model_copy(update={"gates": gates, **canary}),
            "edgeproxy": shipped.edgeproxy.model_copy(
                update={"config": s.proxy_config, "socket": s.edge.socket_path}
            ),
            "state_dir": s.proxy_config.parent / "switchctl",
        }
    )
    out = io.StringIO()
    ex = Executor(
        cfg,
        EnvFile(Path("app.env"), {"MEDUSA_PUBLISHABLE_KEY": PUBLISHABLE_KEY}),
        cast(Any, None),  # the canary step never touches docker
        ControlClient(s.edge.socket_path),
        cast(Any, None),
        ReleaseSpec(id="r-canary", image="medusa:test", ref=None),
        Progress(out=out, heartbeat=3600),
    )
    deadline = time.monotonic() + 10
    while not all(c.get("healthy") for c in ex.control.app("medusa")["colors"].values()):
        assert time.monotonic() < deadline, "edgeproxy never saw both colors healthy"
        time.sleep(0.05)
    return ex, out


STEP = Step("canary", color="green", arg=10)


def test_a_broken_release_is_caught_at_the_10_percent_step_at_10_requests_a_second(
    shop: Callable[..., Shop], visitors: Callable[[Shop, float], Visitors]
) -> None:
    s = shop(green_broken=True)
    ex, _ = executor(s)  # the shipped canary settings: dwell 60 s, min_requests 60, probe 1/s
    v = visitors(s, 10)
    with pytest.raises(DeployError) as e:
        ex._canary(STEP)
    v.stop()
    assert e.value.step == "canary 10%"
    assert "with 5xx" in e.value.why and "one-sided binomial test" in e.value.why
    failed = sum(n for (_, _, st), n in s.green.seen.items() if st == 500)
    assert 2 <= failed < ex.cfg.canary.gates.min_requests  # judged long before min_requests
    view = ex.control.app("medusa")
    assert (view["candidate"], view["weight"]) == ("green", 10)  # the executor's _fail undoes it


def test_with_no_visitors_the_probe_alone_gives_the_gate_its_evidence(
    shop: Callable[..., Shop],
) -> None:
    s = shop(green_broken=True)
    ex, _ = executor(s, probe_rate=5)
    with pytest.raises(DeployError) as e:
        ex._canary(STEP)
    assert "probe sent" in e.value.why
    assert s.green.seen[("GET", "/store/regions", 500)] >= 2
    assert s.blue.store_requests() == 0


def test_a_step_dwells_past_its_dwell_until_the_new_color_has_min_requests(
    shop: Callable[..., Shop],
) -> None:
    s = shop()
    ex, _ = executor(s, dwell=0.2, probe_rate=5, gates={"min_requests": 8})
    note = ex._canary(STEP)
    requests = int(note.split(" requests")[0])
    assert requests >= 8, note
    probed = s.green.seen[("GET", "/store/regions", 200)] + s.green.seen[("GET", "/health", 200)]
    assert probed >= 8  # health checks are not counted as requests by edgeproxy
    assert "probe sent" in note


def thin(s: Shop, mode: str) -> tuple[Executor, io.StringIO]:
    return executor(
        s, dwell=0.1, max_dwell=0.4, probe_rate=0, on_thin_traffic=mode, gates={"min_requests": 4}
    )


def test_thin_traffic_fails_the_step_when_configured_to_fail(shop: Callable[..., Shop]) -> None:
    ex, _ = thin(shop(), "fail")
    with pytest.raises(DeployError) as e:
        ex._canary(STEP)
    assert "green served 0 of the 4 requests (gates.min_requests)" in e.value.why
    assert "(on_thin_traffic: fail)" in e.value.why


def test_thin_traffic_proceeds_unjudged_when_configured_to_proceed_and_says_so(
    shop: Callable[..., Shop],
) -> None:
    ex, out = thin(shop(), "proceed")
    assert ex._canary(STEP).endswith("too few requests to judge, proceeded")
    assert "proceeding unjudged (on_thin_traffic: proceed)" in out.getvalue()


def test_thin_traffic_holds_the_step_saying_so_until_the_evidence_arrives(
    shop: Callable[..., Shop],
) -> None:
    s = shop()
    ex, out = thin(s, "hold")
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(ex._canary(STEP)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while "holding at 10%" not in out.getvalue():
        assert time.monotonic() < deadline, out.getvalue()
        time.sleep(0.05)
    time.sleep(0.5)
    assert t.is_alive() and result == []  # past max_dwell, still holding
    probe = s.smoke()
    for _ in range(4):
        assert probe.run(probe.smoke.checks[0], "green").ok
    t.join(10)
    assert result and result[0].startswith("4 requests"), result
