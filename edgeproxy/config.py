"""The configuration model: one YAML file, validated once.

Every key is declared here (unknown keys are errors). Cross-field checks raise
one error naming the field and the fix. Expensive objects (SSLContexts) are
built later, in `edgeproxy.tls`, from the validated model.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeproxy.errors import ConfigError

COLOR_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HOST_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any) -> int:
    """`50M`, `16k`, `1048576` → bytes (nginx-style suffixes, powers of 1024)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 50M, 16k or 1048576")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ValueError(f"expected a size such as 50M, 16k or 1048576, got {value!r}")


Size = Annotated[int, Field(ge=0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sizes(*names: str) -> Any:
    return field_validator(*names, mode="before")(lambda cls, v: parse_size(v))


def parse_address(value: str) -> tuple[str, int]:
    """`127.0.0.1:8080`, `[::1]:8443`, `:80` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class Upstream(Model):
    """A parsed `http://host:port` upstream address."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(
                f"upstream {url!r} must start with http:// (TLS to upstreams is not supported)"
            )
        if not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"upstream {url!r} must be http://HOST:PORT with no path")
        return cls(host=parts.hostname, port=parts.port or 80)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _check_upstream(url: str) -> str:
    Upstream.parse(url)
    return url


class Listen(Model):
    http: str | None = "127.0.0.1:8080"
    https: str | None = None

    @field_validator("http", "https")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)
        return v


class Control(Model):
    socket: Path = Path("/run/edgeproxy/control.sock")
    mode: int = 0o660
    group: str | None = None
    allow_uids: list[int] = []
    allow_gids: list[int] = []
    metrics_listen: str | None = None
    """Optional TCP listener for GET /metrics (loopback unless you say otherwise)."""

    @field_validator("metrics_listen")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)
        return v


class Certificate(Model):
    cert: Path
    key: Path


class TLS(Model):
    certificates: list[Certificate] = []
    session_tickets: bool = True
    reload_poll_seconds: float = Field(default=5.0, ge=0)
    """How often certificate files are checked for changes (0 disables polling)."""
    expiry_warning_days: int = Field(default=21, ge=0)


class Acme(Model):
    webroot: Path | None = None
    """certbot --webroot -w DIR: served at /.well-known/acme-challenge/ on the HTTP listener."""


class Timeouts(Model):
    connect: float = Field(default=5.0, gt=0)
    read: float = Field(default=60.0, gt=0)
    """Longest wait for an upstream byte (response head or body) → 504."""
    send: float = Field(default=60.0, gt=0)
    """Longest a client may take between request bytes → 408."""
    client_idle: float = Field(default=75.0, gt=0)
    """Idle keep-alive connections from clients are closed after this."""
    upstream_idle: float = Field(default=4.0, gt=0)
    """Pooled upstream connections are closed after this (below Node's 5 s)."""


class Limits(Model):
    max_request_line: Size = 8192
    max_header_bytes: Size = 32768
    max_headers: int = Field(default=100, ge=1)
    max_body: Size = 50 * 1024**2
    _sz = _sizes("max_request_line", "max_header_bytes", "max_body")


class RateLimit(Model):
    """A token bucket per client address: `rate` per second, `burst` extra (nginx nodelay)."""

    rate: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)
    max_clients: int = Field(default=100_000, ge=1)


class Cors(Model):
    allow_origins: list[str] = ["*"]
    allow_methods: list[str] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    allow_headers: list[str] = ["Authorization", "Content-Type", "X-Meili-API-Key"]
    expose_headers: list[str] = []
    allow_credentials: bool = False
    max_age: int = Field(default=86400, ge=0)
    hide_upstream: bool = True


class Gzip(Model):
    min_length: Size = 10240
    types: list[str] = [
        "text/plain",
        "text/css",
        "text/xml",
        "text/javascript",
        "application/json",
        "application/javascript",
        "application/xml",
        "application/rss+xml",
        "image/svg+xml",
    ]
    level: int = Field(default=5, ge=1, le=9)
    _sz = _sizes("min_length")


class StaticCache(Model):
    pattern: str = r"\.(js|css|png|jpe?g|gif|ico|svg|webp|woff2?|ttf|eot)$"
    max_age: int = Field(default=31536000, ge=0)
    immutable: bool = True

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from e
        return v


class Policies(Model):
    """What a site applies to every route and a route may override."""

    response_headers: dict[str, str] = {}
    """Set on every response, errors included (nginx `add_header ... always`)."""
    hide_headers: list[str] = []
    """Removed from upstream responses (nginx `proxy_hide_header`)."""
    hsts: str | None = None
    rate_limit: RateLimit | None = None
    cors: Cors | None = None
    gzip: Gzip | None = None
    static_cache: StaticCache | None = None
    max_body: Size | None = None
    timeouts: Timeouts | None = None
    websocket: bool = True
    _sz = _sizes("max_body")


class Route(Policies):
    path: str = "/"
    app: str | None = None
    upstream: str | None = None
    strip_prefix: bool = False
    no_rate_limit: bool = False
    allow_trace: bool = False
    """TRACE is answered 405 unless the route sets this (it echoes the request,
    cookies and credentials included, back to whoever can make the browser send it)."""

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"route path {v!r} must start with /")
        return v

    @field_validator("upstream")
    @classmethod
    def _up(cls, v: str | None) -> str | None:
        return None if v is None else _check_upstream(v)

    @model_validator(mode="after")
    def _target(self) -> Route:
        if (self.app is None) == (self.upstream is None):
            raise ValueError("a route needs exactly one of `app` or `upstream`")
        return self


class Site(Policies):
    hosts: list[str] = Field(min_length=1)
    https_redirect: bool = True
    routes: list[Route] = Field(min_length=1)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            h = h.lower().rstrip(".")
            if not HOST_RE.match(h):
                raise ValueError(f"{h!r} is not a host name or *.domain wildcard")
            out.append(h)
        return out


class Color(Model):
    upstreams: list[str] = Field(min_length=1)

    @field_validator("upstreams")
    @classmethod
    def _ups(cls, v: list[str]) -> list[str]:
        return [_check_upstream(u) for u in v]


class Health(Model):
    path: str = "/health"
    interval: float = Field(default=2.0, gt=0)
    timeout: float = Field(default=1.0, gt=0)
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)
    expected_status: str = "200-299"
    host: str | None = None
    max_backoff: float = Field(default=30.0, gt=0)
    enabled: bool = True

    @field_validator("expected_status")
    @classmethod
    def _status(cls, v: str) -> str:
        lo, _, hi = v.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
            raise ValueError(f"expected_status {v!r} must be a status or range such as 200-399")
        return v

    def status_range(self) -> tuple[int, int]:
        lo, _, hi = self.expected_status.partition("-")
        return int(lo), int(hi or lo)


class Ejection(Model):
    consecutive_failures: int = Field(default=5, ge=1)
    base_seconds: float = Field(default=10.0, gt=0)
    max_seconds: float = Field(default=300.0, gt=0)


class CanaryGuard(Model):
    enabled: bool = True
    window_seconds: float = Field(default=60.0, gt=0)
    min_requests: int = Field(default=100, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    error_rate_factor: float = Field(default=2.0, ge=1)
    p99_factor: float = Field(default=3.0, ge=1)
    p99_min_ms: float = Field(default=50.0, ge=0)


class Override(Model):
    """How testers force a color: a header and/or a cookie whose value names it."""

    header: str | None = "X-Edgeproxy-Color"
    cookie: str | None = "edgeproxy_color"
    allow_from: list[str] = ["127.0.0.0/8", "::1/128"]
    """Client networks whose override is honoured (empty: anyone)."""

    @field_validator("allow_from")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for n in v:
            ipaddress.ip_network(n, strict=False)
        return v


class App(Model):
    colors: dict[str, Color] = Field(min_length=1)
    default_color: str | None = None
    health: Health = Health()
    ejection: Ejection = Ejection()
    canary_guard: CanaryGuard = CanaryGuard()
    override: Override = Override()
    sticky_cookie: str | None = "edgeproxy_canary"
    drain_timeout: float = Field(default=30.0, gt=0)
    pause_max_wait: float = Field(default=30.0, gt=0)

    @field_validator("colors")
    @classmethod
    def _colors(cls, v: dict[str, Color]) -> dict[str, Color]:
        for name in v:
            if not COLOR_RE.match(name):
                raise ValueError(f"color name {name!r} must be lowercase letters, digits, - or _")
        return v

    @model_validator(mode="after")
    def _default(self) -> App:
        if self.default_color is not None and self.default_color not in self.colors:
            raise ValueError(
                f"default_color {self.default_color!r} is not one of the colors "
                f"({', '.join(self.colors)})"
            )
        return self

    @property
    def first_color(self) -> str:
        return self.default_color or next(iter(self.colors))


class AccessLog(Model):
    enabled: bool = True
    path: str = "-"
    """`-` for stdout, else a file path (appended)."""
    sample: float = Field(default=1.0, ge=0, le=1)


class MetricsConfig(Model):
    enabled: bool = True
    """Per-request counters and latency histograms (off: /metrics shows the switch,
    health and certificates only; health's passive ejection keeps working)."""


_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NOT_AN_ADDRESS_HEADER = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "cookie"}
)


class Forwarding(Model):
    trusted_proxies: list[str] = []
    """Networks whose forwarded client address (`real_ip_header`) and X-Forwarded-Proto
    are believed; from any other peer they are replaced."""
    real_ip_header: str = "X-Forwarded-For"
    """Where a trusted peer puts the client address: the rightmost entry not in
    `trusted_proxies` is the client (nginx `real_ip_header` + `real_ip_recursive on`)."""
    request_id_header: str = "X-Request-ID"

    @field_validator("trusted_proxies")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for n in v:
            ipaddress.ip_network(n, strict=False)
        return v

    @field_validator("real_ip_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _TOKEN_RE.match(v) or v.lower() in _NOT_AN_ADDRESS_HEADER:
            raise ValueError(
                f"{v!r} is not a header that carries a client address "
                "(e.g. X-Forwarded-For, X-Real-IP, CF-Connecting-IP)"
            )
        return v


class Config(Model):
    listen: Listen = Listen()
    control: Control = Control()
    state_file: Path = Path("/var/lib/edgeproxy/state.json")
    tls: TLS = TLS()
    acme: Acme = Acme()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    forwarding: Forwarding = Forwarding()
    access_log: AccessLog = AccessLog()
    metrics: MetricsConfig = MetricsConfig()
    shutdown_grace: float = Field(default=30.0, ge=0)
    apps: dict[str, App] = {}
    sites: list[Site] = []

    @model_validator(mode="after")
    def _cross(self) -> Config:
        seen: dict[str, int] = {}
        for i, site in enumerate(self.sites):
            for host in site.hosts:
                if host in seen:
                    raise ValueError(
                        f"sites[{i}].hosts: {host!r} is already listed in sites[{seen[host]}]; "
                        "each host belongs to one site"
                    )
                seen[host] = i
            paths = [r.path for r in site.routes]
            dups = {p for p in paths if paths.count(p) > 1}
            if dups:
                raise ValueError(f"sites[{i}].routes: path {sorted(dups)[0]!r} is listed twice")
            for j, route in enumerate(site.routes):
                if route.app is not None and route.app not in self.apps:
                    known = ", ".join(self.apps) or "none are defined"
                    raise ValueError(
                        f"sites[{i}].routes[{j}].app: unknown app {route.app!r} "
                        f"(apps: {known}); add it under `apps:` or fix the name"
                    )
        if self.listen.https and not self.tls.certificates:
            raise ValueError(
                "tls.certificates: listen.https is set but no certificate is configured; "
                "add one (`certs selfsigned` makes a pair for staging)"
            )
        if self.listen.http is None and self.listen.https is None:
            raise ValueError("listen: set at least one of http or https")
        return self


def _format_errors(source: str, err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = (
                "unknown key; remove it or check its spelling against compose/edgeproxy.example.yml"
            )
        elif e["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{source}: {loc}: {msg}")
    return problems


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror}"]) from e
    return parse_config(text, str(path), base=path.parent)


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{source}: not valid YAML: {e}"]) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys"])
    if base is not None:
        _resolve_paths(data, base)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from e


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in the config are relative to the config file."""

    def fix(v: Any) -> Any:
        return str(base / v) if isinstance(v, str) and not v.startswith("/") else v

    tls = data.get("tls")
    if isinstance(tls, dict):
        for c in tls.get("certificates") or []:
            if isinstance(c, dict):
                for k in ("cert", "key"):
                    if k in c:
                        c[k] = fix(c[k])
    acme = data.get("acme")
    if isinstance(acme, dict) and "webroot" in acme:
        acme["webroot"] = fix(acme["webroot"])
    if "state_file" in data:
        data["state_file"] = fix(data["state_file"])
