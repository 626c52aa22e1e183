"""Carry out a plan with the docker SDK and the control socket; roll back on failure.

Each step kind is carried out by one `Executor` method, found in the `STEPS`
table (kind -> method, checked by mypy; a test checks that every `StepKind` has
one, and `run` refuses a plan with a kind it cannot carry out before it touches
anything). A failure before the new color serves everything (`promote`/`go_live`)
takes its weight away, stops it and leaves the old color serving; the error says
which step failed, why and what to do.

To add a step: name its kind in `plan.StepKind` (and its line in `_DESCRIBE`),
write `def _kind(self, step: Step) -> str | None` here (the note it returns is
printed after "ok"), and add `"kind": Executor._kind` to `STEPS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final, NoReturn

import docker
import docker.errors

from switchctl.client import AppView, ControlClient, ControlError, ProxyUnreachable
from switchctl.deploy.config import DeployConfig, EnvFile, Hook
from switchctl.deploy.containers import AppContainers, ReleaseSpec, tail
from switchctl.deploy.errors import DeployError
from switchctl.deploy.gates import gate_verdict, step_evidence
from switchctl.deploy.health import Probe, WaitTimeout, wait_until
from switchctl.deploy.history import History, Release
from switchctl.deploy.hosts import AppHost, Fleet, connect_hosts, upstreams_fit
from switchctl.deploy.notify import Event, Report, notify
from switchctl.deploy.plan import POINT_OF_NO_RETURN, Plan, Step, StepKind
from switchctl.deploy.progress import Progress
from switchctl.deploy.proxyctl import Runner, check_config, install_config
from switchctl.deploy.proxyupgrade import upgrade_container
from switchctl.deploy.smoke import Prober, SmokeClient, trust


class Executor:
    def __init__(
        self,
        cfg: DeployConfig,
        env: EnvFile,
        client: docker.DockerClient | None,
        control: ControlClient,
        runner: Runner,
        release: ReleaseSpec,
        progress: Progress,
        hosts: list[AppHost] | None = None,
    ) -> None:
        """`client`: this machine's dockerd (base services); `hosts`: the app hosts (default:
        `client` alone, for a config without `hosts`)."""
        self.cfg = cfg
        self.env = env
        self.docker = client
        self.control = control
        self.runner = runner
        self.release = release
        self.progress = progress
        self.history = History(cfg.history_file)
        self.started = time.time()
        self.apps = Fleet(cfg, env, hosts or connect_hosts(cfg, client), release)
        self.switched = False
        """A step of `POINT_OF_NO_RETURN` has run: failures from here on are not rolled back."""
        self.plan: Plan | None = None
        """The plan `run` carries out (None before: a step called alone has no plan)."""
        self.config_was_valid = False
        """Observe has just checked edgeproxy's live config (`run`'s argument)."""
        self._smoker: SmokeClient | None = None

    # --- the loop ----------------------------------------------------------------------------

    def run(self, plan: Plan, config_was_valid: bool = False) -> Release:
        """Carry out `plan`; `config_was_valid`: observe just checked edgeproxy's config."""
        if plan.blockers:
            raise DeployError(
                "plan",
                "; ".join(b.problem for b in plan.blockers),
                "; ".join(b.action for b in plan.blockers),
            )
        unknown = sorted({s.kind for s in plan.steps if s.kind not in STEPS})
        if unknown:
            raise DeployError(
                "plan",
                f"the plan has step kinds this switchctl cannot carry out: {', '.join(unknown)}",
                "nothing was done; a step kind needs a method in switchctl/deploy/execute.py's "
                "STEPS table",
            )
        self.plan = plan
        self.config_was_valid = config_was_valid
        record = Release(
            id=self.release.id,
            app=self.cfg.app,
            image=self.release.image,
            git_sha=self.release.ref,
            color=plan.target,
            started_at=self.started,
            rollback_of=self.release.rollback_of,
        )
        self.history.record(record)
        self.progress.begin(len(plan.steps), self.release.id, plan.target, plan.live)
        for f in plan.findings:
            self.progress.info(f"found: {f.problem} -> {f.action}")
        for n, step in enumerate(plan.steps, 1):
            try:
                self.progress.step(n, step.describe(), step.kind)
                note = STEPS[step.kind](self, step) or ""
                if step.kind in POINT_OF_NO_RETURN:
                    self.switched = True
                self.progress.ok(n, note)
            except Exception as e:
                err = e if isinstance(e, DeployError) else DeployError(step.kind, str(e))
                if err.step == "interrupted":
                    err = DeployError(f"{step.describe()} (interrupted)", err.why, err.todo)
                else:
                    err = DeployError(step.describe(), err.why, err.todo)
                self.progress.failed(n, err.why)
                self._fail(record, step, err)
        return self.history.get(record.id) or record

    def _fail(self, record: Release, step: Step, err: DeployError) -> NoReturn:
        """Before the switch: weight back to the old color, stop the target, tell everyone."""
        todo = err.todo
        event: Event = "failure"
        if not self.switched and step.kind not in ("record", "post_deploy", "notify"):
            undo = self._roll_back()
            event = "rollback"
            todo = (todo + "; " if todo else "") + undo
        duration = time.time() - self.started
        outcome = "rolled_back" if event == "rollback" else "failed"
        final = record.model_copy(
            update={
                "outcome": outcome,
                "duration_s": round(duration, 1),
                "failed_step": err.step,
                "message": err.why,
                "image_id": self.apps.image_id,
            }
        )
        self.history.record(final)
        self._send(event, final, err.step, err.why, todo)
        raise DeployError(err.step, err.why, todo)

    def _roll_back(self) -> str:
        target, live = self._plan().target, self._plan().live
        try:
            self._take_out_of_traffic(target)
        except (ControlError, ProxyUnreachable, WaitTimeout) as e:
            self.progress.info(f"rollback: could not take {target} out of edgeproxy: {e}")
        kept = bool(self.apps.of(target))
        try:
            self.apps.remove(target, keep=True)
        except DeployError as e:
            return f"{live or 'nothing'} serves; {target} could not be stopped everywhere: {e.why}"
        if not kept:
            return (
                f"{live} still serves all traffic; {target} was not started"
                if live
                else "nothing was switched: no color served before this deploy and none serves now"
            )
        if live is None:
            return (
                f"nothing was switched: no color served before this deploy and none serves now; "
                f"{target}'s containers are stopped and kept for `docker logs`"
            )
        where = " on every host" if self.cfg.hosts else ""
        return (
            f"{live} still serves all traffic; {target}'s containers are stopped and kept{where} "
            f"for `docker logs {self._server(target)}`"
        )

    def _send(
        self, event: Event, rel: Release, step: str | None, why: str | None, todo: str
    ) -> None:
        report = Report(
            event=event,
            app=self.cfg.app,
            release_id=rel.id,
            image=rel.image,
            duration_s=rel.duration_s or 0.0,
            color=rel.color,
            failed_step=step,
            why=why,
            todo=todo or None,
        )
        for problem in notify(self.cfg.notify, report, self.env):
            self.progress.info(f"notification failed: {problem}")

    # --- helpers -----------------------------------------------------------------------------

    def _plan(self) -> Plan:
        if self.plan is None:
            raise DeployError(
                "plan", "no plan is being carried out", "steps run through Executor.run(plan)"
            )
        return self.plan

    def _server(self, color: str) -> str:
        return self.cfg.container_for(self.cfg.server_role, color)

    def _view(self) -> AppView:
        return self.control.app(self.cfg.app)

    def _wait_drained(self, color: str) -> None:
        def probe() -> Probe:
            v = self._view()
            left = v["colors"].get(color, {}).get("in_flight", 0)
            done = color not in v["draining"] or left == 0
            return Probe(done, f"{left} requests in flight on {color}")

        what, deadline = f"{color} to drain", self.cfg.drain_timeout + 5
        beat = self.progress.heartbeat(what, deadline)
        wait_until(probe, what, deadline, first=0.1, maximum=1, beat=beat)

    def _take_out_of_traffic(self, color: str) -> None:
        """No new requests reach `color` and the ones it serves have finished (or were cut at
        the drain deadline): a candidate's weight goes to 0, then it drains. The active color
        is left alone (nothing to take it out to)."""
        view = self._view()
        if view["candidate"] == color and view["weight"] > 0:
            self.control.set(self.cfg.app, color, 0)
            view = self._view()
        if view["active"] == color:
            return
        if color not in view["draining"]:
            self.control.drain(self.cfg.app, color, self.cfg.drain_timeout)
        self._wait_drained(color)

    def _wait(self, what: str, probe: Callable[[], Probe], deadline: float) -> Probe:
        h = self.cfg.health
        beat = self.progress.heartbeat(what, deadline)
        try:
            return wait_until(probe, what, deadline, h.first_delay, h.max_delay, beat=beat)
        except WaitTimeout as e:
            raise DeployError(what, str(e)) from e

    # --- steps -------------------------------------------------------------------------------

    def _remove_orphans(self, step: Step) -> str:
        return ", ".join(self.apps.remove_hooks(keep_release=self.release.id)) or "none left"

    def _close_interrupted(self, step: Step) -> str:
        closed = []
        for rel in self.history.stuck(self.release.id):
            self.history.record(
                rel.model_copy(
                    update={
                        "outcome": "interrupted",
                        "message": "the deploy process died before it recorded an outcome "
                        f"(SIGKILL or a reboot); closed by release {self.release.id}",
                    }
                )
            )
            closed.append(rel.id)
        return ", ".join(closed) or "none left"

    def _start_base(self, step: Step) -> str:
        assert self.docker is not None, "base services need this machine's dockerd"
        c = self.docker.containers.get(str(step.arg))
        c.start()

        def probe() -> Probe:
            c.reload()
            st = c.attrs["State"]
            health = (st.get("Health") or {}).get("Status")
            ok = st["Status"] == "running" and health in (None, "healthy")
            return Probe(ok, f"{step.arg} is {st['Status']} {health or ''}".strip())

        self._wait(f"base service {step.arg}", probe, 60)
        return f"same container {c.short_id}"

    def _install_proxy_config(self, step: Step) -> str:
        self.config_was_valid = False
        assert self.cfg.edgeproxy.config_source is not None
        kept = install_config(self.cfg.edgeproxy.config_source, self.cfg.edgeproxy.config)
        return f"the invalid config is kept as {kept}"

    def _check_proxy_config(self, step: Step) -> str | None:
        if self.config_was_valid:
            return "checked while observing"
        problems = check_config(self.cfg.edgeproxy.config)
        if problems:
            raise DeployError(
                "check edgeproxy config",
                "; ".join(problems),
                f"fix {self.cfg.edgeproxy.config} or set edgeproxy.config_source",
            )
        return None

    def _start_proxy(self, step: Step) -> None:
        self.runner.start()

    def _restart_proxy(self, step: Step) -> None:
        self.runner.restart()

    def _upgrade_proxy(self, step: Step) -> str:
        """A new container takes edgeproxy's sockets over (switchctl/deploy/proxyupgrade.py)."""
        px = self.cfg.edgeproxy
        assert px.container is not None, "planned only for a container"
        assert self.docker is not None, "an edgeproxy container needs this machine's dockerd"
        image = px.image or self.docker.containers.get(px.container).attrs["Config"]["Image"]
        done = upgrade_container(
            self.docker, px.container, image, px.socket, say=self.progress.info
        )
        return f"edgeproxy {done.new_version} from {image} (hand-over {done.handover_id})"

    def _wait_proxy(self, step: Step) -> None:
        def probe() -> Probe:
            try:
                self._view()
            except ProxyUnreachable as e:
                st = self.runner.state()
                return Probe(False, e.reason, fatal=st.status in ("down", "missing"))
            return Probe(True, "answers")

        try:
            deadline = self.cfg.edgeproxy.start_timeout
            beat = self.progress.heartbeat("edgeproxy's control socket", deadline)
            wait_until(probe, "edgeproxy", deadline, 0.1, 1.0, beat=beat)
        except WaitTimeout as e:
            raise DeployError(
                "wait for edgeproxy",
                f"{e}\nedgeproxy's last log lines:\n{self.runner.logs()}",
                "read the log lines above; `edgeproxy check-config FILE` checks the config",
            ) from e

    def _healthy_in_proxy(self, color: str) -> Probe:
        c = self._view()["colors"].get(color, {})
        failing = "; ".join(c.get("failing_checks", [])) or "not healthy yet"
        return Probe(bool(c.get("healthy")), f"edgeproxy: {color} {failing}")

    def _reconcile(self, step: Step) -> str:
        color = str(step.color)
        view = self._view()
        if view["active"] == color and not view["weight"]:
            return f"{color} is already active"
        self._wait(f"edgeproxy sees {color} healthy", lambda: self._healthy_in_proxy(color), 30)
        self.control.set(self.cfg.app, color, 100)
        return f"{color} now serves all traffic"

    def _retire(self, step: Step) -> None:
        color = str(step.color)
        self._take_out_of_traffic(color)
        self.apps.remove(color)

    def _image(self, step: Step) -> str:
        return self.apps.get_image()

    def _run_hook(self, name: str, hook: Hook | None, then: str, todo: str) -> None:
        assert hook is not None
        beat = self.progress.heartbeat(f"the {name} hook to finish", hook.timeout)
        rc, out = self.apps.run_hook(hook, name, self._plan().target, beat)
        if rc != 0:
            raise DeployError(
                f"{name} hook",
                f"`{' '.join(hook.command)}` exited with {rc}{then}; its last lines:\n{out}",
                todo,
            )

    def _pre_deploy(self, step: Step) -> None:
        self._run_hook(
            "pre-deploy",
            self.cfg.hooks.pre_deploy,
            "",
            "fix what the hook reports (nothing was switched), then deploy again",
        )

    def _start_target(self, step: Step) -> str:
        color = str(step.color)
        self.apps.remove(color)  # anything left since the plan was made
        return ", ".join(self.apps.start(color))

    def _wait_healthy(self, step: Step) -> str:
        """Every role on every host (one host after the other, each with the backoff and
        deadline), then edgeproxy's verdict: with several hosts, on every host's upstream."""
        color = str(step.color)
        started, waited = time.monotonic(), []
        for apps in self.apps.on:
            for role_name in self.cfg.roles:
                self._wait_container(apps, role_name, color)
            waited.append(f"{apps.host.name} at {time.monotonic() - started:.1f}s")
        if not self.cfg.hosts:
            self._wait(
                f"edgeproxy sees {color} healthy",
                lambda: self._healthy_in_proxy(color),
                self.cfg.health.deadline,
            )
            return "every role healthy, edgeproxy agrees"
        self._wait(
            f"edgeproxy sees {color} healthy on every host",
            lambda: upstreams_fit(self.cfg, self.control.health(), color),
            self.cfg.health.deadline,
        )
        return f"every role healthy on {', '.join(waited)}; edgeproxy agrees on every host"

    def _wait_container(self, apps: AppContainers, role_name: str, color: str) -> None:
        role, port = self.cfg.roles[role_name], apps.port(role_name, color)
        c = apps.docker.containers.get(self.cfg.container_for(role_name, color))
        name = f"{c.name} on {apps.host.name}" if self.cfg.hosts else c.name
        logs = f"docker -H {apps.host.docker} logs" if apps.host.docker else "docker logs"
        try:
            wait_until(
                apps.probe(c, role.health_path, port),
                f"{name} healthy",
                self.cfg.health.deadline,
                self.cfg.health.first_delay,
                self.cfg.health.max_delay,
                beat=self.progress.heartbeat(f"{name} to be healthy", self.cfg.health.deadline),
            )
        except WaitTimeout as e:
            raise DeployError(
                f"wait for {name}",
                f"{e}\n{name}'s last log lines:\n{tail(c)}",
                f"see `{logs} {c.name}`; its health check is "
                f"{role.health_path or 'running'} on port {port}",
            ) from e

    def _smoke_client(self) -> SmokeClient:
        if self._smoker is None:
            cfg = self.cfg.edgeproxy
            sources = [p for p in (cfg.config, cfg.config_source) if p is not None]
            ctx = trust(self.cfg.smoke, sources)
            self._smoker = SmokeClient(self.cfg.smoke, self.env.values, ctx, str(self.env.path))
        return self._smoker

    def _smoke(self, step: Step) -> str:
        color = str(step.color)
        if not self.cfg.smoke.checks:
            return "no smoke checks configured"
        client = self._smoke_client()
        failed = [o for o in (client.run(c, color) for c in self.cfg.smoke.checks) if not o.ok]
        if failed:
            raise DeployError(
                "smoke",
                "\n".join(str(o.problem) for o in failed),
                f"the new release answers wrongly through edgeproxy, or another color answered "
                f"for it; see `docker logs {self._server(color)}`",
            )
        return f"{len(self.cfg.smoke.checks)} checks passed, each answered by {color}"

    def _canary(self, step: Step) -> str:
        color, weight = str(step.color), int(step.arg or 0)
        cn = self.cfg.canary
        before = self._view()
        self.control.set(self.cfg.app, color, weight)
        stats = "requests" in before["colors"].get(color, {})
        if not stats:
            self.progress.info(
                "edgeproxy reports no per-color request stats: gates cannot judge, and the "
                "step ends after its dwell"
            )
        started = time.monotonic()
        dwell_end, thin_end = started + cn.dwell, started + cn.max_dwell
        probing = cn.probe_rate > 0 and bool(self.cfg.smoke.checks)
        prober = Prober(
            self._smoke_client() if probing else None, color, cn.probe_rate, time.monotonic
        )
        deadline = None if cn.on_thin_traffic == "hold" else cn.max_dwell
        beat = self.progress.heartbeat(f"the {weight}% canary of {color} to dwell", deadline)
        holding = False
        while True:
            view = self._view()
            if view["candidate"] != color or view["weight"] != weight:
                guard = (view.get("guard") or {}).get("reason")
                why = (
                    f"edgeproxy's canary guard backed {color} out: {guard}"
                    if guard
                    else (f"someone changed the switch during the canary (now {view['weights']})")
                )
                raise DeployError("canary", why, "read the reason; the old color serves again")
            ev = step_evidence(before, view, color)
            verdict = gate_verdict(ev, cn.gates)
            if verdict:
                raise DeployError(
                    f"canary {weight}%",
                    f"{verdict} ({prober.describe()})",
                    f"inspect the release: `docker logs {self._server(color)}`",
                )
            seen = f"{ev.describe()}, {prober.describe()}"
            now = time.monotonic()
            enough = ev.requests >= cn.gates.min_requests or not stats
            if now >= dwell_end and enough:
                return seen
            if now >= thin_end and not enough:
                thin = (
                    f"{color} served {ev.requests} of the {cn.gates.min_requests} requests "
                    f"(gates.min_requests) this step needs in {now - started:.0f}s"
                )
                if cn.on_thin_traffic == "proceed":
                    self.progress.info(f"{thin}; proceeding unjudged (on_thin_traffic: proceed)")
                    return f"{seen}; too few requests to judge, proceeded"
                if cn.on_thin_traffic == "fail":
                    raise DeployError(
                        f"canary {weight}%",
                        f"{thin} (on_thin_traffic: fail)",
                        "send traffic (or enable canary.probe_rate), or lower gates.min_requests",
                    )
                if not holding:
                    holding = True
                    self.progress.info(
                        f"{thin}; holding at {weight}% until it has them (on_thin_traffic: "
                        "hold): send traffic to the site, or interrupt the deploy (Ctrl-C, "
                        "SIGTERM) to roll back"
                    )
            beat(f"gates pass so far: {seen}" + (" (holding: thin traffic)" if holding else ""))
            prober.tick()
            wake = min(now + cn.poll, dwell_end if now < dwell_end else now + cn.poll)
            due = prober.next_due()
            if due is not None:
                wake = min(wake, due)
            time.sleep(max(0.0, wake - time.monotonic()))

    def _go_live(self, step: Step) -> str:
        color = str(step.color)
        view = self._view()
        if view["active"] != color or not view.get("released", True):
            # The first release of a `first_release: hold` app: its active color is
            # named but serves nobody until this weight 100 releases it.
            self.control.set(self.cfg.app, color, 100)
        return f"{color} serves all traffic"

    def _promote(self, step: Step) -> None:
        color = str(step.color)
        view = self._view()
        if view["candidate"] == color:
            self.control.promote(self.cfg.app)
        elif view["active"] != color:
            self.control.set(self.cfg.app, color, 100)

    def _drain_old(self, step: Step) -> None:
        self._take_out_of_traffic(str(step.color))

    def _stop_old(self, step: Step) -> str:
        return ", ".join(self.apps.remove(str(step.color))) or "nothing was running"

    def _record(self, step: Step) -> None:
        rel = self.history.get(self.release.id)
        assert rel is not None
        self.history.record(
            rel.model_copy(
                update={
                    "outcome": "success",
                    "duration_s": round(time.time() - self.started, 1),
                    "image_id": self.apps.image_id,
                }
            )
        )
        keep = {r.id for r in self.history.retained(self.cfg.keep_releases)}
        self.apps.prune_release_tags(keep, [r.id for r in self.history.load()])

    def _post_deploy(self, step: Step) -> None:
        self._run_hook(
            "post-deploy",
            self.cfg.hooks.post_deploy,
            " (the release is live)",
            "run the hook by hand once its problem is fixed",
        )

    def _notify(self, step: Step) -> None:
        rel = self.history.get(self.release.id)
        assert rel is not None
        self._send("success", rel, None, None, "")


StepMethod = Callable[[Executor, Step], str | None]
"""One step: carries `step` out (raising `DeployError` when it cannot) and returns a note."""

STEPS: Final[Mapping[StepKind, StepMethod]] = {
    "remove_orphans": Executor._remove_orphans,
    "close_interrupted": Executor._close_interrupted,
    "start_base": Executor._start_base,
    "install_proxy_config": Executor._install_proxy_config,
    "check_proxy_config": Executor._check_proxy_config,
    "start_proxy": Executor._start_proxy,
    "restart_proxy": Executor._restart_proxy,
    "upgrade_proxy": Executor._upgrade_proxy,
    "wait_proxy": Executor._wait_proxy,
    "reconcile": Executor._reconcile,
    "retire": Executor._retire,
    "image": Executor._image,
    "pre_deploy": Executor._pre_deploy,
    "start_target": Executor._start_target,
    "wait_healthy": Executor._wait_healthy,
    "smoke": Executor._smoke,
    "canary": Executor._canary,
    "go_live": Executor._go_live,
    "promote": Executor._promote,
    "drain_old": Executor._drain_old,
    "stop_old": Executor._stop_old,
    "record": Executor._record,
    "post_deploy": Executor._post_deploy,
    "notify": Executor._notify,
}
"""Which method carries out each step kind (tests/test_deploy_steps.py: every kind has one)."""
