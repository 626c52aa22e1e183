"""`switchctl proxy upgrade --image IMAGE`: a new edgeproxy container takes over, none is recreated.

A second container from IMAGE, with the running container's mounts, host
networking, user, environment, labels (compose's included) and restart policy,
runs the same command plus `--takeover --start-if-alone`: it takes the
listening sockets and the switch state from the running process
(edgeproxy/handover.py), so no connection is refused. The old container's
restart policy is set to "no" first (its process exits 0 once it has stepped
back, and docker must not start it again); once it has exited it is removed and
the new container gets its name, so `docker compose` still manages it.

If the new container exits or does not take over in time, it is removed, the
old container's restart policy is restored, and the old process, which never
stopped accepting, keeps serving. The error says why, with the new container's
last log lines.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from switchctl.client import ClientError, ControlClient
from switchctl.deploy.errors import DeployError

STEP = "upgrade edgeproxy"
TAKEOVER_FLAGS = ["--takeover", "--start-if-alone"]


@dataclass(frozen=True)
class Upgraded:
    container: str
    old_image: str
    new_image: str
    handover_id: str
    new_version: str
    old_exited_after: float
    """Seconds between the new process accepting and the old container exiting."""


def outdated(
    client: docker.DockerClient,
    container: str,
    image: str | None,
    config: Path,
    process: dict[str, Any] | None,
) -> str | None:
    """Why edgeproxy's container should hand over to a new one, or None: the deploy config
    names another image than it runs, or it runs an older version of its config file."""
    try:
        running = client.containers.get(container)
    except docker.errors.NotFound:
        return None
    if image is not None:
        try:
            wanted = client.images.get(image).id
        except docker.errors.ImageNotFound:
            wanted = None  # the upgrade step says so, with what to do
        if wanted != running.attrs["Image"]:
            return f"runs image {running.attrs['Config'].get('Image')}, the deploy config names {image}"
    loaded = (process or {}).get("config_sha256")
    try:
        on_disk = hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError:
        return None
    if loaded and loaded != on_disk:
        return f"runs an older version of {config}"
    return None


def _own(values: list[str] | None, image_values: list[str] | None) -> list[str]:
    """What the container set itself (the image's defaults left out: the new image brings its own)."""
    inherited = set(image_values or [])
    return [v for v in values or [] if v not in inherited]


def takeover_command(cmd: list[str]) -> list[str]:
    """The running command with the takeover flags (once), or DeployError when it does not serve."""
    if "serve" not in cmd:
        raise DeployError(
            STEP,
            f"the container's command {' '.join(cmd)!r} does not run `edgeproxy serve`",
            "run edgeproxy with `edgeproxy serve --config FILE` (compose/docker-compose.yml)",
        )
    return [c for c in cmd if c not in TAKEOVER_FLAGS] + TAKEOVER_FLAGS


def container_spec(old: Any, image_attrs: dict[str, Any]) -> dict[str, Any]:
    """`containers.create` arguments that repeat the running container for another image."""
    cfg, hc = old.attrs["Config"], old.attrs["HostConfig"]
    img = image_attrs.get("Config") or {}
    if hc.get("NetworkMode") != "host":
        raise DeployError(
            STEP,
            f"container {old.name} uses network mode {hc.get('NetworkMode')!r}: a hand-over "
            "passes listening sockets between two containers, which needs host networking",
            "run edgeproxy with `network_mode: host` (compose/docker-compose.yml)",
        )
    labels = {
        k: v for k, v in (cfg.get("Labels") or {}).items() if (img.get("Labels") or {}).get(k) != v
    }
    log = hc.get("LogConfig") or {}
    spec: dict[str, Any] = {
        "command": takeover_command(list(cfg.get("Cmd") or [])),
        "environment": _own(cfg.get("Env"), img.get("Env")),
        "labels": labels,
        "volumes": list(hc.get("Binds") or []),
        "network_mode": "host",
        "restart_policy": hc.get("RestartPolicy") or {"Name": "no"},
        "log_config": {"type": log.get("Type", "json-file"), "config": log.get("Config") or {}},
        "init": bool(hc.get("Init")),
    }
    if cfg.get("User"):
        spec["user"] = cfg["User"]
    if cfg.get("WorkingDir") and cfg["WorkingDir"] != img.get("WorkingDir"):
        spec["working_dir"] = cfg["WorkingDir"]
    if cfg.get("Entrypoint") and cfg["Entrypoint"] != img.get("Entrypoint"):
        spec["entrypoint"] = cfg["Entrypoint"]
    if cfg.get("StopSignal"):
        spec["stop_signal"] = cfg["StopSignal"]
    if cfg.get("StopTimeout") is not None:
        spec["stop_timeout"] = cfg["StopTimeout"]
    for key, arg in (
        ("CapAdd", "cap_add"),
        ("SecurityOpt", "security_opt"),
        ("Ulimits", "ulimits"),
    ):
        if hc.get(key):
            spec[arg] = hc[key]
    if spec.get("ulimits"):
        spec["ulimits"] = [docker.types.Ulimit(**u) for u in spec["ulimits"]]
    return spec


def upgrade_container(
    client: docker.DockerClient,
    name: str,
    image: str,
    socket_path: Path,
    *,
    timeout: float = 60.0,
    old_exit_timeout: float = 300.0,
    say: Callable[[str], None] = lambda line: None,
) -> Upgraded:
    """Hand edgeproxy over from container `name` to one from `image`; see the module docstring."""
    try:
        old = client.containers.get(name)
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise DeployError(
            STEP,
            f"no image {image} on this host",
            f"build or load it first (`docker images {image}`)",
        ) from None
    except docker.errors.NotFound:
        raise DeployError(
            STEP,
            f"no container named {name}",
            "start edgeproxy first (`docker compose up -d edgeproxy`): there is nothing to upgrade",
        ) from None
    if old.status != "running":
        raise DeployError(
            STEP,
            f"container {name} is {old.status}: there is nothing running to hand over from",
            f"start it (`docker start {name}`), or recreate it from the new image",
        )
    control = ControlClient(str(socket_path), timeout=5)
    try:
        before = control.process()
    except ClientError as e:
        raise DeployError(
            STEP, f"edgeproxy does not answer: {e}", "check `docker logs " + name + "`"
        ) from e
    if before is None:
        raise DeployError(
            STEP,
            "the running edgeproxy is too old to hand over (no /v1/process)",
            "this once, recreate it (`docker compose up -d edgeproxy`)",
        )
    old_image_attrs = client.images.get(old.attrs["Image"]).attrs
    spec = container_spec(old, old_image_attrs)
    next_name = f"{name}-next"
    try:
        leftover = client.containers.get(next_name)
        say(f"removing {next_name}, left over from an earlier upgrade ({leftover.status})")
        leftover.remove(force=True)
    except docker.errors.NotFound:
        pass
    restart = old.attrs["HostConfig"].get("RestartPolicy") or {"Name": "no"}
    # Its process exits 0 once it has stepped back: docker must not start it again.
    old.update(restart_policy={"Name": "no", "MaximumRetryCount": 0})
    new = None
    try:
        # No restart policy until it has taken over: a build that cannot start must show
        # as exited here, not crash-loop against the running process.
        new = client.containers.create(
            image, name=next_name, **(spec | {"restart_policy": {"Name": "no"}})
        )
        new.start()
        say(f"started {next_name} from {image}; waiting for it to take over")
        view = _wait_taken_over(control, new, before, timeout)
    except BaseException as e:
        why = str(e.why) if isinstance(e, DeployError) else str(e)
        if new is not None:
            logs = new.logs(tail=15).decode(errors="replace").rstrip()
            new.remove(force=True)
            if logs:
                why += "\nthe new container's last log lines:\n" + logs
        old.update(restart_policy=restart)
        raise DeployError(
            STEP,
            why,
            f"the old container {name} keeps serving, unchanged; fix the cause and run the "
            "upgrade again",
        ) from e
    took = view["took_over"]
    say(
        f"hand-over {took['id']}: {image} (edgeproxy {view['version']}) accepts; "
        f"{name} finishes its requests and exits"
    )
    accepted = time.monotonic()
    try:
        old.wait(timeout=old_exit_timeout)
    except Exception:  # the docker SDK raises requests' timeout types
        say(f"{name} still runs after {old_exit_timeout:.0f} s; stopping it")
        old.stop(timeout=10)
    exited = time.monotonic() - accepted
    old.remove()
    new.rename(name)
    new.update(restart_policy=spec["restart_policy"])
    return Upgraded(
        container=name,
        old_image=str(old.attrs["Config"].get("Image")),
        new_image=image,
        handover_id=str(took["id"]),
        new_version=str(view["version"]),
        old_exited_after=exited,
    )


def _wait_taken_over(
    control: ControlClient, new: Any, before: dict[str, Any], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        new.reload()
        if new.status in ("exited", "dead", "restarting"):
            code = new.attrs["State"].get("ExitCode")
            raise DeployError(STEP, f"the new container exited (code {code}) before it took over")
        try:
            view = control.process()
        except ClientError:
            view = None
        if view and view.get("took_over") and view.get("started_at") != before.get("started_at"):
            return view
        if time.monotonic() > deadline:
            raise DeployError(STEP, f"the new container did not take over within {timeout:.0f} s")
        time.sleep(0.1)
