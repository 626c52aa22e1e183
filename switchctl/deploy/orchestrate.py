"""A whole deploy: check → lock → observe → plan → execute. Also `doctor` (observe + plan)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

import docker
import docker.errors

from switchctl.client import ControlClient, ControlError
from switchctl.deploy.config import DeployConfig, EnvFile, read_env_file
from switchctl.deploy.containers import ReleaseSpec
from switchctl.deploy.errors import DeployError, Interrupted
from switchctl.deploy.execute import Executor
from switchctl.deploy.history import History, Release, new_release_id
from switchctl.deploy.hosts import AppHost, connect_hosts
from switchctl.deploy.lock import DeployLock, read_holder
from switchctl.deploy.observe import observe
from switchctl.deploy.plan import Intent, Observed, Plan, plan
from switchctl.deploy.progress import Progress
from switchctl.deploy.proxyctl import Runner, runner_for


@dataclass
class Session:
    cfg: DeployConfig
    env: EnvFile
    docker: docker.DockerClient | None
    """This machine's dockerd (base services, an edgeproxy container); None when the config
    lists app `hosts` and needs neither."""
    control: ControlClient
    hosts: list[AppHost]
    """The app hosts: `hosts` of the config, or this machine's dockerd alone."""


def needs_local_docker(cfg: DeployConfig) -> bool:
    return not cfg.hosts or bool(cfg.base_services) or cfg.edgeproxy.container is not None


def connect(cfg: DeployConfig) -> Session:
    env = read_env_file(cfg.env_file, cfg.required_env)
    client: docker.DockerClient | None = None
    if needs_local_docker(cfg):
        try:
            client = docker.from_env()
            client.ping()
        except docker.errors.DockerException as e:
            raise DeployError(
                "connect to docker", str(e), "is dockerd running? (`systemctl status docker`)"
            ) from e
    hosts = connect_hosts(cfg, client)
    control = ControlClient(cfg.edgeproxy.socket, hint=cfg.edgeproxy.hint())
    return Session(cfg, env, client, control, hosts)


def proxy_runner(s: Session) -> Runner:
    # Without a local client the config has no edgeproxy container (needs_local_docker),
    # so the runner never uses the client it is given.
    return runner_for(s.cfg.edgeproxy, s.docker or s.hosts[0].client)


def intent(cfg: DeployConfig) -> Intent:
    return Intent(
        has_pre_deploy=cfg.hooks.pre_deploy is not None,
        has_post_deploy=cfg.hooks.post_deploy is not None,
        canary_steps=tuple(cfg.canary.steps),
    )


def survey(
    s: Session,
    stale_lock: str | None = None,
    deploy_running: bool = False,
    current_release: str | None = None,
) -> tuple[Observed, Plan]:
    runner = proxy_runner(s)
    try:
        obs = observe(
            s.cfg,
            s.docker,
            runner,
            s.control,
            stale_lock,
            deploy_running,
            current_release,
            hosts=s.hosts,
        )
    except ControlError as e:
        todo = (
            "run switchctl as root or list your uid in edgeproxy's control.allow_uids"
            if e.status == 403
            else "see edgeproxy's log"
        )
        raise DeployError("observe edgeproxy", str(e), todo) from e
    except docker.errors.DockerException as e:
        raise DeployError("observe docker", str(e), "is dockerd healthy? `docker ps`") from e
    return obs, plan(obs, intent(s.cfg))


def stale_lock_note(s: Session) -> str | None:
    holder, held = read_holder(s.cfg.lock_path)
    if holder is None:
        return None
    if held:
        return f"a deploy is running now: {holder.describe()}"
    return holder.describe()


def deploy_running(s: Session) -> bool:
    """Another process holds the deploy lock now (for doctor and --plan, which do not take it)."""
    return read_holder(s.cfg.lock_path)[1]


def deploy(
    s: Session,
    ref: str | None,
    progress: Progress,
    plan_only: bool = False,
    rollback_to: Release | None = None,
) -> tuple[Plan, Release | None]:
    cfg = s.cfg
    if rollback_to is not None:
        image = cfg.release_tag(rollback_to.id)
        ref = rollback_to.git_sha
        pull = False
    else:
        image = cfg.image_for(ref)
        pull = cfg.build is None
    release = ReleaseSpec(
        id=new_release_id(ref),
        image=image,
        ref=ref,
        pull=pull,
        rollback_of=rollback_to.id if rollback_to else None,
    )
    if plan_only:
        _, p = survey(s, stale_lock_note(s), deploy_running(s))
        return p, None
    with DeployLock(cfg.lock_path) as lock:
        stale = lock.previous.describe() if lock.previous else None
        obs, p = survey(s, stale, current_release=release.id)
        runner = proxy_runner(s)
        ex = Executor(cfg, s.env, s.docker, s.control, runner, release, progress, s.hosts)
        with rollback_on_signals():
            return p, ex.run(p, config_was_valid=not obs.proxy.config_problems)


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def rollback_on_signals() -> Iterator[None]:
    """The first SIGTERM/SIGINT/SIGHUP fails the current step (so the deploy rolls back);
    later ones are ignored until the rollback is done."""
    old = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def handler(signum: int, frame: FrameType | None) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)

    for sig in SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def releases(cfg: DeployConfig) -> list[Release]:
    return History(cfg.history_file).load()
