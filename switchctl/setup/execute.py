"""Carry out a setup plan: accounts, folders, files, certificates, the base stack, edgeproxy.

One method per step kind, as in `switchctl/deploy/execute.py`. Every path in
the plan is a server path; it is written under the root (`cfg.on_server`).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import docker
import docker.errors

from certs.selfsigned import make_ca, make_leaf, pem_certs, pem_key, write_file
from switchctl.client import ClientError, ControlClient, ControlError
from switchctl.deploy.config import DeployConfig
from switchctl.deploy.errors import DeployError
from switchctl.deploy.health import Probe, WaitTimeout, wait_until
from switchctl.deploy.progress import Progress
from switchctl.deploy.proxyctl import runner_for
from switchctl.setup.accounts import Accounts
from switchctl.setup.configedit import set_control_group
from switchctl.setup.observe import SELF_SIGNED_ORG, compose_command
from switchctl.setup.plan import SetupObserved, SetupPlan, SetupStep

KEEP_PREVIOUS = 5
"""Previous versions of an installed config kept beside it (NAME.prev-TIME)."""


class SetupExecutor:
    def __init__(
        self,
        cfg: DeployConfig,
        obs: SetupObserved,
        accounts: Accounts,
        client: docker.DockerClient | None,
        progress: Progress,
    ) -> None:
        self.cfg = cfg
        self.obs = obs
        self.accounts = accounts
        self.docker = client
        self.progress = progress

    def run(self, plan: SetupPlan) -> None:
        if plan.blockers:
            raise DeployError(
                "setup plan", "; ".join(plan.blockers), "fix what is named, then run it again"
            )
        self.progress.start(len(plan.steps), f"setup of {self.cfg.app}: {len(plan.steps)} step(s)")
        for n, step in enumerate(plan.steps, 1):
            self.progress.step(n, step.describe(), step.kind)
            try:
                note = getattr(self, f"_{step.kind}")(step) or ""
            except (OSError, subprocess.SubprocessError, docker.errors.DockerException) as e:
                self.progress.failed(n, str(e))
                raise DeployError(step.describe(), str(e), _todo(step)) from e
            except DeployError as e:
                self.progress.failed(n, e.why)
                raise
            self.progress.ok(n, note)

    # --- helpers ------------------------------------------------------------------------------

    def _ids(self, owner: str, group: str) -> tuple[int, int]:
        uid = 0 if owner == "root" else self.accounts.uid(owner)
        gid = 0 if group == "root" else self.accounts.gid(group)
        if uid is None or gid is None:
            raise DeployError("setup", f"{owner}:{group} does not exist", "run setup as root")
        return uid, gid

    def _own(self, path: Path, mode: int, owner: str, group: str) -> None:
        uid, gid = self._ids(owner, group)
        st = path.stat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            if os.geteuid() == 0:
                os.chown(path, uid, gid)
            elif st.st_gid != gid:
                os.chown(path, -1, gid)  # the deploy user (CI) may give its file to its group
        os.chmod(path, mode)  # after chown: chown clears the setgid bit

    def _write(self, path: Path, text: str, mode: int, owner: str, group: str) -> None:
        """Atomically (temp file, fsync, rename): edgeproxy and deploy never read half a file."""
        keep = path.with_name(f"{path.name}.prev-{time.strftime('%Y%m%dT%H%M%S')}")
        if path.exists():
            os.link(path, keep)
        write_file(path, text.encode(), mode)
        self._own(path, mode, owner, group)
        for stale in sorted(path.parent.glob(f"{path.name}.prev-*"))[:-KEEP_PREVIOUS]:
            stale.unlink()

    def _config_text(self) -> str:
        raw = self.obs.config.raw
        assert raw is not None
        gid = self.accounts.gid(self.cfg.setup.group)
        assert gid is not None, "the deploy group is created before the config is installed"
        return set_control_group(raw, gid)

    # --- steps --------------------------------------------------------------------------------

    def _create_group(self, step: SetupStep) -> str:
        return f"gid {self.accounts.create_group(step.arg)}"

    def _create_user(self, step: SetupStep) -> str:
        return f"uid {self.accounts.create_user(step.arg, self.cfg.setup.group)}"

    def _add_to_group(self, step: SetupStep) -> None:
        self.accounts.add_to_group(self.cfg.setup.user, step.arg.rsplit(" ", 1)[-1])

    def _make_dir(self, step: SetupStep) -> None:
        want = next(w for w, _ in self.obs.dirs if str(w.path) == step.arg)
        path = self.cfg.on_server(want.path)
        path.mkdir(parents=True, exist_ok=True)
        self._own(path, want.mode, want.owner, want.group)

    _fix_dir = _make_dir

    def _create_env_file(self, step: SetupStep) -> None:
        server = Path(step.arg)
        app = server == self.obs.env_file
        owner, group = (self.cfg.setup.user, self.cfg.setup.group) if app else ("root", "root")
        path = self.cfg.on_server(server)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self._own(path, 0o600, owner, owner if owner == "root" else group)

    def _install_deploy_config(self, step: SetupStep) -> None:
        text = self.obs.deploy_config_given
        assert text is not None
        path = self.cfg.on_server(self.obs.deploy_config_path)
        self._write(path, text, 0o664, "root", self.cfg.setup.group)

    def _install_config(self, step: SetupStep) -> str:
        text = self._config_text()
        self._write(self.cfg.edgeproxy.config, text, 0o664, "root", self.cfg.setup.group)
        return f"control.group {self.accounts.gid(self.cfg.setup.group)}"

    def _update_config_source(self, step: SetupStep) -> None:
        source = self.cfg.edgeproxy.config_source
        assert source is not None
        text = self._config_text()
        self._write(source, text, 0o664, self.cfg.setup.user, self.cfg.setup.group)

    def _selfsigned(self, step: SetupStep) -> str:
        entry = next(c for c in self.obs.certs if step.arg.startswith(f"{c.cert} "))
        ca_cert, ca_key = make_ca()
        leaf, key = make_leaf(list(entry.hosts), ca_cert, ca_key)
        assert SELF_SIGNED_ORG in leaf.issuer.rfc4514_string()
        cert, keyfile = self.cfg.on_server(entry.cert), self.cfg.on_server(entry.key)
        write_file(keyfile, pem_key(key), 0o600)
        write_file(cert, pem_certs(leaf, ca_cert), 0o644)
        return f"valid until {leaf.not_valid_after_utc:%Y-%m-%d}; no client trusts it"

    def _compose_up(self, step: SetupStep) -> str:
        s = self.cfg.setup
        compose = compose_command()
        assert compose is not None and s.compose_file is not None
        argv = [*compose, "-p", s.compose_project]
        if s.compose_env_file is not None:
            argv += ["--env-file", str(s.compose_env_file)]
        argv += ["-f", str(s.compose_file), "up", "-d", "--no-recreate"]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
        if p.returncode != 0:
            raise DeployError(
                "start the base stack",
                f"`{' '.join(argv)}` exited with {p.returncode}:\n{p.stderr.strip()[-2000:]}",
                "fix what compose reports, then run `switchctl setup` again",
            )
        return " ".join(argv[len(compose) :])

    def _start_proxy(self, step: SetupStep) -> None:
        assert self.docker is not None
        runner = runner_for(self.cfg.edgeproxy, self.docker)
        if self.obs.proxy_status == "crash-looping":
            runner.restart()
        else:
            runner.start()

    def _wait_proxy(self, step: SetupStep) -> str:
        control = ControlClient(self.cfg.edgeproxy.socket, timeout=2)

        def probe() -> Probe:
            try:
                control.apps()
            except ControlError as e:
                return Probe(e.status == 403, f"answers, but {e.message}")
            except ClientError as e:
                return Probe(False, str(e))
            return Probe(True, "answers")

        try:
            got = wait_until(probe, "edgeproxy", self.cfg.edgeproxy.start_timeout, 0.1, 1.0)
        except WaitTimeout as e:
            logs = ""
            if self.docker is not None:
                logs = runner_for(self.cfg.edgeproxy, self.docker).logs()
            raise DeployError(
                "wait for edgeproxy",
                f"{e}\nedgeproxy's last log lines:\n{logs}",
                "read the log lines above (a certificate it cannot read, a port in use: "
                "is nginx still running?)",
            ) from e
        return got.detail

    def _reload_proxy(self, step: SetupStep) -> str:
        control = ControlClient(self.cfg.edgeproxy.socket, timeout=10)
        try:
            result = control.reload_config()
        except ControlError as e:
            if "restart" not in e.message or self.docker is None:
                raise DeployError("reload edgeproxy", e.message, "fix the config") from e
            runner_for(self.cfg.edgeproxy, self.docker).restart()
            self._wait_proxy(step)
            return "restarted: listen, control or state_file changed"
        return f"{result.get('sites')} site(s)"


def _todo(step: SetupStep) -> str:
    if step.kind in ("create_group", "create_user", "add_to_group", "make_dir", "fix_dir"):
        return "run `switchctl setup` as root (sudo) once; later runs need no root"
    return "fix the cause above, then run `switchctl setup` again: it picks up where it stopped"
