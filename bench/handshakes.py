"""`bench tls-handshakes`: full TLS handshakes per second and per proxy CPU-second.

wrk with `Connection: close` over https makes one new TLS connection per
request, and it never offers a saved session; the peers also have session
tickets and the session cache off. `resumption_check` asks each peer directly
whether it would resume a session anyway (it should not), so the figures are
full handshakes (ECDSA P-256, ECDHE, TLS 1.3 as negotiated by wrk's OpenSSL).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from bench import throughput as tp


def resumption_check(url: str) -> dict[str, Any]:
    """Connect, do a request, reconnect offering the session: was it reused?"""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = f"GET /13 HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    session = None
    out: dict[str, Any] = {}
    for attempt in ("first", "second"):
        with (
            socket.create_connection((host, port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host, session=session) as tls,
        ):
            tls.sendall(request)
            while tls.recv(65536):
                pass
            cipher = tls.cipher()
            out[attempt] = {
                "version": tls.version(),
                "cipher": cipher[0] if cipher else None,
                "reused": tls.session_reused,
            }
            session = tls.session
    return {
        "version": out["first"]["version"],
        "cipher": out["first"]["cipher"],
        "resumed": out["second"]["reused"],
    }


def run(opts: tp.Options) -> dict[str, Any]:
    checks: dict[str, Any] = {}

    def before(targets: list[Any]) -> None:
        for t in targets:
            url = t.url("https", "/")
            if url is not None:
                try:
                    checks[t.name] = resumption_check(url)
                except (OSError, ssl.SSLError) as e:
                    checks[t.name] = {"error": str(e)}

    doc = tp.run(opts, on_ready=before)
    doc["command"] = "tls-handshakes"
    doc["resumption"] = checks
    return doc
