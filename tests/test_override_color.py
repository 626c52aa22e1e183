"""What a tester's override (and a smoke check) can trust: which color answered, and never
another one. Real sockets: edgeproxy in-process, aiohttp backends, plain HTTP clients."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections import Counter

from switchctl.client import ControlClient
from tests.proxy_fixtures import http_get, site
from tests.test_switching_e2e import two_colors

OVERRIDE = "X-Edgeproxy-Color"


def wait_until(predicate, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_response_to_an_honoured_override_names_the_color_that_served_it(backend, edge):
    e, _, _, _ = two_colors(backend, edge)
    r = http_get(e.http_port, "/", **{OVERRIDE: "green"})
    assert (r.status, r.body, r.header(OVERRIDE)) == (200, b"green\n", "green")
    plain = http_get(e.http_port, "/")
    assert (plain.body, plain.header(OVERRIDE)) == (b"blue\n", None)


def test_an_override_from_a_client_not_allowed_to_override_gets_no_color_header(backend, edge):
    e, _, _, _ = two_colors(backend, edge, override={"allow_from": ["192.0.2.0/24"]})
    r = http_get(e.http_port, "/", **{OVERRIDE: "green"})
    assert (r.body, r.header(OVERRIDE)) == (b"blue\n", None)


def test_an_apps_own_color_header_never_reaches_the_client(backend, edge):
    """An app (or a compromised one) cannot make a smoke check believe another color answered."""
    e, _, _, _ = two_colors(backend, edge)
    spoof = f"/respond-header?name={OVERRIDE}&value=green"
    assert http_get(e.http_port, spoof).header(OVERRIDE) is None
    r = http_get(e.http_port, spoof, **{OVERRIDE: "blue"})
    assert (r.body, r.header(OVERRIDE)) == (b"blue\n", "blue")


def test_an_override_naming_a_color_that_cannot_serve_is_a_503_never_another_color(backend, edge):
    blue = backend("blue")
    with socket.socket() as s:  # a port nothing listens on: green never passes a check
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [f"http://127.0.0.1:{dead}"]},
                        "purple": {"upstreams": [blue.url]},
                    },
                    "health": {"interval": 0.1, "unhealthy_threshold": 1},
                }
            },
            "sites": [site("shop")],
        }
    )
    ctl = ControlClient(e.socket_path)
    wait_until(
        lambda: ctl.app("shop")["colors"]["green"]["healthy"] is False, "green never unhealthy"
    )
    for color in ("green", "orange"):  # unhealthy; not a color of the app at all
        r = http_get(e.http_port, "/", **{OVERRIDE: color})
        assert r.status == 503, (color, r.status, r.body)
        assert f"the override asks for {color}".encode() in r.body
        assert r.header(OVERRIDE) is None
    ctl.drain("shop", "purple")
    r = http_get(e.http_port, "/", **{OVERRIDE: "purple"})
    assert r.status == 503 and b"draining" in r.body
    assert blue.seen == []  # the active color answered none of them


def test_override_requests_from_an_allowed_address_are_not_rate_limited(backend, edge):
    """Smoke checks come from loopback like the visitors' reverse tunnel would: a 429 there
    failed a deploy. The override's allow_from already says these callers are trusted."""
    blue, green = backend("blue"), backend("green")
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {
                        "blue": {"upstreams": [blue.url]},
                        "green": {"upstreams": [green.url]},
                    }
                }
            },
            "sites": [site("shop", rate_limit={"rate": 1, "burst": 1})],
        }
    )
    visitors = Counter(http_get(e.http_port, "/").status for _ in range(10))
    assert visitors[429] >= 8, visitors
    testers = Counter(http_get(e.http_port, "/", **{OVERRIDE: "green"}).status for _ in range(10))
    assert testers == {200: 10}


def test_expose_color_names_the_serving_color_on_every_response(backend, edge):
    e, _, _, ctl = two_colors(backend, edge, expose_color=True)
    ctl.set("shop", "green", 50)
    seen = Counter()
    for i in range(40):
        r = http_get(e.http_port, "/", **{"X-Forwarded-For": f"198.51.100.{i}"})
        assert r.header(OVERRIDE) == r.body.decode().strip()
        seen[r.header(OVERRIDE)] += 1
    assert set(seen) <= {"blue", "green"}


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"late blue\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_color_panic_routed_while_it_is_down_is_fit_as_soon_as_it_answers(edge):
    """A fresh server: visitors knock before blue has started. Their failed requests must not
    eject blue (an ejection changes no routing in panic and would outlast its start), or the
    deploy's health wait sees blue unfit long after it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = edge(
        {
            "apps": {
                "shop": {
                    "colors": {"blue": {"upstreams": [f"http://127.0.0.1:{port}"]}},
                    "health": {"interval": 0.2, "healthy_threshold": 1},
                }
            },
            "sites": [site("shop")],
        }
    )
    statuses = Counter(http_get(e.http_port, "/").status for _ in range(30))
    assert statuses == {502: 30}  # panic-routed to a blue that is not up yet
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ctl = ControlClient(e.socket_path)
        # Two check intervals and slack; an ejection would last its base 10 s.
        wait_until(lambda: ctl.app("shop")["colors"]["blue"]["healthy"], "blue not fit", 3.0)
        assert http_get(e.http_port, "/").body == b"late blue\n"
    finally:
        server.shutdown()
        server.server_close()
