"""The deploy's step table: every step kind has its method, an unknown kind is refused before
anything runs, and taking a color out of traffic is one helper (weight 0, drain, wait)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast, get_args

import pytest

from switchctl.client import ControlClient
from switchctl.deploy.config import EnvFile, parse_deploy_config
from switchctl.deploy.containers import ReleaseSpec
from switchctl.deploy.errors import DeployError
from switchctl.deploy.execute import STEPS, Executor
from switchctl.deploy.plan import Plan, Step, StepKind
from switchctl.deploy.progress import Progress
from tests.conftest import ControlProxy
from tests.test_deploy_heartbeat import CFG

StartProxy = Callable[..., ControlProxy]


def executor(tmp_path: Path, socket: Path) -> tuple[Executor, io.StringIO]:
    cfg = parse_deploy_config(CFG + f"state_dir: {tmp_path}\ndrain_timeout: 20\n")
    out = io.StringIO()
    ex = Executor(
        cfg,
        EnvFile(tmp_path / "app.env", {}),
        None,  # type: ignore[arg-type]  # these steps never reach docker
        ControlClient(socket),
        None,  # type: ignore[arg-type]
        ReleaseSpec("r1", "shop:1", None),
        Progress(out=out, heartbeat=3600),
    )
    return ex, out


def test_every_step_kind_the_planner_can_emit_has_a_method_in_the_step_table() -> None:
    assert sorted(STEPS) == sorted(get_args(StepKind))


def test_a_plan_with_a_step_kind_no_method_carries_out_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    ex, out = executor(tmp_path, tmp_path / "nobody.sock")
    steps = [Step("record"), Step(cast(StepKind, "teleport"), color="green"), Step("notify")]
    with pytest.raises(DeployError) as caught:
        ex.run(Plan(live="blue", target="green", steps=steps))
    assert caught.value.step == "plan"
    assert "step kinds this switchctl cannot carry out: teleport" in caught.value.why
    assert "STEPS" in caught.value.todo
    assert out.getvalue() == ""  # no step started
    assert not ex.cfg.history_file.exists()  # not even the release was recorded


def test_taking_a_canary_color_out_of_traffic_zeroes_its_weight_drains_it_and_waits_for_its_requests(
    control_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    ex, _ = executor(tmp_path, proxy.socket)
    ex.control.set("shop", "green", 10)
    proxy.inflight["green"] = (2, 0)
    finished = threading.Event()

    def finish_requests() -> None:
        time.sleep(0.5)
        finished.set()
        proxy.inflight["green"] = (0, 0)

    threading.Thread(target=finish_requests, daemon=True).start()
    ex._take_out_of_traffic("green")
    assert finished.is_set()  # it returned only once green's requests had finished
    view = ex.control.app("shop")
    assert (view["active"], view["weight"]) == ("blue", 0)
    assert view["weights"] == {"blue": 100, "green": 0}


def test_taking_the_active_color_out_of_traffic_leaves_it_serving(
    control_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = control_proxy(shop=("blue", "green"))
    ex, _ = executor(tmp_path, proxy.socket)
    ex._take_out_of_traffic("blue")
    view = ex.control.app("shop")
    assert (view["active"], view["draining"], view["weight"]) == ("blue", {}, 0)
