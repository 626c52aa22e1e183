"""The app's containers through the docker SDK: image, colors, hooks, health probes.

Every container carries the labels `edgeproxy.app`, `edgeproxy.color`,
`edgeproxy.role` and `edgeproxy.release`; the env file's values reach docker
through the API (`environment=`), never a command line.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from switchctl.deploy.config import LOCAL_HOST, DeployConfig, EnvFile, Hook, Host, url_host
from switchctl.deploy.errors import DeployError
from switchctl.deploy.health import Probe, WaitTimeout, wait_until
from switchctl.deploy.observe import (
    LABEL_APP,
    LABEL_COLOR,
    LABEL_RELEASE,
    LABEL_ROLE,
    load_adopted,
)


@dataclass
class ReleaseSpec:
    id: str
    image: str
    ref: str | None
    pull: bool = True
    """False for a retained local image (rollback to a release) or a build."""
    rollback_of: str | None = None


def tail(container: Any, lines: int = 15) -> str:
    try:
        out: bytes = container.logs(tail=lines)
    except docker.errors.APIError:
        return ""
    return out.decode(errors="replace").rstrip()


class AppContainers:
    """The app's containers on one host (`host`: one of the config's `hosts`, or this machine)."""

    def __init__(
        self,
        cfg: DeployConfig,
        env: EnvFile,
        client: docker.DockerClient,
        release: ReleaseSpec,
        host: Host = LOCAL_HOST,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.docker = client
        self.release = release
        self.host = host
        self.image_id: str | None = None

    def port(self, role: str, color: str) -> int:
        """The role's port for `color` on this host."""
        return self.cfg.port_on(self.host, role, color)

    def of(self, color: str) -> list[Any]:
        """The color's role containers (hooks excluded), in any state; adopted ones too."""
        found = self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_APP}={self.cfg.app}", f"{LABEL_COLOR}={color}"]}
        )
        ids = {c.id for c in found}
        for cid, rec in load_adopted(self.cfg).items():
            if rec.get("color") == color and cid not in ids:
                try:
                    found.append(self.docker.containers.get(cid))
                except docker.errors.NotFound:
                    pass
        return [c for c in found if c.labels.get(LABEL_ROLE) != "hook"]

    def remove(self, color: str, keep: bool = False) -> list[str]:
        """Stop the color's containers (docker stop, graceful) and remove them unless `keep`."""
        names = []
        for c in self.of(color):
            names.append(c.name)
            if c.status in ("running", "restarting"):
                c.stop(timeout=self.cfg.stop_timeout)
            if not keep:
                c.remove(force=True)
        return names

    def remove_hooks(self, keep_release: str) -> list[str]:
        """Stop and remove one-off (hook) containers of every deploy but `keep_release`."""
        found = self.docker.containers.list(
            all=True, filters={"label": [f"{LABEL_APP}={self.cfg.app}", f"{LABEL_ROLE}=hook"]}
        )
        names = []
        for c in found:
            if c.labels.get(LABEL_RELEASE) == keep_release:
                continue
            names.append(c.name)
            if c.status in ("running", "restarting", "paused"):
                c.stop(timeout=self.cfg.stop_timeout)
            c.remove(force=True)
        return names

    def labels(self, role: str, color: str) -> dict[str, str]:
        return {
            **self.cfg.extra_labels,
            LABEL_APP: self.cfg.app,
            LABEL_COLOR: color,
            LABEL_ROLE: role,
            LABEL_RELEASE: self.release.id,
        }

    def environment(self, extra: dict[str, str]) -> dict[str, str]:
        return {**self.env.values, **extra, "RELEASE_ID": self.release.id}

    def log_config(self) -> dict[str, Any]:
        return {"type": self.cfg.logging.driver, "config": dict(self.cfg.logging.options)}

    def _network(self, port: int | None = None) -> dict[str, Any]:
        if self.cfg.network == "host":
            return {"network_mode": "host"}
        out: dict[str, Any] = {"network": self.cfg.network}
        if port is not None:
            # Published where edgeproxy reaches this host: loopback for this machine.
            out["ports"] = {f"{self.cfg.container_port}/tcp": (self.host.address, port)}
        return out

    # --- image -------------------------------------------------------------------------------

    def get_image(self) -> str:
        ref = self.release.image
        try:
            if self.cfg.build is not None and self.release.rollback_of is None:
                b = self.cfg.build
                image, _ = self.docker.images.build(
                    path=str(b.context), dockerfile=b.dockerfile, tag=ref, buildargs=b.args, rm=True
                )
            elif self.release.pull and self.cfg.pull != "never":
                image = self._pull(ref)
            else:
                image = self.docker.images.get(ref)
        except docker.errors.ImageNotFound as e:
            raise DeployError(
                "image", f"{ref} is not on this server", "see `switchctl releases list`"
            ) from e
        except (docker.errors.APIError, docker.errors.BuildError) as e:
            raise DeployError(
                "image", f"could not get {ref}: {e}", "check the image name and registry login"
            ) from e
        keep = self.cfg.release_tag(self.release.id)
        image.tag(*keep.split(":"))
        self.image_id = image.id
        return f"{image.short_id}, kept as {keep}"

    def _pull(self, ref: str) -> Any:
        if self.cfg.pull == "missing":
            try:
                return self.docker.images.get(ref)
            except docker.errors.ImageNotFound:
                pass
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "")
        return self.docker.images.pull(repo, tag=tag or "latest")

    def prune_release_tags(self, keep_ids: set[str], all_ids: list[str]) -> None:
        for rid in all_ids:
            if rid not in keep_ids and rid != self.release.id:
                try:
                    self.docker.images.remove(self.cfg.release_tag(rid), noprune=False)
                except docker.errors.APIError:
                    pass

    # --- colors ------------------------------------------------------------------------------

    def start(self, color: str) -> list[str]:
        """Start every role of `color` with the new image (restart policy unless-stopped)."""
        names = []
        for role_name, role in self.cfg.roles.items():
            port = self.port(role_name, color)
            inner = port if self.cfg.network == "host" else self.cfg.container_port
            extra = {**role.env, self.cfg.port_env: str(inner), "EDGEPROXY_COLOR": color}
            if self.cfg.hosts:
                extra["EDGEPROXY_HOST"] = self.host.name
            env = self.environment(extra)
            name = self.cfg.container_for(role_name, color)
            self.docker.containers.run(
                self.image_id or self.release.image,
                role.command,
                name=name,
                detach=True,
                environment=env,
                labels=self.labels(role_name, color),
                init=True,
                restart_policy={"Name": "unless-stopped"},
                log_config=self.log_config(),
                **self._network(port),
            )
            names.append(name)
        return names

    def probe(self, c: Any, path: str | None, port: int) -> Callable[[], Probe]:
        """Running, not restarted, docker health (if any) healthy, GET path answers 2xx."""

        def check() -> Probe:
            c.reload()
            st = c.attrs["State"]
            if st["Status"] in ("exited", "dead") or c.attrs.get("RestartCount", 0) > 0:
                return Probe(False, f"{c.name} exited with {st['ExitCode']}", fatal=True)
            if st["Status"] != "running":
                return Probe(False, f"{c.name} is {st['Status']}")
            health = (st.get("Health") or {}).get("Status")
            if health not in (None, "healthy"):
                log = (st["Health"].get("Log") or [{}])[-1].get("Output", "").strip()
                return Probe(False, f"docker health {health}: {log}")
            if path is None:
                return Probe(True, "running")
            url = f"http://{url_host(self.host.address)}:{port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=self.cfg.health.request_timeout) as r:
                    return Probe(True, f"GET {url} -> {r.status}")
            except urllib.error.HTTPError as e:
                return Probe(False, f"GET {url} -> {e.code}")
            except OSError as e:
                return Probe(False, f"GET {url}: {getattr(e, 'reason', e)}")

        return check

    # --- hooks -------------------------------------------------------------------------------

    def run_hook(
        self, hook: Hook, name: str, color: str, beat: Callable[[str], None] | None = None
    ) -> tuple[int, str]:
        """(exit code, last output lines); a one-off container of the new image, or a host command.

        `beat` is called while it runs (a heartbeat for long migrations)."""
        if hook.where == "host":
            return self._run_host(hook, color, beat)
        c = self.docker.containers.run(
            self.image_id or self.release.image,
            hook.command,
            name=f"{self.cfg.app}-{name}-{self.release.id}",
            detach=True,
            environment=self.environment({}),
            labels=self.labels("hook", color),
            init=True,
            log_config=self.log_config(),
            **self._network(),
        )

        def finished() -> Probe:
            c.reload()
            status = c.attrs["State"]["Status"]
            return Probe(status in ("exited", "dead"), f"{c.name} is {status}")

        try:
            try:
                wait_until(finished, f"{name} hook", hook.timeout, 0.1, 1.0, beat=beat)
            except WaitTimeout as e:
                c.kill()
                return -1, f"did not finish within {hook.timeout:.0f}s ({e})\n{tail(c)}"
            return int(c.attrs["State"]["ExitCode"]), tail(c)
        finally:
            c.remove(force=True)

    def _run_host(
        self, hook: Hook, color: str, beat: Callable[[str], None] | None = None
    ) -> tuple[int, str]:
        env = {
            **self.env.values,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "RELEASE_ID": self.release.id,
            "APP": self.cfg.app,
            "IMAGE": self.release.image,
            "COLOR": color,
        }
        proc = subprocess.Popen(
            hook.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        started = time.monotonic()
        while True:
            left = hook.timeout - (time.monotonic() - started)
            if left <= 0:
                proc.kill()
                proc.communicate()
                return -1, f"did not finish within {hook.timeout:.0f}s"
            try:
                out, err = proc.communicate(timeout=min(0.25, left))
                break
            except subprocess.TimeoutExpired:
                if beat is not None:
                    beat(f"pid {proc.pid} still running")
        return proc.returncode, "\n".join((out + err).splitlines()[-15:])
