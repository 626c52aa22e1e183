"""The planner: a pure function from what was observed to the steps of a deploy.

No I/O here. `observe.py` builds an `Observed`, `plan()` turns it into a `Plan`
(findings for `switchctl doctor`, blockers that stop a deploy before it
touches anything, and the ordered steps), `execute.py` carries the steps out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProxyStatus = Literal["up", "down", "crash-looping", "missing"]

StepKind = Literal[
    "remove_orphans",
    "close_interrupted",
    "start_base",
    "install_proxy_config",
    "check_proxy_config",
    "start_proxy",
    "restart_proxy",
    "upgrade_proxy",
    "wait_proxy",
    "reconcile",
    "retire",
    "image",
    "pre_deploy",
    "start_target",
    "wait_healthy",
    "smoke",
    "canary",
    "go_live",
    "promote",
    "drain_old",
    "stop_old",
    "record",
    "post_deploy",
    "notify",
]

# Steps after which the old color no longer serves: failures later are not rolled back.
POINT_OF_NO_RETURN: frozenset[StepKind] = frozenset({"promote", "go_live"})


@dataclass(frozen=True)
class ContainerObs:
    name: str
    id: str
    role: str | None
    color: str | None
    release: str | None
    image: str
    state: str
    """docker's State.Status: created, running, restarting, exited, paused, dead."""
    health: str | None = None
    """docker's health status when the image has a HEALTHCHECK: starting, healthy, unhealthy."""
    restart_count: int = 0
    started_at: str = ""
    host: str = ""
    """The app host it runs on (the deploy config's `hosts[].name`; empty: this machine)."""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class BaseObs:
    name: str
    exists: bool
    state: str = "missing"
    id: str = ""


@dataclass(frozen=True)
class ProxyObs:
    status: ProxyStatus
    detail: str = ""
    """Why it is not up: exit code, restart count, the last log lines."""
    config_problems: tuple[str, ...] = ()
    """From `edgeproxy check-config` on the live config (empty: valid)."""
    source_ok: bool = False
    """A known-good config source is configured and passes the check."""
    app_known: bool = True
    active: str | None = None
    candidate: str | None = None
    weight: int = 0
    draining: tuple[str, ...] = ()
    healthy: dict[str, bool] = field(default_factory=dict)
    paused: bool = False
    released: bool = True
    """False while the app was never released (`first_release: hold`): nothing serves."""
    managed: bool = True
    """switchctl can start and restart it (a container or a unit); False: `edgeproxy.unmanaged`."""
    hands_over: bool = False
    """It runs in a container and can hand its sockets over (`switchctl proxy upgrade`)."""
    outdated: str | None = None
    """Why it should hand over to a new container: its image or its config file changed."""


@dataclass(frozen=True)
class Observed:
    app: str
    colors: tuple[str, str]
    server_role: str
    containers: tuple[ContainerObs, ...]
    base: tuple[BaseObs, ...]
    proxy: ProxyObs
    state_file_active: str | None = None
    """The active color recorded in edgeproxy's state file (what it restores at boot)."""
    stale_lock: str | None = None
    """A previous deploy's lock record whose process is gone (it was killed)."""
    orphans: tuple[ContainerObs, ...] = ()
    """One-off (hook) containers of a deploy that is not running: a killed deploy left them."""
    stuck_releases: tuple[str, ...] = ()
    """History entries still `running` although no deploy holds the lock."""
    hooks: tuple[ContainerObs, ...] = ()
    """Every one-off (hook) container of the app, a running deploy's included (for doctor)."""

    def of(self, color: str) -> list[ContainerObs]:
        return [c for c in self.containers if c.color == color]

    def server(self, color: str) -> ContainerObs | None:
        return next((c for c in self.of(color) if c.role == self.server_role), None)

    def serving(self, color: str) -> bool:
        """A server of the color runs (on some host), docker does not call it unhealthy, nor
        does edgeproxy."""
        up = [
            s
            for s in self.of(color)
            if s.role == self.server_role
            and s.running
            and s.health not in ("unhealthy", "starting")
        ]
        if not up:
            return False
        return self.proxy.status != "up" or self.proxy.healthy.get(color, True)


@dataclass(frozen=True)
class Intent:
    """What the operator asked for, as far as planning needs it."""

    has_pre_deploy: bool = False
    has_post_deploy: bool = False
    canary_steps: tuple[int, ...] = (10, 25, 50, 100)


@dataclass(frozen=True)
class Step:
    kind: StepKind
    color: str | None = None
    arg: str | int | None = None
    why: str = ""

    def describe(self) -> str:
        text = _DESCRIBE[self.kind].format(color=self.color, arg=self.arg)
        return f"{text} ({self.why})" if self.why else text


_DESCRIBE: dict[StepKind, str] = {
    "remove_orphans": "stop and remove one-off containers a killed deploy left ({arg})",
    "close_interrupted": "close the history entries of killed deploys as interrupted ({arg})",
    "start_base": "start base service {arg} (never recreated)",
    "install_proxy_config": "install the known-good edgeproxy config (the bad one is kept aside)",
    "check_proxy_config": "check edgeproxy's config",
    "start_proxy": "start edgeproxy",
    "restart_proxy": "restart edgeproxy",
    "upgrade_proxy": "hand edgeproxy over to a new container ({arg}; no connection refused)",
    "wait_proxy": "wait for edgeproxy's control socket",
    "reconcile": "make edgeproxy serve {color}, the color that is running",
    "retire": "take {color} out of traffic and remove its leftover containers",
    "image": "get the new image (pull, build or a retained release)",
    "pre_deploy": "run the pre-deploy hook in a one-off container of the new image",
    "start_target": "start {color} (every role) with the new image",
    "wait_healthy": "wait until {color} is healthy (backoff with jitter, deadline)",
    "smoke": "smoke-check {color} through edgeproxy with the tester override",
    "canary": "send {arg}% of traffic to {color} and check the gates",
    "go_live": "make {color} serve all traffic (no previous color to compare against)",
    "promote": "promote {color} to active",
    "drain_old": "drain {color} (in-flight requests finish)",
    "stop_old": "stop {color}'s containers",
    "record": "record the release in the history file",
    "post_deploy": "run the post-deploy hook",
    "notify": "send notifications",
}


@dataclass(frozen=True)
class Finding:
    problem: str
    action: str


@dataclass
class Plan:
    live: str | None
    """The color serving now (None: nothing serves)."""
    target: str
    steps: list[Step] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    blockers: list[Finding] = field(default_factory=list)

    def render(self) -> str:
        lines = []
        for f in self.blockers:
            lines.append(f"BLOCKED: {f.problem}\n  what to do: {f.action}")
        for f in self.findings:
            lines.append(f"found: {f.problem}\n  deploy will: {f.action}")
        live = self.live or "nothing"
        lines.append(f"serving now: {live}; the new release goes to {self.target}")
        for i, s in enumerate(self.steps, 1):
            lines.append(f"{i:2d}. {s.describe()}")
        return "\n".join(lines)


def choose_live(obs: Observed) -> str | None:
    """The color that serves now: a serving color, preferring edgeproxy's view of it.
    None while edgeproxy holds the app for its first release (running containers of
    a first deploy that did not finish serve nobody)."""
    if obs.proxy.status == "up" and not obs.proxy.released:
        return None
    serving = [c for c in obs.colors if obs.serving(c)]
    if not serving:
        return None
    for preferred in (obs.proxy.active, obs.state_file_active):
        if preferred in serving:
            return preferred
    return serving[0]


def plan(obs: Observed, intent: Intent) -> Plan:
    live = choose_live(obs)
    if live is not None:
        target = obs.colors[1] if live == obs.colors[0] else obs.colors[0]
    elif obs.proxy.status == "up" and obs.proxy.active in obs.colors:
        target = obs.proxy.active
    else:
        target = obs.state_file_active if obs.state_file_active in obs.colors else obs.colors[0]
    p = Plan(live=live, target=target)
    _leftovers(obs, p)
    _base(obs, p)
    _proxy(obs, p)
    _switch(obs, p, live, target)
    _release(obs, p, intent, live, target)
    return p


def _leftovers(obs: Observed, p: Plan) -> None:
    """What a killed deploy left: its one-off containers (a migration still running would race
    the next one) and its history entry, still `running`."""
    if obs.orphans:
        names = ", ".join(o.name for o in obs.orphans)
        for o in obs.orphans:
            p.findings.append(
                Finding(
                    f"one-off container {o.name} ({o.state}) of deploy {o.release} is left "
                    "from a deploy that did not finish",
                    "stop and remove it before anything else (a migration must not run twice)",
                )
            )
        p.steps.append(Step("remove_orphans", arg=names))
    if obs.stuck_releases:
        ids = ", ".join(obs.stuck_releases)
        for rid in obs.stuck_releases:
            p.findings.append(
                Finding(
                    f"release {rid} is recorded as running, but no deploy holds the lock",
                    "close its history entry as interrupted",
                )
            )
        p.steps.append(Step("close_interrupted", arg=ids))


def _base(obs: Observed, p: Plan) -> None:
    for b in obs.base:
        if not b.exists:
            p.blockers.append(
                Finding(
                    f"base service {b.name} does not exist",
                    "create it (e.g. `docker compose up -d` in compose/); "
                    "switchctl starts base services but never creates or recreates them",
                )
            )
        elif b.state != "running":
            p.findings.append(Finding(f"base service {b.name} is {b.state}", "start it"))
            p.steps.append(Step("start_base", arg=b.name))


def _proxy(obs: Observed, p: Plan) -> None:
    px = obs.proxy
    if obs.stale_lock:
        p.findings.append(
            Finding(
                f"a previous deploy did not finish: {obs.stale_lock}",
                "recover from whatever it left (its lock died with it)",
            )
        )
    if px.status == "missing":
        p.blockers.append(
            Finding(
                f"edgeproxy is not installed here: {px.detail}",
                "create its container (compose/docker-compose.yml) or systemd unit first",
            )
        )
        return
    if not px.managed and px.status != "up":
        p.blockers.append(
            Finding(
                f"edgeproxy does not answer on its control socket ({px.detail}) and switchctl "
                "cannot start it (edgeproxy.unmanaged: true)",
                "start edgeproxy the way you run it (check its config with "
                "`edgeproxy check-config FILE`), then deploy again",
            )
        )
        return
    bad_config = bool(px.config_problems)
    if bad_config:
        first = px.config_problems[0]
        if px.source_ok:
            p.findings.append(
                Finding(f"edgeproxy's config is invalid: {first}", "install the known-good config")
            )
            p.steps.append(Step("install_proxy_config"))
        else:
            p.blockers.append(
                Finding(
                    f"edgeproxy's config is invalid: {'; '.join(px.config_problems)}",
                    "fix it (`edgeproxy check-config FILE` shows every problem) or set "
                    "edgeproxy.config_source in the deploy config to a known-good file",
                )
            )
    p.steps.append(Step("check_proxy_config"))
    if px.status == "down":
        p.findings.append(Finding(f"edgeproxy is down ({px.detail})", "start it"))
        p.steps.append(Step("start_proxy"))
    elif px.status == "crash-looping":
        cause = "its config is invalid" if bad_config else px.detail
        p.findings.append(Finding(f"edgeproxy is crash-looping: {cause}", "restart it"))
        p.steps.append(Step("restart_proxy"))
    elif bad_config and not px.managed:
        p.findings.append(
            Finding(
                "edgeproxy runs an older config; the file on disk is invalid",
                "leave it running (switchctl cannot restart it: edgeproxy.unmanaged); "
                "restart it yourself once the file is fixed",
            )
        )
    elif bad_config and px.hands_over:
        p.findings.append(
            Finding(
                "edgeproxy runs an older config; the file on disk is invalid",
                "hand it over to a new container with the installed known-good config",
            )
        )
        p.steps.append(Step("upgrade_proxy", arg="the known-good config"))
    elif bad_config:
        p.findings.append(
            Finding(
                "edgeproxy runs an older config; the file on disk is invalid",
                "restart it with the installed known-good config",
            )
        )
        p.steps.append(Step("restart_proxy"))
    elif px.status == "up" and px.outdated and px.hands_over:
        p.findings.append(
            Finding(f"edgeproxy {px.outdated}", "hand it over to a new container (never recreated)")
        )
        p.steps.append(Step("upgrade_proxy", arg=px.outdated))
    p.steps.append(Step("wait_proxy"))
    if px.status == "up" and not px.app_known:
        p.blockers.append(
            Finding(
                f"edgeproxy's config has no app {obs.app!r}",
                f"add `apps: {{{obs.app}: ...}}` with both colors to edgeproxy's config",
            )
        )
    if px.paused:
        p.blockers.append(
            Finding(
                f"{obs.app} is paused in edgeproxy (requests are held)",
                f"run `switchctl resume {obs.app}` once whatever paused it is done",
            )
        )


def _switch(obs: Observed, p: Plan, live: str | None, target: str) -> None:
    px = obs.proxy
    if live is not None:
        believed = px.active if px.status == "up" else obs.state_file_active
        if believed != live:
            source = "edgeproxy" if px.status == "up" else "edgeproxy's state file"
            p.findings.append(
                Finding(
                    f"{source} says {believed or 'nothing'} is active, but {live} is what runs",
                    f"point edgeproxy at {live} before deploying",
                )
            )
            p.steps.append(Step("reconcile", color=live))
        elif px.status != "up":
            p.steps.append(Step("reconcile", color=live, why="check after edgeproxy starts"))
    leftovers = obs.of(target)
    if px.status == "up" and px.candidate == target and px.weight > 0:
        p.findings.append(
            Finding(
                f"{target} gets {px.weight}% of traffic as a canary but no deploy is running",
                f"drain {target} and redeploy it",
            )
        )
    if leftovers:
        states = ", ".join(f"{c.name} {c.state}" for c in leftovers)
        if live is not None and any(c.running for c in leftovers):
            problem = f"both colors run and {target} is not the active one ({states})"
        else:
            problem = f"{target} has leftover containers from an earlier deploy ({states})"
        p.findings.append(Finding(problem, f"replace {target}'s containers with the new release"))
    if leftovers or (px.status == "up" and (px.candidate == target or target in px.draining)):
        p.steps.append(Step("retire", color=target))


def _release(obs: Observed, p: Plan, intent: Intent, live: str | None, target: str) -> None:
    p.steps.append(Step("image"))
    if intent.has_pre_deploy:
        p.steps.append(Step("pre_deploy"))
    p.steps += [Step("start_target", color=target), Step("wait_healthy", color=target)]
    p.steps.append(Step("smoke", color=target))
    if live is None:
        p.steps.append(Step("go_live", color=target))
        other = obs.colors[1] if target == obs.colors[0] else obs.colors[0]
        if obs.of(other):
            states = ", ".join(f"{c.name} {c.state}" for c in obs.of(other))
            p.findings.append(
                Finding(f"{other} has containers but does not serve ({states})", "stop them")
            )
            p.steps.append(Step("stop_old", color=other))
    else:
        p.steps += [Step("canary", color=target, arg=w) for w in intent.canary_steps if w < 100]
        p.steps += [
            Step("promote", color=target),
            Step("drain_old", color=live),
            Step("stop_old", color=live),
        ]
    p.steps.append(Step("record"))
    if intent.has_post_deploy:
        p.steps.append(Step("post_deploy"))
    p.steps.append(Step("notify"))
