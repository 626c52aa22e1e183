"""The peers under test: config generation (pure) and process management.

Every peer gets the same job: one upstream (the backend) over HTTP/1.1
keep-alive, one HTTP and one HTTPS listener with the same ECDSA P-256
certificate, no access log (unless the variant asks for one), no TLS session
resumption, X-Forwarded-For / -Proto added, keep-alive without a request cap.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import edgeproxy
from bench.procs import BenchError, Proc, running
from bench.tlscert import CertFiles
from edgeproxy import compiled

PEERS = ("direct", "nginx", "haproxy", "edgeproxy", "edgeproxy-log", "probe")
EXTRA_PEERS = ("edgeproxy-bare", "edgeproxy-medusa", "edgeproxy-medusa-gzip", "edgeproxy-pure")
"""Variants for feature costs (not in the default list): `edgeproxy-bare` has per-request
metrics off too; `edgeproxy-medusa` adds the MedusaJS policy set (security headers,
HSTS, hidden headers, a rate limit that never trips, static-asset cache headers);
`edgeproxy-medusa-gzip` adds gzip (min 1 KiB: the 16 KiB body is compressed, the
13 B one is not); `edgeproxy-pure` is edgeproxy with its hot path run from the Python
sources instead of the mypyc build (edgeproxy/compiled.py). wrk sends
`Accept-Encoding: gzip` to every peer."""
"""`edgeproxy-log` is edgeproxy with its JSON access log written to a file; `probe` is
the bare uvloop + httptools byte relay in `bench/probe.py` (the Python ceiling)."""

FD_LIMIT = 20000
"""Hard RLIMIT_NOFILE here; the memory bench opens 10,000 client connections."""

HAPROXY_MAXCONN = 9900
"""HAProxy reserves two descriptors per connection: 2 x 9,900 + spares fits in FD_LIMIT."""


@dataclass(frozen=True)
class Listen:
    http: int
    https: int


@dataclass
class Target:
    """Something a load generator can hit: base URLs and the process to sample."""

    name: str
    http: str | None
    https: str | None
    proc: Proc | None = None
    notes: list[str] = field(default_factory=list)

    def url(self, scheme: str, path: str) -> str | None:
        base = self.http if scheme == "http" else self.https
        return None if base is None else base.rstrip("/") + path


def answers(url: str, timeout: float = 0.5) -> bool:
    """True when GET url returns 2xx (certificates not verified: they are self-signed)."""
    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    host = parts.hostname or "127.0.0.1"
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        resp.read()
        return 200 <= resp.status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# --- backends ---------------------------------------------------------------------------


def nginx_backend_conf(workdir: Path, listen: Listen, cert: CertFiles) -> str:
    """nginx as the shared backend: `/13` from `return`, `/16k` a static file (sendfile)."""
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "16k").write_bytes(b"x" * 16384)
    return f"""\
worker_processes 1;
daemon off;
user root;
pid {workdir}/nginx-backend.pid;
error_log {workdir}/nginx-backend.error.log warn;
worker_rlimit_nofile {FD_LIMIT};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    default_type text/plain;
    etag off;
    open_file_cache max=16 inactive=600s;
    open_file_cache_valid 600s;
    client_body_temp_path {workdir}/tmp-client-backend;
    server {{
        listen 127.0.0.1:{listen.http} backlog=4096;
        listen 127.0.0.1:{listen.https} ssl backlog=4096;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_session_tickets off;
        root {www};
        location = /13 {{ return 200 "Hello, World!"; }}
        location = /health {{ return 200 "ok"; }}
        location = /16k {{ }}
        location / {{ return 200 "Hello, World!"; }}
    }}
}}
"""


def nginx_argv(workdir: Path, conf: Path) -> list[str]:
    return ["nginx", "-p", str(workdir), "-e", str(workdir / "nginx-startup.log"), "-c", str(conf)]


@contextlib.contextmanager
def start_backend(
    kind: str, workdir: Path, listen: Listen, cert: CertFiles, cpus: str | None
) -> Iterator[Target]:
    """The shared backend (`nginx` or `python`), pinned to `cpus`."""
    if kind == "nginx":
        conf = workdir / "nginx-backend.conf"
        conf.write_text(nginx_backend_conf(workdir, listen, cert))
        argv = nginx_argv(workdir, conf)
    elif kind == "python":
        argv = [sys.executable, "-m", "bench.backend", "--http", f"127.0.0.1:{listen.http}"]
        argv += ["--https", f"127.0.0.1:{listen.https}", "--cert", str(cert.cert)]
        argv += ["--key", str(cert.key)]
    else:
        raise ValueError(f"unknown backend {kind!r} (nginx or python)")
    http_url = f"http://127.0.0.1:{listen.http}"
    with running(
        f"backend-{kind}",
        argv,
        log_dir=workdir,
        cpus=cpus,
        ready=lambda: answers(http_url + "/13"),
    ) as proc:
        yield Target(f"backend-{kind}", http_url, f"https://127.0.0.1:{listen.https}", proc)


# --- proxies ----------------------------------------------------------------------------


def nginx_proxy_conf(
    workdir: Path, listen: Listen, upstream: str, cert: CertFiles, *, access_log: bool = False
) -> str:
    """nginx as the reverse proxy: 1 worker, upstream keepalive 64, HTTP/1.1 upstream."""
    log = f"access_log {workdir}/nginx-access.log;" if access_log else "access_log off;"
    temp = "\n".join(
        f"    {kind}_temp_path {workdir}/tmp-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
worker_processes 1;
daemon off;
user root;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx.error.log warn;
worker_rlimit_nofile {FD_LIMIT};
events {{ worker_connections {FD_LIMIT - 500}; }}
http {{
    {log}
    keepalive_requests 10000000;
    keepalive_timeout 75s;
{temp}
    upstream backend {{
        server {upstream};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{listen.http} backlog=4096;
        listen 127.0.0.1:{listen.https} ssl backlog=4096;
        ssl_certificate {cert.cert};
        ssl_certificate_key {cert.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


def haproxy_conf(
    workdir: Path, listen: Listen, upstream: str, cert: CertFiles, *, maxconn: int = HAPROXY_MAXCONN
) -> str:
    """HAProxy: 1 thread, `http-reuse always`, no logging, no TLS tickets or session cache."""
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
    pidfile {workdir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s
    option http-keep-alive
    option forwardfor

frontend fe
    bind 127.0.0.1:{listen.http} backlog 4096
    bind 127.0.0.1:{listen.https} ssl crt {cert.combined} backlog 4096
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    default_backend be

backend be
    http-reuse always
    server s1 {upstream}
"""


def edgeproxy_conf(
    workdir: Path,
    listen: Listen | None,
    colors: dict[str, str],
    cert: CertFiles | None,
    *,
    access_log: bool = False,
    app: str = "bench",
    active: str | None = None,
    metrics: bool = True,
    policies: str | None = None,
) -> str:
    """edgeproxy: one site, one app; `colors` maps color name → upstream `host:port`."""
    import yaml

    tls: dict[str, object] = {"session_tickets": False, "reload_poll_seconds": 0}
    if cert is not None:
        tls["certificates"] = [{"cert": str(cert.cert), "key": str(cert.key)}]
    listen_cfg: dict[str, str] = {}
    if listen is not None:
        listen_cfg["http"] = f"127.0.0.1:{listen.http}"
        if cert is not None:
            listen_cfg["https"] = f"127.0.0.1:{listen.https}"
    doc: dict[str, object] = {
        "listen": listen_cfg,
        "control": {
            "socket": str(workdir / "control.sock"),
            "mode": "0600",
        },  # octal text: yaml.safe_dump writes ints in decimal
        "state_file": str(workdir / "state.json"),
        "tls": tls,
        "timeouts": {"client_idle": 75},
        "access_log": (
            {"enabled": True, "path": str(workdir / "edgeproxy-access.log")}
            if access_log
            else {"enabled": False}
        ),
        "apps": {
            app: {
                "colors": {c: {"upstreams": [f"http://{u}"]} for c, u in colors.items()},
                "default_color": active or next(iter(colors)),
                "health": {"path": "/health", "interval": 1.0, "healthy_threshold": 1},
            }
        },
        "metrics": {"enabled": metrics},
        "sites": [
            {
                "hosts": ["127.0.0.1", "localhost"],
                "https_redirect": False,
                "routes": [{"path": "/", "app": app}],
                **(medusa_policies(gzip=policies == "medusa-gzip") if policies else {}),
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def medusa_policies(*, gzip: bool) -> dict[str, object]:
    """The API site's policies from compose/medusa/edgeproxy.yml, rate limit made harmless."""
    policies: dict[str, object] = {
        "response_headers": {
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "strict-origin-when-cross-origin",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        },
        "hsts": "max-age=31536000; includeSubDomains",
        "hide_headers": ["X-Powered-By", "Server"],
        "rate_limit": {"rate": 1e9, "burst": 1_000_000},  # checked on every request, never trips
        "static_cache": {},
    }
    if gzip:
        policies["gzip"] = {"min_length": 1024}
    return policies


def edgeproxy_argv(conf: Path) -> list[str]:
    return [sys.executable, "-m", "edgeproxy", "serve", "--config", str(conf)]


def pure_python_env(pdir: Path) -> dict[str, str]:
    """An environment importing edgeproxy from a copy of its sources without the mypyc build."""
    src = pdir / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        Path(edgeproxy.__file__).parent,
        src / "edgeproxy",
        ignore=shutil.ignore_patterns("*.so", compiled.MANIFEST.name, "__pycache__"),
    )
    # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (the
    # checkout, with its build) ahead of PYTHONPATH.
    return {**os.environ, "PYTHONPATH": str(src), "PYTHONSAFEPATH": "1"}


@contextlib.contextmanager
def start_peer(
    kind: str,
    workdir: Path,
    listen: Listen,
    backend: Target,
    cert: CertFiles,
    cpus: str | None,
) -> Iterator[Target]:
    """Start one proxy in front of `backend` (or, for `direct`, just name the backend)."""
    if kind == "direct":
        yield Target("direct", backend.http, backend.https, None)
        return
    assert backend.http is not None
    upstream = backend.http.removeprefix("http://")
    pdir = workdir / kind
    pdir.mkdir(exist_ok=True)
    env = None
    if kind == "nginx":
        conf = pdir / "nginx.conf"
        conf.write_text(nginx_proxy_conf(pdir, listen, upstream, cert))
        argv = nginx_argv(pdir, conf)
    elif kind == "haproxy":
        conf = pdir / "haproxy.cfg"
        conf.write_text(haproxy_conf(pdir, listen, upstream, cert))
        argv = ["haproxy", "-f", str(conf), "-db"]
    elif kind in ("edgeproxy", "edgeproxy-log", *EXTRA_PEERS):
        conf = pdir / "edgeproxy.yml"
        text = edgeproxy_conf(
            pdir,
            listen,
            {"blue": upstream},
            cert,
            access_log=kind == "edgeproxy-log",
            metrics=kind != "edgeproxy-bare",
            policies=kind.removeprefix("edgeproxy-") if "medusa" in kind else None,
        )
        conf.write_text(text)
        argv = edgeproxy_argv(conf)
        if kind == "edgeproxy-pure":
            env = pure_python_env(pdir)
    elif kind == "probe":
        argv = [sys.executable, "-m", "bench.probe", "--upstream", upstream]
        argv += [
            "--listen",
            f"127.0.0.1:{listen.http}",
            "--tls-listen",
            f"127.0.0.1:{listen.https}",
        ]
        argv += ["--cert", str(cert.cert), "--key", str(cert.key)]
    else:
        raise ValueError(f"unknown peer {kind!r}; choose from {', '.join(PEERS + EXTRA_PEERS)}")
    http_url = f"http://127.0.0.1:{listen.http}"
    https_url = f"https://127.0.0.1:{listen.https}"
    with running(
        kind,
        argv,
        log_dir=pdir,
        cpus=cpus,
        ready=lambda: answers(http_url + "/13") and answers(https_url + "/13"),
        timeout=20,
        env=env,
    ) as proc:
        if kind == "edgeproxy-pure" and "hot path runs as Python" not in proc.log_tail(200):
            raise BenchError(f"edgeproxy-pure did not start uncompiled; log {proc.log_path}")
        yield Target(kind, http_url, https_url, proc)
