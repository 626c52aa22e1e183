"""A real ACME server on loopback: Debian's pebble + pebble-challtestsrv, and helpers.

Context managers rather than pytest fixtures, so any test module can build the
fixtures it needs (`with run_pebble(tmp, http_port=...) as pebble:`):

- `run_pebble(workdir, http_port)`: challtestsrv (DNS answering 127.0.0.1 for
  every name) and pebble, whose HTTP-01 validator connects to `http_port` on
  127.0.0.1. Pebble's own HTTPS listener uses a CA + leaf from certs.selfsigned;
  give certbot that CA (`pebble.ca_bundle`). Certificates live 90 days.
- `serve_directory(root)`: a plain threaded static HTTP server on port 0.
- `run_edgeproxy(config, socket)`: `python -m edgeproxy serve` as a subprocess.
- `require_acme_tools()`: skip (with the reason) when pebble or certbot are absent.

Pebble's issuing root changes on every start; `pebble.root_pem()` fetches it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from certs.selfsigned import make_ca_and_leaf

TOOLS = ("pebble", "pebble-challtestsrv", "certbot")
STARTUP_SECONDS = 30.0


def require_acme_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install pebble certbot); "
            "the ACME tests need a real ACME server and client"
        )


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free right now for TCP and UDP on 127.0.0.1 (pebble cannot report port 0)."""
    while True:
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        other = socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, other) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@dataclass
class Pebble:
    directory: str
    """The ACME directory URL, for certbot --server."""
    management: str
    ca_bundle: Path
    """The CA of pebble's HTTPS listeners, for REQUESTS_CA_BUNDLE / certs --ca-bundle."""
    http_port: int
    log: Path

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def root_pem(self) -> bytes:
        """The root pebble issues under right now (it changes on every start)."""
        return self._get(f"{self.management}/roots/0")

    def intermediate_pem(self) -> bytes:
        return self._get(f"{self.management}/intermediates/0")


def _wait_https(url: str, ca: Path, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_pebble(workdir: Path, http_port: int) -> Iterator[Pebble]:
    workdir.mkdir(parents=True, exist_ok=True)
    tls = make_ca_and_leaf(["localhost", "pebble"], workdir / "listener")
    dns_port, chall_mgmt = free_port(), free_port()
    acme_port, mgmt_port, tls_port = free_port(), free_port(), free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{mgmt_port}",
            "certificate": str(tls.fullchain),
            "privateKey": str(tls.privkey),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "certificateValidityPeriod": 7776000,
        }
    }
    config_path = workdir / "pebble-config.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "pebble.log"
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    procs: list[subprocess.Popen[bytes]] = []
    with open(log, "ab") as out:
        try:
            challtestsrv = [
                "pebble-challtestsrv",
                "-dns01", f"127.0.0.1:{dns_port}",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"127.0.0.1:{chall_mgmt}",
                "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(challtestsrv, stdout=out, stderr=subprocess.STDOUT, env=env)
            )
            procs.append(
                subprocess.Popen(
                    ["pebble", "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=workdir,
                )
            )
            pebble = Pebble(
                directory=f"https://127.0.0.1:{acme_port}/dir",
                management=f"https://127.0.0.1:{mgmt_port}",
                ca_bundle=tls.ca_cert,
                http_port=http_port,
                log=log,
            )
            _wait_https(pebble.directory, tls.ca_cert, procs, log)
            yield pebble
        finally:
            for proc in reversed(procs):
                _stop(proc)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[int]:
    """Serve `root` over plain HTTP on 127.0.0.1 (port 0); yield the port."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, name="webroot-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class EdgeproxyProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    https_port: int
    socket: Path
    log: Path


_LISTENING = re.compile(rb"listening on (https?)://[^ ]*?:(\d+)")


@contextlib.contextmanager
def run_edgeproxy(config_path: Path, control_socket: Path) -> Iterator[EdgeproxyProcess]:
    """`python -m edgeproxy serve --config FILE` as a subprocess; ports read from its log.

    The config should listen on port 0; the ports are the ones edgeproxy logs.
    """
    root = Path(__file__).resolve().parent.parent
    log = config_path.with_suffix(".log")
    with open(log, "ab") as out:
        argv = [sys.executable, "-m", "edgeproxy", "serve", "--config", str(config_path)]
        proc = subprocess.Popen(
            [*argv, "--log-format", "text"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
    try:
        ports: dict[bytes, int] = {}
        deadline = time.monotonic() + STARTUP_SECONDS
        while len(ports) < 2 or not control_socket.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"edgeproxy exited early:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"edgeproxy did not start:\n{log.read_text()[-3000:]}")
            ports = {m[1]: int(m[2]) for m in _LISTENING.finditer(log.read_bytes())}
            time.sleep(0.05)
        yield EdgeproxyProcess(
            proc=proc,
            http_port=ports[b"http"],
            https_port=ports[b"https"],
            socket=control_socket,
            log=log,
        )
    finally:
        _stop(proc)
