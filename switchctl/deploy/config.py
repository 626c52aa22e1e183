"""The deploy config: one YAML file per app, validated once (`switchctl deploy --check`).

Every key is declared (unknown keys are errors). The env file it names is read
here too, checked for its mode and for the variables the app requires, and
never printed: `EnvFile.__repr__` hides the values.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from edgeproxy.config import COLOR_RE, human_message, key_path, yaml_problem
from switchctl.deploy.envfile import ENV_KEY_RE
from switchctl.deploy.envfile import EnvFile as EnvFile  # re-exported
from switchctl.deploy.envfile import read_env_file as read_env_file  # re-exported
from switchctl.deploy.errors import DeployConfigError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Command = list[str]


def _argv(v: Any) -> Any:
    """A command is an argv list, or a string run by `sh -c`."""
    if isinstance(v, str):
        return ["sh", "-c", v]
    return v


class Build(Model):
    context: Path
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = {}


class Role(Model):
    traffic: bool = False
    """True for the role edgeproxy routes to (the server); workers get no traffic."""
    ports: dict[str, int]
    """Port per color, e.g. {blue: 9000, green: 9002}; the app listens on it (env `port_env`)."""
    command: Command | None = None
    env: dict[str, str] = {}
    health_path: str | None = None
    """Checked on 127.0.0.1:PORT before the color takes traffic (None: running is enough)."""

    _cmd = field_validator("command", mode="before")(lambda cls, v: _argv(v))

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: dict[str, int]) -> dict[str, int]:
        for color, port in v.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} for {color} is not between 1 and 65535")
        return v


class HealthWait(Model):
    deadline: float = Field(default=120.0, gt=0)
    """Longest wait for the new color to become healthy, in seconds."""
    first_delay: float = Field(default=0.25, gt=0)
    max_delay: float = Field(default=5.0, gt=0)
    request_timeout: float = Field(default=2.0, gt=0)


class SmokeCheck(Model):
    path: str = "/"
    host: str | None = None
    """Sent as TLS SNI and as Host: the site a visitor would reach (e.g. api.shop.example.com)."""
    method: str = "GET"
    headers: dict[str, str] = {}
    """Extra request headers; `${VAR}` (or `${VAR:-default}`) is taken from the env file,
    e.g. `x-publishable-api-key: ${MEDUSA_PUBLISHABLE_KEY}`. Values are never printed."""
    body: str | None = None
    """Request body (`${VAR}` expanded like headers)."""
    status: int = 200
    """Expected status; a redirect is never followed, so a 3xx fails unless expected here."""
    contains: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"path {v!r} must start with /")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z]+", v):
            raise ValueError(f"method {v!r} is not an HTTP method")
        return v.upper()

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in ("host", "content-length", "transfer-encoding"):
                raise ValueError(f"{name}: set by switchctl (use the check's `host`)")
        return v


class Smoke(Model):
    url: str = "https://127.0.0.1:443"
    """edgeproxy's listener as reached from this server: HTTPS on loopback, like a visitor.
    Each check's `host` is the TLS SNI and the Host header."""
    header: str = "X-Edgeproxy-Color"
    """The tester override header (edgeproxy `apps.*.override.header`)."""
    ca_file: Path | None = None
    """Certificates to trust (PEM). None: the certificates edgeproxy's config serves
    (`tls.certificates[].cert`), trusted as they are. Verification is never off."""
    checks: list[SmokeCheck] = []
    timeout: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{v!r}: expected https://HOST:PORT (edgeproxy's listener)")
        if u.path not in ("", "/") or u.query:
            raise ValueError(f"{v!r}: give the listener only; paths belong to the checks")
        return v


class Gates(Model):
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    """The 5xx share the new color may have in a step (or the active color's share in the
    same step, when that is higher: a failing database is not the release's fault)."""
    significance: float = Field(default=0.01, gt=0, lt=0.5)
    """The 5xx gate fails when a one-sided exact binomial test puts the new color's 5xx share
    above that baseline at this significance (p-value below it): judged from the first
    request, so 2 errors in 2 requests already fail at the defaults."""
    p99_factor: float = Field(default=3.0, ge=1)
    """Fail when the new color's p99 exceeds this multiple of the active color's."""
    p99_min_ms: float = Field(default=50.0, ge=0)
    """...and exceeds this floor (tiny p99s are noise)."""
    min_requests: int = Field(default=20, ge=0)
    """A step ends only once the new color has served this many requests in it (visitors and
    the synthetic probe); the p99 gate judges from this many on."""


class Canary(Model):
    steps: list[int] = [10, 25, 50, 100]
    dwell: float = Field(default=30.0, ge=0)
    """Shortest time at each step; it extends until the step has `gates.min_requests`."""
    max_dwell: float = Field(default=300.0, gt=0)
    """After this long at a step without `gates.min_requests`, `on_thin_traffic` decides."""
    on_thin_traffic: Literal["hold", "fail", "proceed"] = "hold"
    """hold: stay at the step (saying so) until the evidence arrives or the deploy is
    interrupted (which rolls back); fail: roll back; proceed: go on unjudged (a note says so)."""
    probe_rate: float = Field(default=1.0, ge=0)
    """Smoke checks per second sent to the new color while a step dwells (0: none). They go
    through edgeproxy, so they count in its per-color figures the gates judge."""
    poll: float = Field(default=1.0, gt=0)
    gates: Gates = Gates()

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v or v[-1] != 100:
            raise ValueError("canary steps must end at 100")
        if any(not 0 < w <= 100 for w in v) or v != sorted(set(v)):
            raise ValueError("canary steps must be increasing weights between 1 and 100")
        return v

    @model_validator(mode="after")
    def _dwell(self) -> Canary:
        if self.max_dwell < self.dwell:
            raise ValueError(
                f"max_dwell ({self.max_dwell:g}s) must be at least dwell ({self.dwell:g}s)"
            )
        return self


class Hook(Model):
    command: Command
    timeout: float = Field(default=600.0, gt=0)
    where: Literal["container", "host"] = "container"
    """`container`: a one-off container of the new image with the app's env; `host`: here."""

    _cmd = field_validator("command", mode="before")(lambda cls, v: _argv(v))


class Hooks(Model):
    pre_deploy: Hook | None = None
    post_deploy: Hook | None = None


class Webhook(Model):
    url: str
    timeout: float = Field(default=10.0, gt=0)


class Smtp(Model):
    host: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None
    """Name of the variable (process env, else the env file) holding the SMTP password."""
    from_addr: str
    to: list[str] = Field(min_length=1)
    timeout: float = Field(default=10.0, gt=0)


class Notify(Model):
    webhook: Webhook | None = None
    smtp: Smtp | None = None
    events: list[Literal["success", "failure", "rollback"]] = ["success", "failure", "rollback"]


class Proxy(Model):
    """How edgeproxy runs on this server and how to reach it."""

    socket: Path = Path("/run/edgeproxy/control.sock")
    container: str | None = None
    image: str | None = None
    """With `container`: the image edgeproxy should run. When the container runs another (or
    edgeproxy runs an older version of its config file), the deploy hands over to a new
    container from it (`switchctl proxy upgrade`); the container is never recreated."""
    systemd_unit: str | None = None
    config: Path = Path("/etc/edgeproxy/edgeproxy.yml")
    """Config path; with a container, mount its directory at the same path inside."""
    config_source: Path | None = None
    """A known-good config (e.g. from the app repo) installed when the live one is invalid."""
    state_file: Path | None = None
    start_timeout: float = Field(default=30.0, gt=0)
    unmanaged: bool = False
    """edgeproxy is started some other way (by hand, supervisord, runit, no systemd): switchctl
    only talks to its control socket, and says so when a repair needs a start or restart."""

    @model_validator(mode="after")
    def _one(self) -> Proxy:
        given = [self.container is not None, self.systemd_unit is not None, self.unmanaged]
        if sum(given) != 1:
            raise ValueError(
                "edgeproxy: set exactly one of `container`, `systemd_unit` or `unmanaged: true` "
                "(edgeproxy started another way; switchctl then only uses its control socket)"
            )
        if self.image is not None and self.container is None:
            raise ValueError(
                "edgeproxy.image: only with edgeproxy.container (the image a container runs)"
            )
        return self

    def hint(self) -> str:
        """Where to look when edgeproxy's control socket does not answer."""
        if self.container is not None:
            c = self.container
            return f"is its container running? `docker ps -a --filter name={c}`, `docker logs {c}`"
        if self.systemd_unit is not None:
            u = self.systemd_unit
            return f"is the unit running? `systemctl status {u}`, `journalctl -u {u}`"
        return (
            "is it running? switchctl does not start it here (edgeproxy.unmanaged): "
            "check it the way you started it"
        )


class Logging(Model):
    """docker's log driver for every container switchctl starts (rotated, like the base stack)."""

    driver: str = "json-file"
    options: dict[str, str] = {"max-size": "10m", "max-file": "5"}


class Setup(Model):
    """What `switchctl setup` creates and starts besides what the rest of this file names."""

    user: str = "deploy"
    """The user CI logs in as and switchctl runs as (created when missing)."""
    group: str = "deploy"
    """Owns the config folders; its numeric gid becomes edgeproxy's control.group."""
    compose_file: Path | None = None
    """The base stack (compose/docker-compose.yml): started with `up -d --no-recreate`."""
    compose_env_file: Path | None = None
    """The base stack's secrets (POSTGRES_PASSWORD, ...), mode 0600."""
    compose_project: str = "shop"


DOCKER_URL_RE = re.compile(r"^(unix:///\S+|ssh://[^\s/@]+@[^\s/@:]+(:\d{1,5})?)$")
ADDRESS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$|^\[?[0-9A-Fa-f:.]+\]?$")


class Host(Model):
    """One app host: a dockerd that runs both colors, and the address edgeproxy reaches it at."""

    name: str
    """Named in progress lines, errors and `--check` (e.g. app1)."""
    docker: str | None = None
    """`unix:///PATH` (a dockerd on this machine) or `ssh://USER@HOST[:PORT]` (the docker
    SDK's ssh transport: this machine's `ssh` client, and `docker` on the host). None: this
    machine's dockerd as the docker CLI finds it (DOCKER_HOST, else /var/run/docker.sock)."""
    address: str = "127.0.0.1"
    """Where edgeproxy and the health checks reach the host's app ports (a private address)."""
    port_offset: int = Field(default=0, ge=0, le=60000)
    """Added to every role port on this host: two hosts that share one address (a rehearsal
    with two dockerd on one machine) need different ports."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"host name {v!r} must be letters, digits, '.', '_' or '-'")
        return v

    @field_validator("docker")
    @classmethod
    def _docker(cls, v: str | None) -> str | None:
        if v is not None and not DOCKER_URL_RE.match(v):
            raise ValueError(
                f"{v!r}: expected unix:///PATH (a dockerd here) or ssh://USER@HOST[:PORT]"
            )
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not ADDRESS_RE.match(v):
            raise ValueError(f"{v!r}: expected a host name or an IP address (no scheme, no port)")
        return v

    def describe(self) -> str:
        return f"host {self.name} ({self.docker or 'the local dockerd'})"


LOCAL_HOST = Host(name="local")
"""The app host of a config without `hosts`: this machine's dockerd, ports on 127.0.0.1."""


class DeployConfig(Model):
    _root: Path = PrivateAttr(default=Path("/"))
    app: str
    image: str | None = None
    """Image to pull; `{ref}` is replaced by --ref (e.g. ghcr.io/acme/shop:{ref})."""
    build: Build | None = None
    pull: Literal["always", "missing", "never"] = "missing"
    """When to pull `image`: `missing` uses a local image of that name if there is one."""
    env_file: Path
    required_env: list[str] = []
    colors: list[str] = ["blue", "green"]
    roles: dict[str, Role] = Field(min_length=1)
    container_name: str = "{app}-{role}-{color}"
    network: str = "host"
    """`host` (ports are the app's own) or a docker network (ports published on 127.0.0.1)."""
    container_port: int | None = None
    """With a network other than host: the port the app listens on inside its container."""
    port_env: str = "PORT"
    hosts: list[Host] = []
    """The app hosts; each runs every role of both colors. Empty: this machine's dockerd only.
    edgeproxy's color pools must list every host's upstream (`deploy --check` compares)."""
    health: HealthWait = HealthWait()
    smoke: Smoke = Smoke()
    canary: Canary = Canary()
    drain_timeout: float = Field(default=30.0, gt=0)
    stop_timeout: int = Field(default=10, ge=0)
    hooks: Hooks = Hooks()
    notify: Notify = Notify()
    base_services: list[str] = []
    """Containers that must be running (started if stopped, never recreated)."""
    edgeproxy: Proxy
    state_dir: Path = Path("/var/lib/switchctl")
    """History file and retained release tags live here (per app)."""
    lock_file: Path | None = None
    keep_releases: int = Field(default=5, ge=1)
    extra_labels: dict[str, str] = {}
    logging: Logging = Logging()
    setup: Setup = Setup()

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"app name {v!r} must be letters, digits, '.', '_' or '-'")
        return v

    @field_validator("colors")
    @classmethod
    def _colors(cls, v: list[str]) -> list[str]:
        if len(v) != 2 or len(set(v)) != 2:
            raise ValueError("exactly two colors are needed, e.g. [blue, green]")
        for c in v:
            if not COLOR_RE.match(c):
                raise ValueError(f"color {c!r} must be lowercase letters, digits, - or _")
        return v

    @field_validator("required_env")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if not ENV_KEY_RE.match(k)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _cross(self) -> DeployConfig:
        if (self.image is None) == (self.build is None):
            raise ValueError("set exactly one of `image` (to pull) or `build` (to build here)")
        servers = [n for n, r in self.roles.items() if r.traffic]
        if len(servers) != 1:
            raise ValueError(
                "roles: exactly one role must have `traffic: true` (the server), "
                f"found {len(servers)}"
            )
        used: dict[int, str] = {}
        for name, role in self.roles.items():
            if set(role.ports) != set(self.colors):
                raise ValueError(
                    f"roles.{name}.ports: give one port for each color ({', '.join(self.colors)})"
                )
            for color, port in role.ports.items():
                if port in used:
                    raise ValueError(
                        f"roles.{name}.ports.{color}: port {port} is already used by {used[port]}"
                    )
                used[port] = f"{name}/{color}"
        if self.network != "host" and self.container_port is None:
            raise ValueError("container_port: required when network is not `host`")
        self._check_hosts()
        return self

    def _check_hosts(self) -> None:
        names = [h.name for h in self.hosts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"hosts: the name {twice[0]!r} is given twice; name each host once")
        taken: dict[tuple[str, int], str] = {}
        for i, h in enumerate(self.hosts):
            for name, role in self.roles.items():
                for color, port in role.ports.items():
                    where = f"hosts[{i}] ({h.name}): roles.{name}.ports.{color}"
                    if not 1 <= port + h.port_offset <= 65535:
                        raise ValueError(
                            f"{where}: port {port} + port_offset {h.port_offset} is above 65535"
                        )
                    key = (h.address, port + h.port_offset)
                    if key in taken:
                        raise ValueError(
                            f"{where}: {h.address}:{key[1]} is also {taken[key]}; hosts that "
                            "share an address need different port_offset values"
                        )
                    taken[key] = f"{h.name} {name}/{color}"

    # -- derived names -------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The server's root folder: `/`, or a scratch folder (SWITCHCTL_ROOT) for tests."""
        return self._root

    def on_server(self, path: Path) -> Path:
        """A path as named in a config file (absolute, on the server) under `root`."""
        return under_root(path, self._root)

    @property
    def server_role(self) -> str:
        return next(n for n, r in self.roles.items() if r.traffic)

    def container_for(self, role: str, color: str) -> str:
        return self.container_name.format(app=self.app, role=role, color=color)

    def other(self, color: str) -> str:
        return self.colors[1] if color == self.colors[0] else self.colors[0]

    @property
    def app_hosts(self) -> list[Host]:
        """`hosts`, or this machine's dockerd alone."""
        return list(self.hosts) or [LOCAL_HOST]

    def port_on(self, host: Host, role: str, color: str) -> int:
        return self.roles[role].ports[color] + host.port_offset

    def upstreams(self, color: str) -> list[str]:
        """What edgeproxy's pool for `color` lists: the server role on every host."""
        role = self.server_role
        return [
            f"http://{url_host(h.address)}:{self.port_on(h, role, color)}" for h in self.app_hosts
        ]

    @property
    def history_file(self) -> Path:
        return self.state_dir / self.app / "releases.json"

    @property
    def lock_path(self) -> Path:
        return self.lock_file or self.state_dir / self.app / "deploy.lock"

    def image_for(self, ref: str | None) -> str:
        if self.image is not None:
            if "{ref}" in self.image and not ref:
                raise DeployConfigError([f"image {self.image!r} needs --ref to fill in {{ref}}"])
            return self.image.replace("{ref}", ref or "")
        return f"switchctl/{self.app}:{ref or 'latest'}"

    def release_tag(self, release_id: str) -> str:
        """Every deployed image is also tagged with this, so rollback finds it later."""
        return f"switchctl/{self.app}-release:{release_id}"


def url_host(address: str) -> str:
    """An address as the host part of a URL (an IPv6 address in brackets)."""
    return f"[{address.strip('[]')}]" if ":" in address else address


def _format(source: str, err: ValidationError) -> list[str]:
    return [
        f"{source}: {key_path(e['loc'])}: {human_message(e, 'compose/deploy.example.yml')}"
        for e in err.errors()
    ]


def under_root(path: Path, root: Path) -> Path:
    """`/etc/x` under root `/srv/scratch` is `/srv/scratch/etc/x`; relative paths stay as they are."""
    if root == Path("/") or not path.is_absolute():
        return path
    return root / path.relative_to("/")


def parse_deploy_config(
    text: str, source: str = "<deploy config>", base: Path | None = None, root: Path | None = None
) -> DeployConfig:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DeployConfigError([yaml_problem(source, e)]) from e
    if data is None:
        raise DeployConfigError(
            [f"{source}: the file is empty; see compose/deploy.example.yml for every key"]
        )
    if not isinstance(data, dict):
        raise DeployConfigError([f"{source}: the top level must be a mapping of keys"])
    root = root or Path("/")
    _resolve_paths(data, base, root)
    try:
        cfg = DeployConfig.model_validate(data)
    except ValidationError as e:
        raise DeployConfigError(_format(source, e)) from e
    cfg._root = root
    return cfg


def load_deploy_config(path: str | Path, root: Path | None = None) -> DeployConfig:
    """Read and validate the deploy config; with `root`, its absolute paths are under it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DeployConfigError([f"{path}: cannot read the deploy config: {e.strerror}"]) from e
    return parse_deploy_config(text, str(path), base=path.parent.resolve(), root=root)


def _resolve_paths(data: dict[str, Any], base: Path | None, root: Path) -> None:
    """Relative paths are relative to the config file's folder; absolute ones are under root."""

    def fix(d: Any, key: str, model: type[BaseModel] | None = None) -> None:
        if not isinstance(d, dict):
            return
        if key not in d and model is not None and root != Path("/"):
            default = model.model_fields[key].default
            if isinstance(default, Path):  # a default server path is under root too
                d[key] = str(default)
        if not isinstance(d.get(key), str):
            return
        if d[key].startswith("/"):
            d[key] = str(under_root(Path(d[key]), root))
        elif base is not None:
            d[key] = str(base / d[key])

    for key in ("env_file", "state_dir", "lock_file"):
        fix(data, key, DeployConfig)
    fix(data.get("build"), "context")
    for key in ("socket", "config", "config_source", "state_file"):
        fix(data.get("edgeproxy"), key, Proxy)
    for key in ("compose_file", "compose_env_file"):
        fix(data.get("setup"), key, Setup)
    fix(data.get("smoke"), "ca_file", Smoke)


def describe_command(argv: list[str]) -> str:
    return shlex.join(argv)


def process_env_or_file(name: str, env: EnvFile | None) -> str | None:
    return os.environ.get(name) or (env.values.get(name) if env else None)
