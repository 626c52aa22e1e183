"""The deploy's "ensure edgeproxy" step hands over to a new container instead of recreating
(or restarting) edgeproxy when its image or its config changed (pure planning)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from switchctl.deploy.plan import Step, plan
from tests.test_deploy_plan import INTENT, UP_BLUE, kinds, obs, running


def test_an_outdated_image_is_handed_over_before_anything_else_touches_traffic() -> None:
    px = replace(
        UP_BLUE,
        hands_over=True,
        outdated="runs image edgeproxy:1, the deploy config names edgeproxy:2",
    )
    p = plan(obs(running("blue"), px, state_file_active="blue"), INTENT)
    k = kinds(p)
    assert "restart_proxy" not in k and "start_proxy" not in k
    assert k.index("check_proxy_config") < k.index("upgrade_proxy") < k.index("wait_proxy")
    assert k.index("wait_proxy") < k.index("start_target")
    step = next(s for s in p.steps if s.kind == "upgrade_proxy")
    assert "edgeproxy:2" in step.describe() and "no connection refused" in step.describe()
    assert any("edgeproxy runs image edgeproxy:1" in f.problem for f in p.findings)


def test_an_invalid_config_on_disk_is_replaced_and_handed_over_not_restarted() -> None:
    px = replace(UP_BLUE, hands_over=True, config_problems=("x: bad",), source_ok=True)
    k = kinds(plan(obs(running("blue"), px, state_file_active="blue"), INTENT))
    assert k.index("install_proxy_config") < k.index("upgrade_proxy")
    assert "restart_proxy" not in k


def test_a_proxy_that_cannot_hand_over_is_restarted_as_before() -> None:
    px = replace(UP_BLUE, config_problems=("x: bad",), source_ok=True)
    k = kinds(plan(obs(running("blue"), px, state_file_active="blue"), INTENT))
    assert "restart_proxy" in k and "upgrade_proxy" not in k


@given(
    outdated=st.sampled_from([None, "runs an older version of /etc/edgeproxy/edgeproxy.yml"]),
    hands_over=st.booleans(),
    status=st.sampled_from(["up", "down", "crash-looping"]),
)
def test_a_hand_over_is_planned_only_for_a_running_container_that_is_outdated(
    outdated: str | None, hands_over: bool, status: str
) -> None:
    px = replace(UP_BLUE, status=status, hands_over=hands_over, outdated=outdated)  # type: ignore[arg-type]
    p = plan(obs(running("blue"), px, state_file_active="blue"), INTENT)
    planned = Step("upgrade_proxy", arg=outdated or "") in p.steps
    assert planned == (status == "up" and hands_over and outdated is not None)
    assert kinds(p).count("upgrade_proxy") <= 1
