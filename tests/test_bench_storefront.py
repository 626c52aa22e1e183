"""`python -m bench storefront` against Medusa-shaped backends behind a real edgeproxy
(the shipped compose/medusa config over TLS, without its rate limit): the report's
counts must match what the backends saw. No timing assertions."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from bench import storefront as sf
from tests.medusa_fixtures import API, PUBLISHABLE_KEY, FakeMedusa, shipped_edgeproxy_config
from tests.proxy_fixtures import Edge, LoopThread


@pytest.fixture
def store(
    edge: Callable[..., Edge], backend_loop: LoopThread, tls_ca: trustme.CA, tmp_path: Path
) -> Iterator[Callable[..., tuple[Edge, FakeMedusa, FakeMedusa]]]:
    started: list[FakeMedusa] = []

    def start(blue_broken: bool = False) -> tuple[Edge, FakeMedusa, FakeMedusa]:
        blue = FakeMedusa("blue", broken=blue_broken).start(backend_loop)
        green = FakeMedusa("green").start(backend_loop)
        started.extend([blue, green])
        conf = shipped_edgeproxy_config(
            tmp_path, tls_ca, {"blue": blue.url, "green": green.url}, expose_color=True
        )
        del conf["sites"][0]["rate_limit"]  # every shopper shares 127.0.0.1 here
        (tmp_path / "edgeproxy.yml").write_text(yaml.safe_dump(conf))
        return edge(conf), blue, green

    yield start
    for b in started:
        b.stop(backend_loop)


def options(e: Edge, tmp_path: Path, **kw: Any) -> sf.Options:
    defaults: dict[str, Any] = dict(
        url=f"https://127.0.0.1:{e.https_port}",
        host=API,
        ca_file=tmp_path / "fullchain.pem",
        key=PUBLISHABLE_KEY,
        shoppers=4,
        journeys=3,
        think=0,
        fresh_share=0.5,
    )
    return sf.Options(**{**defaults, **kw})


ROUTES = {
    "regions": ("GET", "/store/regions"),
    "products": ("GET", "/store/products"),
    "cart": ("POST", "/store/carts"),
    "line_item": ("POST", "/store/carts/{id}/line-items"),
    "get_cart": ("GET", "/store/carts/{id}"),
}


def test_the_report_counts_every_request_the_backend_saw_by_step_and_color(
    store: Callable[..., tuple[Edge, FakeMedusa, FakeMedusa]], tmp_path: Path
) -> None:
    e, blue, green = store()
    doc = sf.run(options(e, tmp_path))
    [run, total] = doc["summary"]
    assert total["requests"] == run["requests"] == 4 * 3 * 5 == blue.store_requests()
    assert green.store_requests() == 0
    assert (total["failed"], total["colors"]) == (0, {"blue": 60})
    for step, (method, route) in ROUTES.items():
        assert total["steps"][step] == blue.seen[(method, route, 200)] == 12
    assert sum(doc["records"]["fresh"]) >= 2 * 3 * 5  # half the shoppers: a new connection each
    png = sf.plot(doc, tmp_path / "storefront.png")
    assert png.read_bytes().startswith(b"\x89PNG")
    md = sf.markdown(doc)
    assert "| total |" in md and "blue 60" in md
    json.dumps(doc)  # JSON-able as written by `python -m bench storefront`


def test_failed_requests_are_counted_by_cause_as_the_backend_answered_them(
    store: Callable[..., tuple[Edge, FakeMedusa, FakeMedusa]], tmp_path: Path
) -> None:
    e, blue, _ = store(blue_broken=True)
    doc = sf.run(options(e, tmp_path))
    total = doc["summary"][-1]
    assert total["failed"] == total["requests"] == 4 * 3  # each journey stops at its first failure
    from_backend = blue.seen[("GET", "/store/regions", 500)]
    assert from_backend >= 1
    # After 5 failures in a row edgeproxy ejects blue and answers 503 itself (no color).
    assert total["causes"] == {"http-500": from_backend, "http-503": 12 - from_backend} or (
        total["causes"] == {"http-500": 12} and from_backend == 12
    )
    assert total["failed_colors"].get("blue") == from_backend


def test_without_the_publishable_key_every_request_fails_with_medusas_400(
    store: Callable[..., tuple[Edge, FakeMedusa, FakeMedusa]], tmp_path: Path
) -> None:
    e, blue, _ = store()
    doc = sf.run(options(e, tmp_path, key=""))
    assert doc["summary"][-1]["causes"] == {"http-400": 12}
    assert blue.seen[("GET", "/store/regions", 400)] == 12


FAKE_DEPLOY = """
import json, sys, time
from switchctl.client import ControlClient

def say(**e):
    print(json.dumps(e), flush=True)

control = ControlClient(sys.argv[1])
say(event="deploy_start", release="r1", target="green")
for kind, step in [("image", "get the image"), ("smoke", "smoke-check green"),
                   ("canary", "send 10% of traffic to green and check the gates"),
                   ("canary", "send 50% of traffic to green and check the gates"),
                   ("promote", "promote green to active"), ("drain_old", "drain blue"),
                   ("record", "record"), ("notify", "notify")]:
    say(event="step_start", kind=kind, step=step)
    if kind == "canary":
        control.set("medusa", "green", int(step.split("%")[0].split()[-1]))
    if kind == "promote":
        control.promote("medusa")
    time.sleep(0.3)
say(event="deploy_ok", release="r1")
"""


def test_a_release_splits_the_report_into_its_phases_and_every_request_is_in_one(
    store: Callable[..., tuple[Edge, FakeMedusa, FakeMedusa]], tmp_path: Path
) -> None:
    e, blue, green = store()
    script = tmp_path / "fake_deploy.py"
    script.write_text(textwrap.dedent(FAKE_DEPLOY))
    opts = options(
        e,
        tmp_path,
        journeys=0,
        think=0.05,
        shoppers=6,
        deploy=f"{sys.executable} {script} {e.socket_path}",
        before=0.5,
        after=0.5,
    )
    doc = sf.run(opts)
    names = [p["phase"] for p in doc["summary"]]
    assert names == [
        "before",
        "prepare",
        "canary 10%",
        "canary 50%",
        "promote",
        "drain",
        "finish",
        "after",
        "total",
    ]
    *phases, total = doc["summary"]
    assert sum(p["requests"] for p in phases) == total["requests"]
    assert total["requests"] == blue.store_requests() + green.store_requests()
    assert total["colors"] == {"blue": blue.store_requests(), "green": green.store_requests()}
    assert phases[0]["colors"].keys() == {"blue"}
    assert phases[-1]["colors"].keys() == {"green"}
    assert doc["deploy"]["exit"] == 0
