"""The app hosts: one docker SDK client per host's dockerd, and the app's containers on all.

A deploy config without `hosts` has one app host, this machine's dockerd (what
`docker.from_env()` finds). With `hosts`, each is reached through the docker
SDK's own transport for its URL: a unix socket, or `ssh://` (the SDK runs this
machine's `ssh` client and `docker system dial-stdio` on the host, as the
docker CLI does). `Fleet` does to every host what `AppContainers` does to one:
start a color, stop it, get the image; a step that fails on one host fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.constants
import docker.errors

from switchctl.deploy.config import DeployConfig, EnvFile, Hook, Host
from switchctl.deploy.containers import AppContainers, ReleaseSpec
from switchctl.deploy.crosscheck import endpoint
from switchctl.deploy.errors import DeployError
from switchctl.deploy.health import Probe

CONNECT_TIMEOUT = 10
"""Seconds for one docker API call while connecting (an unreachable ssh host fails fast)."""


class HostUnreachable(DeployError):
    def __init__(self, host: Host, why: str) -> None:
        self.host = host
        where = host.docker or "this machine's dockerd (DOCKER_HOST, else /var/run/docker.sock)"
        probe = f"docker -H {host.docker} info" if host.docker else "docker info"
        super().__init__(
            f"connect to {host.describe()}",
            f"cannot reach dockerd at {where}: {why}",
            f"is dockerd running there? `{probe}` shows it"
            + ("; an ssh:// host needs key-based ssh and `docker` on it" if _is_ssh(host) else ""),
        )


def _is_ssh(host: Host) -> bool:
    return (host.docker or "").startswith("ssh://")


def open_client(host: Host, timeout: int = CONNECT_TIMEOUT) -> tuple[docker.DockerClient, str]:
    """A client for the host's dockerd and the engine version it reports; HostUnreachable."""
    try:
        if host.docker is None:
            client = docker.from_env(timeout=timeout)
        else:
            client = docker.DockerClient(
                base_url=host.docker, timeout=timeout, use_ssh_client=_is_ssh(host)
            )
    except (docker.errors.DockerException, OSError) as e:
        raise HostUnreachable(host, _reason(e)) from e
    try:
        version = str(client.version().get("Version", "?"))
    except (docker.errors.DockerException, OSError) as e:
        client.close()
        raise HostUnreachable(host, _reason(e)) from e
    # Later calls (image builds, pulls, docker stop) take their own time: no short timeout.
    client.api.timeout = docker.constants.DEFAULT_TIMEOUT_SECONDS
    return client, version


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


@dataclass
class AppHost:
    spec: Host
    client: docker.DockerClient
    version: str = ""

    @property
    def name(self) -> str:
        return self.spec.name


def connect_hosts(cfg: DeployConfig, local: docker.DockerClient | None = None) -> list[AppHost]:
    """A client for every app host (`local`: this machine's client, reused when no `hosts`)."""
    if not cfg.hosts and local is not None:
        return [AppHost(cfg.app_hosts[0], local)]
    out = []
    for h in cfg.app_hosts:
        client, version = open_client(h)
        out.append(AppHost(h, client, version))
    return out


@dataclass(frozen=True)
class HostCheck:
    """One host's line in `switchctl deploy --check`."""

    name: str
    docker: str
    address: str
    ok: bool
    detail: str
    """The engine version, or why its dockerd cannot be reached."""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "docker": self.docker,
            "address": self.address,
            "ok": self.ok,
            ("version" if self.ok else "error"): self.detail,
        }


def check_hosts(cfg: DeployConfig) -> tuple[list[HostCheck], list[str]]:
    """Each listed host's dockerd answers (result per host, problems naming the host)."""
    checks, problems = [], []
    for i, h in enumerate(cfg.hosts):
        docker_url = h.docker or "local"
        try:
            client, version = open_client(h)
            client.close()
            checks.append(HostCheck(h.name, docker_url, h.address, True, version))
        except HostUnreachable as e:
            checks.append(HostCheck(h.name, docker_url, h.address, False, e.why))
            problems.append(f"hosts[{i}] ({h.name}): {e.why}; {e.todo}")
    return checks, problems


class Fleet:
    """The app's containers on every host; names carry the host's when there are several."""

    def __init__(
        self, cfg: DeployConfig, env: EnvFile, hosts: list[AppHost], release: ReleaseSpec
    ) -> None:
        self.cfg = cfg
        self.hosts = hosts
        self.on = [AppContainers(cfg, env, h.client, release, h.spec) for h in hosts]

    @property
    def first(self) -> AppContainers:
        """Where one-off (hook) containers run: the first host."""
        return self.on[0]

    @property
    def image_id(self) -> str | None:
        return self.first.image_id

    def named(self, apps: AppContainers, name: str) -> str:
        return f"{apps.host.name}: {name}" if len(self.on) > 1 else name

    def _each(self, what: Callable[[AppContainers], list[str]]) -> list[str]:
        return [self.named(a, n) for a in self.on for n in what(a)]

    def of(self, color: str) -> list[Any]:
        return [c for a in self.on for c in a.of(color)]

    def remove(self, color: str, keep: bool = False) -> list[str]:
        """Stop (and unless `keep`, remove) the color on every host; one host's docker error
        does not keep the others' containers running: it is raised after all were tried."""
        names: list[str] = []
        failed: list[str] = []
        for a in self.on:
            try:
                names += [self.named(a, n) for n in a.remove(color, keep)]
            except (docker.errors.DockerException, OSError) as e:
                failed.append(f"{a.host.describe()}: {_reason(e)}")
        if failed:
            raise DeployError(
                f"stop {color}", "; ".join(failed), f"stop {color}'s containers there by hand"
            )
        return names

    def remove_hooks(self, keep_release: str) -> list[str]:
        return self._each(lambda a: a.remove_hooks(keep_release))

    def get_image(self) -> str:
        notes = []
        for a in self.on:
            try:
                note = a.get_image()
            except DeployError as e:
                if len(self.on) == 1:
                    raise
                raise DeployError(e.step, f"{a.host.describe()}: {e.why}", e.todo) from e
            notes.append(self.named(a, note))
        return "; ".join(notes)

    def start(self, color: str) -> list[str]:
        return self._each(lambda a: a.start(color))

    def prune_release_tags(self, keep_ids: set[str], all_ids: list[str]) -> None:
        for a in self.on:
            a.prune_release_tags(keep_ids, all_ids)

    def run_hook(
        self, hook: Hook, name: str, color: str, beat: Callable[[str], None] | None = None
    ) -> tuple[int, str]:
        """Once, on the first host (a migration runs once for the whole release)."""
        return self.first.run_hook(hook, name, color, beat)


def upstreams_fit(cfg: DeployConfig, health: dict[str, Any], color: str) -> Probe:
    """From edgeproxy's `GET /v1/health`: is `color`'s upstream fit on every host?"""
    view = health.get("apps", {}).get(cfg.app, {}).get(color, {})
    listed = view.get("upstreams")
    if listed is None:  # an edgeproxy that does not show its upstreams: the color's verdict
        failing = "; ".join(view.get("failing_checks", [])) or "not healthy yet"
        return Probe(bool(view.get("healthy")), f"edgeproxy: {color} {failing}")
    fit = {endpoint(u["url"]) for u in listed if u.get("healthy")}
    waiting = [
        f"{h.name} ({url})"
        for url, h in zip(cfg.upstreams(color), cfg.app_hosts, strict=True)
        if endpoint(url) not in fit
    ]
    if not waiting:
        return Probe(True, f"edgeproxy: {color} healthy on every host")
    failing = "; ".join(view.get("failing_checks", [])) or "not checked yet"
    return Probe(False, f"edgeproxy: {color} not yet healthy on {', '.join(waiting)}: {failing}")
