"""`switchctl setup`'s planner: a pure function from what was observed to the steps.

Like the deploy planner (`switchctl/deploy/plan.py`): `observe.py` looks at the
server and builds a `SetupObserved`; `plan()` pairs each finding with its step;
`execute.py` carries the steps out. Every step is there because something is
missing or different, so a second run on a set-up server plans no step at all.
Paths here are as they are on the server (`/etc/edgeproxy`); the executor puts
them under the root it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from switchctl.deploy.plan import ProxyStatus

SetupKind = Literal[
    "create_group",
    "create_user",
    "add_to_group",
    "make_dir",
    "fix_dir",
    "create_env_file",
    "install_deploy_config",
    "install_config",
    "update_config_source",
    "selfsigned",
    "compose_up",
    "start_proxy",
    "wait_proxy",
    "reload_proxy",
]


@dataclass(frozen=True)
class Check:
    """One prerequisite: what was found, and what to do when it is missing."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    blocking: bool = False


@dataclass(frozen=True)
class DirWant:
    path: Path
    mode: int
    owner: str
    """`root` or the deploy user."""
    group: str


@dataclass(frozen=True)
class DirObs:
    exists: bool
    mode: int = 0
    uid: int = -1
    gid: int = -1


@dataclass(frozen=True)
class CertObs:
    cert: Path
    key: Path
    hosts: tuple[str, ...]
    present: bool
    self_signed: bool = False
    """Made by setup (or `certs selfsigned`): a real one is still to be issued."""


@dataclass(frozen=True)
class ServiceObs:
    name: str
    state: str
    """docker's state of the service's container, or `missing`."""


@dataclass(frozen=True)
class ConfigObs:
    """edgeproxy's config: the live file, what it should be, the known-good copy."""

    live: str | None
    raw: str | None
    """The config as given (before the gid is filled in)."""
    desired: str | None
    """The config to serve, with the deploy group's gid filled in (None: nothing to go on)."""
    desired_from: str
    problems: tuple[str, ...] = ()
    """`edgeproxy check-config` on the desired config."""
    source: str | None = None
    """The content of the deploy config's edgeproxy.config_source, if it exists."""
    has_source: bool = False
    """The deploy config names a config_source."""
    live_path: Path = Path("/etc/edgeproxy/edgeproxy.yml")
    source_path: Path | None = None


@dataclass(frozen=True)
class SetupObserved:
    app: str
    user: str
    group: str
    uid: int | None
    gid: int | None
    user_groups: frozenset[str]
    extra_groups: tuple[str, ...]
    """Groups the user should also be in that exist here (docker)."""
    accounts_where: str
    checks: tuple[Check, ...]
    dirs: tuple[tuple[DirWant, DirObs], ...]
    env_file: Path
    env_file_exists: bool
    env_missing: tuple[str, ...]
    compose_env_file: Path | None
    compose_env_exists: bool
    compose_env_missing: tuple[str, ...]
    config: ConfigObs
    deploy_config_path: Path
    """Where `switchctl deploy` reads its config by default (/etc/switchctl/deploy.yml)."""
    deploy_config_given: str | None
    """The deploy config setup was given with -c, when that is another file."""
    deploy_config_live: str | None
    certs: tuple[CertObs, ...]
    compose_file: Path | None
    services: tuple[ServiceObs, ...]
    proxy_status: ProxyStatus | None
    """None: edgeproxy runs (whether its socket answers is checked when waiting)."""
    proxy_in_compose: bool
    webroot: Path | None
    certs_dest: Path | None
    certbot: bool


@dataclass(frozen=True)
class SetupStep:
    kind: SetupKind
    arg: str = ""
    why: str = ""

    def describe(self) -> str:
        text = _DESCRIBE[self.kind].format(arg=self.arg)
        return f"{text} ({self.why})" if self.why else text


_DESCRIBE: dict[SetupKind, str] = {
    "create_group": "create group {arg}",
    "create_user": "create user {arg}",
    "add_to_group": "add {arg}",
    "make_dir": "create {arg}",
    "fix_dir": "set owner and mode of {arg}",
    "create_env_file": "create {arg} (mode 0600, empty)",
    "install_deploy_config": "install the deploy config as {arg}",
    "install_config": "install edgeproxy's config as {arg}",
    "update_config_source": "keep the known-good copy {arg} current",
    "selfsigned": "make a self-signed certificate {arg}",
    "compose_up": "start the base stack without recreating what runs: {arg}",
    "start_proxy": "start edgeproxy {arg}",
    "wait_proxy": "wait for edgeproxy's control socket",
    "reload_proxy": "reload edgeproxy's config (no connection is dropped)",
}


@dataclass
class SetupPlan:
    checks: list[Check] = field(default_factory=list)
    steps: list[SetupStep] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    """Nothing is done while any is left (each says what to do)."""
    held: list[str] = field(default_factory=list)
    """Steps left out until the operator does something (the steps before still run)."""
    next: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"{'ok' if c.ok else 'MISSING'}: {c.name}: {c.detail}" for c in self.checks]
        lines += [f"  what to do: {c.fix}" for c in self.checks if not c.ok and c.fix]
        lines += [f"BLOCKED: {b}" for b in self.blockers]
        if self.steps:
            lines.append(f"{len(self.steps)} step(s):")
            lines += [f"{i:2d}. {s.describe()}" for i, s in enumerate(self.steps, 1)]
        else:
            lines.append("nothing to do: the server is set up")
        lines += [f"HELD: {h}" for h in self.held]
        if self.next:
            lines.append("next:")
            lines += [f"  - {n}" for n in self.next]
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "checks": [c.__dict__ for c in self.checks],
            "blockers": self.blockers,
            "steps": [{"kind": s.kind, "arg": s.arg, "describe": s.describe()} for s in self.steps],
            "held": self.held,
            "next": self.next,
        }


def _owner_text(want: DirWant) -> str:
    return f"{want.owner}:{want.group} {want.mode:04o}"


def plan_setup(obs: SetupObserved) -> SetupPlan:
    p = SetupPlan(checks=list(obs.checks))
    p.blockers += [f"{c.name}: {c.detail}; {c.fix}" for c in obs.checks if c.blocking and not c.ok]
    _accounts(obs, p)
    for want, seen in obs.dirs:
        if not seen.exists:
            p.steps.append(SetupStep("make_dir", str(want.path), _owner_text(want)))
        elif seen.mode != want.mode or _owner_differs(obs, want, seen):
            p.steps.append(SetupStep("fix_dir", str(want.path), _owner_text(want)))
    if not obs.env_file_exists:
        p.steps.append(SetupStep("create_env_file", str(obs.env_file), "the app's secrets"))
    if obs.compose_env_file is not None and not obs.compose_env_exists:
        p.steps.append(
            SetupStep("create_env_file", str(obs.compose_env_file), "the base stack's secrets")
        )
    if obs.deploy_config_given is not None and obs.deploy_config_given != obs.deploy_config_live:
        p.steps.append(
            SetupStep(
                "install_deploy_config", str(obs.deploy_config_path), "checked, given with -c"
            )
        )
    changed = _config(obs, p)
    for c in obs.certs:
        if not c.present:
            p.steps.append(SetupStep("selfsigned", f"{c.cert} for {', '.join(c.hosts)}"))
    started = _stack(obs, p)
    if started:
        p.steps.append(SetupStep("wait_proxy"))
    elif changed and obs.proxy_status is None:
        p.steps.append(SetupStep("reload_proxy", why="the config changed"))
    _next(obs, p)
    return p


def _owner_differs(obs: SetupObserved, want: DirWant, seen: DirObs) -> bool:
    uid = 0 if want.owner == "root" else obs.uid
    gid = 0 if want.group == "root" else obs.gid
    return seen.uid != uid or seen.gid != gid


def _accounts(obs: SetupObserved, p: SetupPlan) -> None:
    if obs.gid is None:
        p.steps.append(SetupStep("create_group", obs.group, f"in {obs.accounts_where}"))
    if obs.uid is None:
        p.steps.append(SetupStep("create_user", obs.user, f"primary group {obs.group}"))
    for group in obs.extra_groups:
        if group not in obs.user_groups:
            p.steps.append(SetupStep("add_to_group", f"{obs.user} to group {group}"))


def _config(obs: SetupObserved, p: SetupPlan) -> bool:
    """Steps for edgeproxy's config; True when the live one changes."""
    cfg = obs.config
    if cfg.desired is None:
        p.blockers.append(
            "edgeproxy has no config yet: give one with --edgeproxy-config FILE "
            "(start from compose/medusa/edgeproxy.yml, with your domain)"
        )
        return False
    if cfg.problems:
        p.blockers.append(
            f"{cfg.desired_from} is not a valid edgeproxy config: " + "; ".join(cfg.problems)
        )
        return False
    changed = cfg.live != cfg.desired
    if changed:
        p.steps.append(SetupStep("install_config", str(cfg.live_path), f"from {cfg.desired_from}"))
    if cfg.has_source and cfg.source != cfg.desired:
        p.steps.append(
            SetupStep("update_config_source", str(cfg.source_path), "deploy installs it to repair")
        )
    return changed


def _stack(obs: SetupObserved, p: SetupPlan) -> bool:
    """Steps that start the base stack and edgeproxy; True when edgeproxy gets started."""
    down = [s for s in obs.services if s.state != "running"]
    if obs.compose_file is not None and down:
        if obs.compose_env_missing:
            p.held.append(
                f"the base stack is not started: {', '.join(obs.compose_env_missing)} "
                f"missing from {obs.compose_env_file}; write them there (KEY=VALUE lines), "
                "then run `switchctl setup` again"
            )
            return False
        names = ", ".join(f"{s.name} ({s.state})" for s in down)
        if not any(c.name == "docker compose" and c.ok for c in obs.checks):
            p.held.append(
                f"the base stack is not started ({names}): no docker compose here (e.g. switchctl "
                "runs from the edgeproxy image); on the host run `docker compose -p PROJECT "
                "--env-file ENV -f COMPOSE_FILE up -d --no-recreate` (the deploy config's "
                "setup.compose_*), then `switchctl setup` again"
            )
            return False
        p.steps.append(SetupStep("compose_up", names))
        return obs.proxy_in_compose and obs.proxy_status is not None
    if obs.proxy_status in ("down", "crash-looping"):
        p.steps.append(SetupStep("start_proxy", "", f"it is {obs.proxy_status}"))
        return True
    if obs.proxy_status == "missing":
        p.blockers.append(
            "edgeproxy's container (or unit) does not exist and no compose file creates it: "
            "set setup.compose_file in the deploy config (compose/docker-compose.yml)"
        )
    return False


def _next(obs: SetupObserved, p: SetupPlan) -> None:
    if obs.env_missing:
        p.next.append(
            f"write the app's secrets into {obs.env_file} (mode 0600, one KEY=VALUE a line): "
            + ", ".join(obs.env_missing)
            + "; `switchctl deploy --check` checks them"
        )
    if not obs.certbot:
        p.next.append("install certbot for real certificates: apt-get install -y certbot")
    webroot = obs.webroot or Path("/var/www/certbot")
    dest = obs.certs_dest or Path("/etc/edgeproxy/certs")
    for c in obs.certs:
        if c.self_signed or not c.present:
            p.next.append(
                f"replace the self-signed certificate {c.cert} once DNS points here: "
                f"certs issue --domains {','.join(c.hosts)} --email YOU@EXAMPLE.COM "
                f"--webroot {webroot} --deploy-hook 'certs install --dest {dest}'"
            )
    p.next.append("release: switchctl deploy --ref <git sha> (see docs/deploying.md)")
