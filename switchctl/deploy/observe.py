"""Observe the server: labelled app containers, base services, edgeproxy, its state file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.switching.store import StateFileError, StateStore
from switchctl.client import ControlClient, ControlError, ProxyUnreachable
from switchctl.deploy.config import DeployConfig
from switchctl.deploy.history import History
from switchctl.deploy.plan import BaseObs, ContainerObs, Observed, ProxyObs
from switchctl.deploy.proxyctl import ContainerRunner, Runner, check_config
from switchctl.deploy.proxyupgrade import outdated

if TYPE_CHECKING:  # hosts.py builds on containers.py, which builds on this module
    from switchctl.deploy.hosts import AppHost

LABEL_APP = "edgeproxy.app"
LABEL_COLOR = "edgeproxy.color"
LABEL_ROLE = "edgeproxy.role"
LABEL_RELEASE = "edgeproxy.release"


def adoption_file(cfg: DeployConfig) -> Path:
    return cfg.state_dir / cfg.app / "adopted.json"


def load_adopted(cfg: DeployConfig) -> dict[str, dict[str, str]]:
    """Containers `switchctl deploy --adopt` took over: {id: {name, color, role}}.

    docker cannot add labels to an existing container, so the ones that ran
    before switchctl (deploy.sh's `medusa-server-blue`) are recorded here and
    count as labelled until they are removed.
    """
    try:
        data = json.loads(adoption_file(cfg).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def container_labels(c: Any, adopted: dict[str, dict[str, str]]) -> dict[str, str]:
    """The container's labels, or for an adopted container the ones it would carry."""
    found = adopted.get(c.id)
    if found is None:
        return dict(c.labels)
    return {
        LABEL_COLOR: found["color"],
        LABEL_ROLE: found["role"],
        LABEL_RELEASE: "adopted",
        **c.labels,
    }


def app_containers(
    client: docker.DockerClient,
    app: str,
    adopted: dict[str, dict[str, str]] | None = None,
    *,
    hooks: bool = False,
    host: str = "",
) -> list[ContainerObs]:
    """The app's color containers (adopted ones included); with `hooks`, its one-off
    (hook) containers instead. `host`: the app host's name that `client` reaches."""
    adopted = adopted or {}
    found = {
        c.id: c for c in client.containers.list(all=True, filters={"label": f"{LABEL_APP}={app}"})
    }
    for cid in adopted:
        if cid not in found:
            try:
                found[cid] = client.containers.get(cid)
            except docker.errors.NotFound:
                continue  # removed since: the record is stale
    out = []
    for c in found.values():
        labels = container_labels(c, adopted)
        if (labels.get(LABEL_ROLE) == "hook") != hooks:
            continue
        st = c.attrs["State"]
        out.append(
            ContainerObs(
                name=c.name,
                id=c.id,
                role=labels.get(LABEL_ROLE),
                color=labels.get(LABEL_COLOR),
                release=labels.get(LABEL_RELEASE),
                image=c.attrs["Config"]["Image"],
                state=st["Status"],
                health=(st.get("Health") or {}).get("Status"),
                restart_count=int(c.attrs.get("RestartCount", 0)),
                started_at=st.get("StartedAt", ""),
                host=host,
            )
        )
    return sorted(out, key=lambda c: c.name)


def fleet_containers(
    clients: list[tuple[str, docker.DockerClient]], cfg: DeployConfig, *, hooks: bool = False
) -> list[ContainerObs]:
    """`app_containers` on every app host, given as (name, client); adopted containers
    (`deploy --adopt`) are this machine's: the first host's."""
    out: list[ContainerObs] = []
    for i, (name, client) in enumerate(clients):
        adopted = load_adopted(cfg) if i == 0 and not hooks else None
        out += app_containers(client, cfg.app, adopted, hooks=hooks, host=name)
    return out


def base_services(client: docker.DockerClient, names: list[str]) -> list[BaseObs]:
    out = []
    for name in names:
        try:
            c = client.containers.get(name)
        except docker.errors.NotFound:
            out.append(BaseObs(name, False))
            continue
        out.append(BaseObs(name, True, c.attrs["State"]["Status"], c.id))
    return out


def state_file_path(cfg: DeployConfig) -> Path | None:
    if cfg.edgeproxy.state_file is not None:
        return cfg.edgeproxy.state_file
    try:
        return cfg.on_server(load_config(cfg.edgeproxy.config).state_file)
    except ConfigError:
        return None


def state_file_active(cfg: DeployConfig) -> str | None:
    path = state_file_path(cfg)
    if path is None:
        return None
    try:
        states = StateStore(path).load()
    except StateFileError:
        return None
    st = (states or {}).get(cfg.app)
    return st.active if st else None


def proxy_view(
    cfg: DeployConfig, runner: Runner, control: ControlClient, settle: float = 3.0
) -> ProxyObs:
    """What edgeproxy is doing; a running process whose socket stays silent counts as looping."""
    problems = tuple(check_config(cfg.edgeproxy.config))
    source = cfg.edgeproxy.config_source
    source_ok = bool(problems) and source is not None and not check_config(source)
    managed = not cfg.edgeproxy.unmanaged
    proc = runner.state()
    if proc.status is not None:
        detail = proc.detail
        logs = runner.logs(5) if proc.status != "missing" else ""
        if logs:
            detail += "; last log lines:\n" + logs
        return ProxyObs(proc.status, detail, problems, source_ok, managed=managed)
    deadline = time.monotonic() + settle
    while True:
        try:
            view = control.app(cfg.app)
            break
        except ControlError as e:
            if e.status == 404:
                return ProxyObs("up", "", problems, source_ok, app_known=False, managed=managed)
            raise
        except ProxyUnreachable as e:
            if time.monotonic() > deadline:
                detail = f"{proc.detail} but its control socket does not answer ({e.reason})"
                logs = runner.logs(5)
                if logs:
                    detail += "; last log lines:\n" + logs
                return ProxyObs("crash-looping", detail, problems, source_ok, managed=managed)
            time.sleep(0.2)
    colors = view.get("colors", {})
    hands_over, why = False, None
    if isinstance(runner, ContainerRunner):
        process = control.process()
        hands_over = process is not None
        px = cfg.edgeproxy
        why = outdated(runner.client, runner.name, px.image, px.config, process)
    return ProxyObs(
        status="up",
        hands_over=hands_over,
        outdated=why,
        config_problems=problems,
        source_ok=source_ok,
        active=view["active"],
        candidate=view["candidate"],
        weight=view["weight"],
        draining=tuple(view.get("draining", {})),
        healthy={c: bool(v.get("healthy")) for c, v in colors.items()},
        paused=view["paused"],
        released=view.get("released", True),
        managed=managed,
    )


def observe(
    cfg: DeployConfig,
    client: docker.DockerClient | None,
    runner: Runner,
    control: ControlClient,
    stale_lock: str | None = None,
    deploy_running: bool = False,
    current_release: str | None = None,
    hosts: list[AppHost] | None = None,
) -> Observed:
    """`client`: this machine's dockerd (base services; None when the config needs none);
    `hosts`: the app hosts (default: `client` alone).
    `deploy_running`: another process holds the deploy lock (its one-off containers and
    its `running` history entry are its own); `current_release`: the deploy observing."""
    if hosts is not None and cfg.hosts:
        clients = [(h.name, h.client) for h in hosts]
    else:
        assert client is not None, "no app host to observe"
        clients = [("", client)]
    hooks = tuple(fleet_containers(clients, cfg, hooks=True))
    orphans: tuple[ContainerObs, ...] = ()
    stuck: tuple[str, ...] = ()
    if not deploy_running:
        orphans = tuple(h for h in hooks if h.release != current_release)
        try:
            stuck = tuple(r.id for r in History(cfg.history_file).stuck(current_release))
        except ValueError:
            stuck = ()  # an unreadable history is reported when the deploy records to it
    return Observed(
        app=cfg.app,
        colors=(cfg.colors[0], cfg.colors[1]),
        server_role=cfg.server_role,
        containers=tuple(fleet_containers(clients, cfg)),
        base=tuple(base_services(client, cfg.base_services) if client is not None else ()),
        proxy=proxy_view(cfg, runner, control),
        state_file_active=state_file_active(cfg),
        stale_lock=stale_lock,
        orphans=orphans,
        stuck_releases=stuck,
        hooks=hooks,
    )
