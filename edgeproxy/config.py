"""The configuration model: one YAML file, validated once.

Every key is declared here (unknown keys are errors). A file is checked as a
whole: type errors and cross-field problems are all reported in one run, each
with its key path (`sites[0].routes[1].app`) and what to write instead.
Expensive objects (SSLContexts) are built later, in `edgeproxy.tls`, from the
validated model.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
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


def _check_networks(value: list[str]) -> list[str]:
    for n in value:
        ipaddress.ip_network(n, strict=False)
    return value


Networks = Annotated[list[str], AfterValidator(_check_networks)]
"""CIDRs or single addresses (`10.0.0.0/8`, `::1`), each checked."""

_DURATION_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\s*$"
)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


def parse_seconds(value: Any) -> Any:
    """A duration is a number of seconds (`60`, `0.5`); `60s` or `5m` is refused saying what to write."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number of seconds such as 60 or 0.5, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        m = _DURATION_RE.match(value.lower())
        if m:
            unit = m.group(2)
            key = "ms" if unit == "ms" else "s" if unit.startswith("s") else unit[0]
            factor = _DURATION_UNITS["min" if key == "m" else key]
            seconds = float(m.group(1)) * factor
            raise ValueError(
                f"durations are plain numbers of seconds, without a unit: write {seconds:g} "
                f"instead of {value!r}"
            )
        raise ValueError(f"expected a number of seconds such as 60 or 0.5, got {value!r}")
    return value


Seconds = Annotated[float, BeforeValidator(parse_seconds)]
"""A duration in seconds (a plain number; units are refused with the number to write)."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _sizes(*names: str) -> Any:
    return field_validator(*names, mode="before")(lambda cls, v: parse_size(v))


def _address_text(value: Any) -> Any:
    """`443` (a bare port, read by YAML as a number) is refused saying what to write."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"expected HOST:PORT such as 0.0.0.0:{value}, got the number {value}")
    return value


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


Address = Annotated[str, BeforeValidator(_address_text)]


class Listen(Model):
    http: Address | None = "127.0.0.1:8080"
    https: Address | None = None
    http2: bool = Field(
        default=True,
        description="Offer HTTP/2 on the HTTPS listener (ALPN `h2, http/1.1`); clients that "
        "do not ask for it get HTTP/1.1 as before. `false` offers HTTP/1.1 only. A site "
        "can turn it off for its own names (`sites[].http2`).",
    )

    @field_validator("http", "https")
    @classmethod
    def _addr(cls, v: str | None) -> str | None:
        if v is not None:
            parse_address(v)
        return v


class OctalInt(int):
    """An integer written in octal in the YAML file (`0660`), told apart from a decimal `660`."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1: `0660` is octal) that marks octal integers."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    digits = str(node.value).replace("_", "").lstrip("+-")
    if len(digits) > 1 and digits[0] == "0" and digits.isdigit():
        return OctalInt(value)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_OCTAL_RE = re.compile(r"^(?:0o)?([0-7]{3,4})$")


class Control(Model):
    socket: Path = Path("/run/edgeproxy/control.sock")
    mode: int = 0o660
    """Octal, as chmod takes it: `0660` (YAML octal), `0o660` or `"660"`. A decimal 660 is refused."""
    group: int | None = None
    """The socket's group: a numeric gid, or a group name that resolves where edgeproxy runs."""
    allow_uids: list[int] = []
    allow_gids: list[int] = []
    metrics_listen: Address | None = None
    """Optional TCP listener for GET /metrics (loopback unless you say otherwise)."""

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any, info: ValidationInfo) -> int:
        from_yaml = bool(info.context and info.context.get("yaml"))
        if isinstance(v, str) and _OCTAL_RE.match(v.strip().lower()):
            mode = int(_OCTAL_RE.match(v.strip().lower()).group(1), 8)  # type: ignore[union-attr]
        elif isinstance(v, int) and not isinstance(v, bool):
            if from_yaml and not isinstance(v, OctalInt) and v > 7:
                if set(str(v)) <= set("01234567"):
                    fix = f'write 0{v} (or the string "{v}")'
                elif v <= 0o777:
                    fix = f"decimal {v} is 0{v:o}: write 0{v:o}"
                else:
                    fix = "write it like chmod takes it, e.g. 0660"
                raise ValueError(f"{v} is read as a decimal number; a mode is octal: {fix}")
            mode = int(v)
        else:
            raise ValueError(f"expected an octal mode such as 0660, got {v!r}")
        if not 0 <= mode <= 0o777:
            raise ValueError(f"mode {mode:o} (octal) is not a permission mode 0000-0777")
        return mode

    @field_validator("group", mode="before")
    @classmethod
    def _group(cls, v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return int(v)
        if isinstance(v, str) and v.isdigit():
            return int(v)
        if isinstance(v, str) and v:
            try:
                return grp.getgrnam(v).gr_gid
            except KeyError:
                raise ValueError(
                    f"there is no group named {v!r} where edgeproxy runs; write the numeric gid "
                    f"instead (`getent group {v}` on the host prints it; a container does not "
                    "know the host's group names)"
                ) from None
        raise ValueError(f"expected a numeric gid such as 1000 or a group name, got {v!r}")

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
    reload_poll_seconds: Seconds = Field(default=5.0, ge=0)
    """How often certificate files are checked for changes (0 disables polling)."""
    expiry_warning_days: int = Field(default=21, ge=0)


class Acme(Model):
    webroot: Path | None = None
    """certbot --webroot -w DIR: served at /.well-known/acme-challenge/ on the HTTP listener."""


class Timeouts(Model):
    connect: Seconds = Field(default=5.0, gt=0)
    read: Seconds = Field(default=60.0, gt=0)
    """Longest wait for an upstream byte (response head or body) → 504."""
    send: Seconds = Field(default=60.0, gt=0)
    """Longest a client may take between request bytes → 408."""
    client_idle: Seconds = Field(default=75.0, gt=0)
    """Idle keep-alive connections from clients are closed after this."""
    upstream_idle: Seconds = Field(default=4.0, gt=0)
    """Pooled upstream connections are closed after this (below Node's 5 s)."""


class Limits(Model):
    max_request_line: Size = 8192
    max_header_bytes: Size = 32768
    max_headers: int = Field(default=100, ge=1)
    max_body: Size = 50 * 1024**2
    max_connections: int = Field(
        default=0,
        ge=0,
        description="Open client connections at most, all listeners together (HAProxy "
        "`maxconn`); more are answered 503 and closed at once. 0: three quarters of the "
        "file-descriptor limit, the rest held back for upstreams, health checks and the "
        "control socket. A value above that is lowered to it, with a warning.",
    )
    max_connections_per_client: int = Field(
        default=1000,
        ge=0,
        description="Open connections at most from one client address (nginx `limit_conn` "
        "per `$binary_remote_addr`); more are answered 503 and closed at once. 0: no cap.",
    )
    max_connections_per_client_exempt: Networks = Field(
        default=["127.0.0.0/8", "::1/128"],
        description="Client networks the per-client cap does not apply to (a local tunnel "
        "or proxy carries many visitors on one address); forwarding.trusted_proxies are "
        "exempt too. The total cap still applies.",
    )
    client_header_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds a new connection may stay silent, and the longest a request "
        "head may take to arrive (or timeouts.send if lower): a silent connection is "
        "closed, a slow head gets 408 (nginx `client_header_timeout`, 60 s there).",
    )
    _sz = _sizes("max_request_line", "max_header_bytes", "max_body")


SECRET_MIN_LENGTH = 16
"""A shorter exemption secret could be guessed; it is refused."""


class ExemptHeader(Model):
    """A shared secret that lifts the rate limit: a request whose header `name` carries it
    is not limited (a storefront server whose addresses change). The secret is read from
    the environment (`value_env`) or a file (`value_file`, e.g. a docker secret), never
    from the config itself; the header is dropped before the request goes upstream."""

    name: str
    value_env: str | None = None
    value_file: Path | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _TOKEN_RE.match(v) or v.lower() in _NOT_AN_ADDRESS_HEADER:
            raise ValueError(f"{v!r} is not a header name for a secret (e.g. X-Storefront-Secret)")
        return v

    @field_validator("value_file")
    @classmethod
    def _file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"value_file {str(v)!r} must be an absolute path (/run/secrets/…)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ExemptHeader:
        if (self.value_env is None) == (self.value_file is None):
            raise ValueError(
                "exempt_header needs exactly one of value_env (an environment variable) or "
                "value_file (a file holding the secret); never the secret itself"
            )
        return self

    def secret(self) -> bytes:
        """The secret, read now; ValueError saying what to set when it is missing or short."""
        if self.value_env is not None:
            text = os.environ.get(self.value_env)
            where = f"environment variable {self.value_env}"
            if text is None:
                raise ValueError(f"{where} is not set; set it in edgeproxy's environment")
        else:
            assert self.value_file is not None
            where = f"file {self.value_file}"
            try:
                text = self.value_file.read_text()
            except OSError as e:
                raise ValueError(f"cannot read {where}: {e.strerror}") from e
        value = text.strip().encode()
        if len(value) < SECRET_MIN_LENGTH:
            raise ValueError(
                f"the secret in {where} is shorter than {SECRET_MIN_LENGTH} characters; "
                "use a long random one (openssl rand -hex 32)"
            )
        return value


class RateLimit(Model):
    """A token bucket per client address: `rate` per second, `burst` extra (nginx nodelay)."""

    rate: float = Field(gt=0)
    burst: int = Field(default=0, ge=0)
    max_clients: int = Field(default=100_000, ge=1)
    exempt: Networks = []
    """Client networks (CIDRs) that are never limited: a storefront server, a monitor."""
    exempt_header: ExemptHeader | None = None


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
    http2: bool = Field(
        default=True,
        description="Offer HTTP/2 to TLS clients that name one of these hosts in SNI "
        "(with `listen.http2`); `false` makes them speak HTTP/1.1.",
    )
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
    interval: Seconds = Field(default=2.0, gt=0)
    timeout: Seconds = Field(default=1.0, gt=0)
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)
    expected_status: str = "200-299"
    host: str | None = None
    max_backoff: Seconds | None = Field(default=None, gt=0)
    """No longer used (failing upstreams are checked every `interval`); accepted so that
    existing configs load, with a warning at start."""
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
    base_seconds: Seconds = Field(default=10.0, gt=0)
    max_seconds: Seconds = Field(default=300.0, gt=0)


class CanaryGuard(Model):
    enabled: bool = True
    window_seconds: Seconds = Field(default=60.0, gt=0)
    min_requests: int = Field(default=100, ge=1)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    error_rate_factor: float = Field(default=2.0, ge=1)
    p99_factor: float = Field(default=3.0, ge=1)
    p99_min_ms: float = Field(default=50.0, ge=0)


class Override(Model):
    """How testers force a color: a header and/or a cookie whose value names it."""

    header: str | None = "X-Edgeproxy-Color"
    cookie: str | None = "edgeproxy_color"
    allow_from: Networks = ["127.0.0.0/8", "::1/128"]
    """Client networks whose override is honoured (empty: anyone)."""


class App(Model):
    colors: dict[str, Color] = Field(min_length=1)
    default_color: str | None = None
    health: Health = Health()
    ejection: Ejection = Ejection()
    canary_guard: CanaryGuard = CanaryGuard()
    override: Override = Override()
    sticky_cookie: str | None = "edgeproxy_canary"
    drain_timeout: Seconds = Field(default=30.0, gt=0)
    pause_max_wait: Seconds = Field(default=30.0, gt=0)
    when_all_down: Literal["route", "refuse"] = "route"
    """No upstream of the color is fit (health checks, ejection): `route` to its upstreams
    anyway (panic routing, like Envoy's panic threshold), or `refuse` with 503."""
    expose_color: bool = False
    """Name the serving color in every response (`X-Edgeproxy-Color`), not only for an
    honoured tester override: for staging and `bench storefront`, not for production."""
    first_release: Literal["serve", "hold"] = "serve"
    """On a server where this app was never released (no state file): `serve` sends
    visitors to `default_color` at once (what nginx does with a fresh config); `hold`
    answers them 503 maintenance (with Retry-After) until the first deploy has
    smoke-tested a color through the tester override and released it (weight 100),
    so nobody meets an unverified release. A saved state is never affected."""
    canary_key: str = "client_ip"
    """What puts a visitor in a canary bucket: `client_ip` (its address), `header:NAME`
    (a hash of that request header's value, e.g. a shopper id a server-side storefront
    forwards; the address when the header is missing), or `request` (a fresh bucket per
    request and no sticky cookie, for cookieless server-to-server callers). A sticky
    cookie the request carries wins over all three."""

    @field_validator("canary_key")
    @classmethod
    def _canary_key(cls, v: str) -> str:
        kind, _, name = v.partition(":")
        if v in ("client_ip", "request") or (kind == "header" and _TOKEN_RE.match(name)):
            return v
        raise ValueError(
            f"canary_key {v!r} must be client_ip, request, or header:NAME "
            "(e.g. header:X-Shopper-Id)"
        )

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
    trusted_proxies: Networks = []
    """Networks whose forwarded client address (`real_ip_header`) and X-Forwarded-Proto
    are believed; from any other peer they are replaced."""
    real_ip_header: str = "X-Forwarded-For"
    """Where a trusted peer puts the client address: the rightmost entry not in
    `trusted_proxies` is the client (nginx `real_ip_header` + `real_ip_recursive on`)."""
    request_id_header: str = "X-Request-ID"

    @field_validator("real_ip_header")
    @classmethod
    def _header(cls, v: str) -> str:
        if not _TOKEN_RE.match(v) or v.lower() in _NOT_AN_ADDRESS_HEADER:
            raise ValueError(
                f"{v!r} is not a header that carries a client address "
                "(e.g. X-Forwarded-For, X-Real-IP, CF-Connecting-IP)"
            )
        return v


_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


def _check_state_backend(url: str) -> str:
    """`redis://HOST:PORT/DB`: the only shared store edgeproxy speaks."""
    parts = urlsplit(url)
    fix = "write it as redis://HOST:PORT/DB, e.g. redis://10.0.0.2:6379/0"
    if parts.scheme != "redis":
        raise ValueError(f"{url!r}: only redis:// is supported; {fix}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number; {fix}") from None
    if not parts.hostname or port is None:
        raise ValueError(f"{url!r}: needs a host and a port; {fix}")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{url!r}: the database {db!r} is not a number; {fix}")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: no query or fragment is read; {fix}")
    return url


class Node(Model):
    """This edge node, as the other nodes see it (used only with `state_backend`)."""

    id: str | None = None
    """Unique per node and stable across restarts (default: the host name)."""
    address: str | None = None
    """Where operators reach this node; shown by `switchctl status` (default: the host name)."""
    heartbeat_seconds: Seconds = Field(default=1.0, gt=0, le=60)
    """How often the node writes its heartbeat and counters; it counts as gone after 3 misses."""
    resync_seconds: Seconds = Field(default=1.0, gt=0, le=300)
    """How often the node re-reads every app's state (catches a missed message)."""
    store_timeout_seconds: Seconds = Field(default=0.5, gt=0, le=30)
    """How long one store operation may take before the store counts as unreachable."""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not _NODE_ID_RE.match(v):
            raise ValueError(
                f"{v!r} is not a node id (letters, digits, '.', '_', ':' or '-', up to 63)"
            )
        return v


class Config(Model):
    listen: Listen = Listen()
    control: Control = Control()
    state_file: Path = Path("/var/lib/edgeproxy/state.json")
    state_backend: Annotated[str, AfterValidator(_check_state_backend)] | None = None
    """`redis://HOST:PORT/DB`: share the switch state with other edge nodes (docs/scaling.md)."""
    node: Node = Node()
    tls: TLS = TLS()
    acme: Acme = Acme()
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    forwarding: Forwarding = Forwarding()
    access_log: AccessLog = AccessLog()
    metrics: MetricsConfig = MetricsConfig()
    shutdown_grace: Seconds = Field(default=30.0, ge=0)
    apps: dict[str, App] = {}
    sites: list[Site] = []

    @model_validator(mode="after")
    def _cross(self, info: ValidationInfo) -> Config:
        if info.context and info.context.get("cross_checked"):
            return self  # parse_config reports these beside the type errors
        problems = cross_field_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self


# --- checks across fields, on the raw data (so they run even when a type is wrong) -------------


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return [(i, v) for i, v in enumerate(value)] if isinstance(value, list) else []


def cross_field_problems(data: dict[str, Any]) -> list[str]:
    """Problems that involve more than one key, each `path: what is wrong; what to do`.

    Works on the raw mapping read from YAML, tolerating wrong types elsewhere
    (those are the model's to report), so one run shows every problem.
    """
    problems: list[str] = []
    apps = data.get("apps")
    app_names = [str(k) for k in apps] if isinstance(apps, dict) else []
    seen: dict[str, int] = {}
    for i, site in _dicts(data.get("sites")):
        if not isinstance(site, dict):
            continue
        hosts = site.get("hosts")
        for host in hosts if isinstance(hosts, list) else []:
            if not isinstance(host, str):
                continue
            name = host.lower().rstrip(".")
            if name in seen and seen[name] != i:
                problems.append(
                    f"sites[{i}].hosts: {name!r} is already listed in sites[{seen[name]}]; "
                    "each host belongs to one site"
                )
            seen.setdefault(name, i)
        routes = [(j, r) for j, r in _dicts(site.get("routes")) if isinstance(r, dict)]
        paths = [r.get("path", "/") for _, r in routes]
        for dup in sorted({p for p in paths if isinstance(p, str) and paths.count(p) > 1}):
            problems.append(f"sites[{i}].routes: path {dup!r} is listed twice")
        for j, route in routes:
            app = route.get("app")
            if isinstance(app, str) and app not in app_names:
                known = ", ".join(app_names) or "none are defined"
                problems.append(
                    f"sites[{i}].routes[{j}].app: unknown app {app!r} "
                    f"(apps: {known}); add it under `apps:` or fix the name"
                )
    listen = data.get("listen")
    listen = listen if isinstance(listen, dict) else {}
    http = listen.get("http", Listen.model_fields["http"].default)
    https = listen.get("https")
    tls = data.get("tls")
    certificates = tls.get("certificates") if isinstance(tls, dict) else None
    if https and not certificates:
        problems.append(
            "tls.certificates: listen.https is set but no certificate is configured; "
            "add one (`certs selfsigned` makes a pair for staging)"
        )
    if http is None and https is None:
        problems.append("listen: set at least one of http or https")
    return problems


# --- reading a file ------------------------------------------------------------------------------


def key_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's ("sites", 0, "routes", 1, "app") → `sites[0].routes[1].app`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping (key: value)"
    return type(value).__name__


_COMPARE = {
    "greater_than": ("greater than", "gt"),
    "greater_than_equal": ("at least", "ge"),
    "less_than": ("less than", "lt"),
    "less_than_equal": ("at most", "le"),
}


def human_message(e: Any, example: str = "compose/edgeproxy.example.yml") -> str:
    """One pydantic error as a sentence: what was expected, what the file says."""
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"unknown key; remove it or check its spelling against {example}"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_type":
        return f"expected text, got {_describe(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_describe(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {_describe(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_describe(value)}"
    if kind == "list_type":
        return f"expected a list such as [a, b], got {_describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping of keys (key: value), got {_describe(value)}"
    if kind in _COMPARE:
        words, key = _COMPARE[kind]
        return f"must be {words} {ctx.get(key)}, got {_describe(value)}"
    if kind == "too_short":
        return f"needs at least {ctx.get('min_length')} item(s)"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {_describe(value)}"
    return str(e["msg"]).removeprefix("Value error, ")


def _format_errors(source: str, err: ValidationError) -> list[str]:
    return [f"{source}: {key_path(e['loc'])}: {human_message(e)}" for e in err.errors()]


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read the config file: {e.strerror}"]) from e
    return parse_config(text, str(path), base=path.parent)


def yaml_problem(source: str, e: yaml.YAMLError) -> str:
    """A YAML syntax error as `FILE:LINE:COLUMN: not valid YAML: what`."""
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def read_yaml(text: str, source: str) -> Any:
    """The YAML document (octal integers marked as `OctalInt`); ConfigError on a syntax error."""
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        raise ConfigError([yaml_problem(source, e)]) from e


def parse_config(text: str, source: str = "<config>", base: Path | None = None) -> Config:
    data = read_yaml(text, source)
    if data is None:
        raise ConfigError(
            [
                f"{source}: the file is empty (or only comments); a config needs at least "
                "`apps:` and `sites:` (see compose/edgeproxy.example.yml)"
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys"])
    if base is not None:
        _resolve_paths(data, base)
    problems = [f"{source}: {p}" for p in cross_field_problems(data)]
    try:
        config = Config.model_validate(data, context={"yaml": True, "cross_checked": True})
    except ValidationError as e:
        problems = _format_errors(source, e) + problems
    if problems:
        raise ConfigError(problems)
    return config


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
