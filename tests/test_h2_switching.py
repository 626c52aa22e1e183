"""Blue/green over HTTP/2: flips under h2load, and the canary split per visitor."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from switchctl.client import ControlClient
from tests.h2_fixtures import H2Client, h2_edge_config, site
from tests.proxy_fixtures import Backend, Edge, raw_request

pytestmark = pytest.mark.skipif(not shutil.which("h2load"), reason="needs h2load (nghttp2-client)")


def two_colors(
    edge: Callable[..., Edge], backend: Callable[[str], Backend], tls_files: dict[str, Path]
) -> tuple[Edge, Backend, Backend, ControlClient]:
    blue, green = backend("blue"), backend("green")
    e = edge(
        h2_edge_config(
            tls_files,
            apps={
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    },
                    "health": {"enabled": False},
                }
            },
            sites=[site("shop", ("a.test",))],
        )
    )
    return e, blue, green, ControlClient(e.socket_path)


def test_100_flips_while_h2load_runs_many_streams_per_connection_fail_no_stream(
    edge, backend, tls_files
) -> None:
    e, blue, green, ctl = two_colors(edge, backend, tls_files)
    url = f"https://a.test:{e.https_port}/"
    load = subprocess.Popen(
        [
            "h2load",
            "-D",
            "8",
            "-c",
            "4",
            "-m",
            "20",
            "--connect-to",
            f"127.0.0.1:{e.https_port}",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        for i in range(100):
            ctl.set("shop", "green" if i % 2 == 0 else "blue", 100)
            time.sleep(0.03)
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert "Application protocol: h2" in out, out
    done = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert done is not None and codes is not None, out
    succeeded, failed, errored = map(int, done.groups())
    assert (failed, errored) == (0, 0), out
    assert succeeded > 1000
    assert codes.groups()[1:] == ("0", "0", "0"), out
    # Both colors served streams of the same connections.
    assert len(blue.seen) > 100 and len(green.seen) > 100


def test_a_canary_at_weight_10_gets_each_visitor_the_color_it_gets_over_http11(
    edge, backend, tls_files
) -> None:
    e, _, _, ctl = two_colors(edge, backend, tls_files)
    ctl.set("shop", "green", 10)
    colors: Counter[str] = Counter()
    n = 600
    for i in range(n):
        # Fresh visitors from distinct loopback addresses (the canary key is the address).
        src = f"127.{1 + i // 65536}.{(i // 256) % 256}.{i % 256 or 1}"
        with H2Client(e.https_port, tls_files["ca"], source=src) as c:
            r = c.get("/")
        h1 = raw_request(
            e.http_port,
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
            source=src,
        )
        assert h1.endswith(r.body), (src, r.body, h1[-20:])
        colors[r.body.decode().strip()] += 1
    share = colors["green"] / n * 100
    assert 6.0 <= share <= 14.0, colors
