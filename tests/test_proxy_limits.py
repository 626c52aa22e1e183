"""File descriptors and connection caps: what keeps one client from starving everyone.

The soft RLIMIT_NOFILE is raised to the hard limit at start; connections over
`limits.max_connections` (in all) or `limits.max_connections_per_client` (per
address) get 503 and are closed at once, and are counted; a silent connection
is closed after `limits.client_header_timeout`; an upstream connect that fails
for lack of local descriptors is a 503 that never counts against the upstream;
idle keep-alive connections are cut as soon as shutdown begins.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time

from switchctl.client import ControlClient
from tests.proxy_fixtures import client_tls_context, http_get, raw_request, site
from tests.test_metrics_exposition import get, parse


def app(url: str, **extra: object) -> dict[str, object]:
    return {
        "apps": {
            "shop": {
                "colors": {"blue": {"upstreams": [url]}},
                "health": {"enabled": False},
                "ejection": {"consecutive_failures": 1},
            }
        },
        "sites": [site("shop")],
        **extra,
    }


def keep_alive_client(port: int, source: str) -> socket.socket:
    """A connection from `source` that got one answer and now sits idle (so it is counted)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return s


def test_the_soft_file_descriptor_limit_is_raised_to_the_hard_limit_at_start_and_logged(
    backend, edge_process
):
    b = backend("blue")
    proc = edge_process(app(b.url), nofile=(256, 4096))
    assert proc.nofile() == (4096, 4096)
    assert re.search(r"file descriptors: limit raised from 256 to 4096", proc.log()), proc.log()
    # The caps follow the raised limit: a quarter held back.
    assert "connection caps: 3072 in all (1024 of 4096 descriptors held back" in proc.log()


def test_connections_over_the_per_client_cap_get_503_and_are_closed_while_other_clients_connect(
    backend, edge
):
    b = backend("blue")
    e = edge(
        app(
            b.url,
            limits={"max_connections_per_client": 3, "max_connections_per_client_exempt": []},
        )
    )
    held = [keep_alive_client(e.http_port, "127.0.0.2") for _ in range(3)]
    try:
        refused = raw_request(e.http_port, b"", source="127.0.0.2", timeout=5)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:100]
        assert b"connection: close" in refused.lower()
        assert b"too many connections" in refused
        # Another address is not affected.
        other = raw_request(
            e.http_port, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", source="127.0.0.3"
        )
        assert other.startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
    m = parse(ControlClient(e.socket_path).metrics())
    assert get(m, "edgeproxy_connections_refused_total", limit="max_connections_per_client") == 1
    assert get(m, "edgeproxy_connections_refused_total", limit="max_connections") == 0
    # Once they closed, the address may connect again.
    deadline = time.monotonic() + 5
    while e.server.ctx.caps.per_client.get("127.0.0.2") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keep_alive_client(e.http_port, "127.0.0.2").close() is None


def test_connections_over_the_total_cap_get_503_and_are_counted(backend, edge):
    b = backend("blue")
    e = edge(app(b.url, limits={"max_connections": 4}))
    held = [keep_alive_client(e.http_port, f"127.0.0.{10 + i}") for i in range(4)]
    try:
        refused = raw_request(e.http_port, b"", source="127.0.0.20", timeout=5)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:100]
    finally:
        for s in held:
            s.close()
    m = parse(ControlClient(e.socket_path).metrics())
    assert get(m, "edgeproxy_connections_refused_total", limit="max_connections") == 1
    assert get(m, "edgeproxy_connections_max") == 4


def test_a_silent_connection_is_closed_after_the_client_header_timeout(backend, edge):
    b = backend("blue")
    e = edge(app(b.url, limits={"client_header_timeout": 0.5}))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as s:
        assert s.recv(100) == b""  # closed without a word
    assert time.monotonic() - started < 3
    # A client that talks in time is served, and may then idle longer than that.
    with socket.create_connection(("127.0.0.1", e.http_port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(1.0)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def wait_answer_or_fds(s: socket.socket, proc, fds: int, timeout: float = 3) -> bytes | None:
    """The first bytes the proxy answers on `s` (b"" if it closed), or None once it holds `fds`."""
    deadline = time.monotonic() + timeout
    s.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            return s.recv(65536)
        except TimeoutError:
            if proc.fds() >= fds:
                return None
        except ConnectionError:
            return b""
    raise AssertionError("the proxy neither answered nor took the connection")


def test_an_upstream_connect_failing_for_lack_of_descriptors_is_a_503_that_never_ejects_the_upstream(
    backend, edge_process
):
    b = backend("blue")
    proc = edge_process(app(b.url), nofile=(64, 64))
    slow = b"GET /slow HTTP/1.1\r\nHost: a.test\r\n\r\n"
    held: list[socket.socket] = []
    answer: bytes | None = None
    try:
        # Requests the upstream holds cost two descriptors each (client + upstream):
        # add them until one finds no descriptor left for its upstream connection.
        for _ in range(40):
            fds = proc.fds()
            s = socket.create_connection(("127.0.0.1", proc.http_port), timeout=5)
            held.append(s)
            s.sendall(slow)
            answer = wait_answer_or_fds(s, proc, fds + 2)
            if answer == b"":
                # Not even the client's own descriptor was free (an odd count was
                # left): free two, take one with an idle client, and go on.
                held.pop().close()
                held.pop(0).close()
                time.sleep(0.3)
                idle = socket.create_connection(("127.0.0.1", proc.http_port), timeout=5)
                idle.sendall(b"GET / HTTP/1.1\r\nHost: nowhere.test\r\n\r\n")
                assert idle.recv(65536).startswith(b"HTTP/1.1 404")
                held.append(idle)
                answer = None
                continue
            if answer is not None:
                break
        assert answer is not None, "the proxy never ran out of descriptors"
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert "EMFILE" in proc.log(), proc.log()[-2000:]
    finally:
        b.release_slow()
        for s in held:
            s.close()
    time.sleep(0.5)
    # The upstream was not blamed: with consecutive_failures 1, one 502 would have ejected it.
    assert http_get(proc.http_port).status == 200
    m = parse(ControlClient(proc.control_socket).metrics())
    up = {"app": "shop", "color": "blue", "upstream": b.url}
    assert get(m, "edgeproxy_upstream_ejections_total", **up) == 0
    assert get(m, "edgeproxy_upstream_connect_errors_total", **up) == 0
    assert get(m, "edgeproxy_upstream_connect_local_errors_total", **up) >= 1


def test_an_idle_tls_keep_alive_client_is_closed_at_once_when_shutdown_begins(
    backend, edge_process, tls_files
):
    b = backend("blue")
    conf = app(
        b.url,
        listen={"http": "127.0.0.1:0", "https": "127.0.0.1:0"},
        tls={"certificates": [{"cert": str(tls_files["cert"]), "key": str(tls_files["key"])}]},
        shutdown_grace=30,
    )
    proc = edge_process(conf)
    ctx: ssl.SSLContext = client_tls_context(tls_files["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", proc.https_port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": "a.test"})
        r = conn.getresponse()
        assert r.status == 200
        r.read()  # the connection stays open, idle
        started = time.monotonic()
        proc.terminate()
        proc.popen.wait(30)
        took = time.monotonic() - started
    finally:
        conn.close()
    assert took < 3, f"SIGTERM took {took:.1f} s with one idle TLS client (grace 30 s)"
    assert proc.popen.returncode == 0
