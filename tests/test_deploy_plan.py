"""The planner over the state matrix a real server can be in."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from switchctl.deploy.plan import (
    BaseObs,
    ContainerObs,
    Intent,
    Observed,
    Plan,
    ProxyObs,
    Step,
    plan,
)

INTENT = Intent(has_pre_deploy=True, has_post_deploy=False)


def c(
    color: str, role: str = "server", state: str = "running", health: str | None = None
) -> ContainerObs:
    return ContainerObs(
        name=f"shop-{role}-{color}",
        id=f"id-{role}-{color}",
        role=role,
        color=color,
        release="r1",
        image="shop:1",
        state=state,
        health=health,
    )


def running(color: str) -> tuple[ContainerObs, ...]:
    return (c(color, "server"), c(color, "worker"))


UP_BLUE = ProxyObs(status="up", active="blue", healthy={"blue": True, "green": False})


def obs(
    containers: tuple[ContainerObs, ...] = (),
    proxy: ProxyObs = UP_BLUE,
    base: tuple[BaseObs, ...] = (BaseObs("db", True, "running", "x"),),
    state_file_active: str | None = None,
    stale_lock: str | None = None,
) -> Observed:
    return Observed(
        app="shop",
        colors=("blue", "green"),
        server_role="server",
        containers=containers,
        base=base,
        proxy=proxy,
        state_file_active=state_file_active,
        stale_lock=stale_lock,
    )


def kinds(p: Plan) -> list[str]:
    return [s.kind for s in p.steps]


def test_fresh_server_starts_blue_and_goes_live_without_a_canary() -> None:
    p = plan(obs(proxy=replace(UP_BLUE, healthy={})), INTENT)
    assert (p.live, p.target) == (None, "blue")
    assert kinds(p) == [
        "check_proxy_config",
        "wait_proxy",
        "image",
        "pre_deploy",
        "start_target",
        "wait_healthy",
        "smoke",
        "go_live",
        "record",
        "notify",
    ]
    assert not p.blockers


def test_blue_running_with_proxy_down_starts_the_proxy_then_deploys_green_through_a_canary() -> (
    None
):
    p = plan(
        obs(
            running("blue"), ProxyObs(status="down", detail="exited (0)"), state_file_active="blue"
        ),
        INTENT,
    )
    assert (p.live, p.target) == ("blue", "green")
    k = kinds(p)
    assert k.index("start_proxy") < k.index("wait_proxy") < k.index("reconcile") < k.index("image")
    assert [s.arg for s in p.steps if s.kind == "canary"] == [10, 25, 50]
    assert k[-5:] == ["promote", "drain_old", "stop_old", "record", "notify"]
    assert k.index("promote") < k.index("drain_old") < k.index("stop_old") < k.index("record")
    assert Step("stop_old", color="blue") in p.steps


def test_crash_looping_proxy_with_a_bad_config_gets_the_known_good_config_and_a_restart() -> None:
    px = ProxyObs(
        status="crash-looping",
        detail="restarted 7 times",
        config_problems=("apps.shop: unknown key",),
        source_ok=True,
    )
    p = plan(obs(running("blue"), px, state_file_active="blue"), INTENT)
    k = kinds(p)
    assert k[:4] == ["install_proxy_config", "check_proxy_config", "restart_proxy", "wait_proxy"]
    assert not p.blockers
    assert any("crash-looping: its config is invalid" in f.problem for f in p.findings)


def test_bad_proxy_config_without_a_known_good_source_blocks_the_deploy_and_names_the_problem() -> (
    None
):
    px = ProxyObs(status="crash-looping", config_problems=("listen.http: bad address",))
    p = plan(obs(running("blue"), px), INTENT)
    assert p.blockers
    assert "listen.http: bad address" in p.blockers[0].problem
    assert "config_source" in p.blockers[0].action


def test_both_colors_running_with_no_canary_replaces_the_inactive_color() -> None:
    px = replace(UP_BLUE, healthy={"blue": True, "green": True})
    p = plan(obs(running("blue") + running("green"), px), INTENT)
    assert (p.live, p.target) == ("blue", "green")
    assert kinds(p).index("retire") < kinds(p).index("start_target")
    assert Step("retire", color="green") in p.steps
    assert any("both colors run" in f.problem for f in p.findings)


def test_state_file_says_green_but_blue_runs_points_the_proxy_at_blue_first() -> None:
    px = ProxyObs(status="up", active="green", healthy={"blue": True, "green": False})
    p = plan(obs(running("blue"), px, state_file_active="green"), INTENT)
    assert (p.live, p.target) == ("blue", "green")
    assert p.steps[kinds(p).index("reconcile")] == Step("reconcile", color="blue")
    assert kinds(p).index("reconcile") < kinds(p).index("start_target")
    assert any("says green is active, but blue" in f.problem for f in p.findings)


def test_stale_lock_is_reported_and_does_not_block() -> None:
    p = plan(obs(running("blue"), stale_lock="pid 4242 on vps since 12:00"), INTENT)
    assert not p.blockers
    assert any("pid 4242" in f.problem for f in p.findings)


def test_target_half_started_by_a_failed_deploy_is_removed_before_the_new_release_starts() -> None:
    leftovers = (c("green", "server", "exited"), c("green", "worker", "created"))
    p = plan(obs(running("blue") + leftovers), INTENT)
    assert p.target == "green"
    assert Step("retire", color="green") in p.steps
    assert any("leftover containers" in f.problem for f in p.findings)


def test_a_stopped_base_service_is_started_and_a_missing_one_blocks() -> None:
    base = (BaseObs("db", True, "exited", "x"), BaseObs("cache", False))
    p = plan(obs(running("blue"), base=base), INTENT)
    assert p.steps[0] == Step("start_base", arg="db")
    assert len(p.blockers) == 1
    assert "cache does not exist" in p.blockers[0].problem


def test_an_interrupted_canary_is_drained_and_redeployed() -> None:
    px = replace(UP_BLUE, candidate="green", weight=25, healthy={"blue": True, "green": True})
    p = plan(obs(running("blue") + running("green"), px), INTENT)
    assert p.target == "green"
    assert Step("retire", color="green") in p.steps
    assert any("25% of traffic" in f.problem for f in p.findings)


def test_an_unhealthy_running_color_is_not_treated_as_live() -> None:
    px = replace(UP_BLUE, healthy={"blue": False})
    p = plan(obs((c("blue", health="unhealthy"),), px), INTENT)
    assert p.live is None
    assert p.target == "blue"
    assert "go_live" in kinds(p)


def test_after_promote_was_interrupted_green_is_live_and_blue_is_replaced() -> None:
    px = ProxyObs(
        status="up", active="green", draining=("blue",), healthy={"blue": True, "green": True}
    )
    p = plan(obs(running("blue") + running("green"), px), INTENT)
    assert (p.live, p.target) == ("green", "blue")
    assert Step("retire", color="blue") in p.steps


def test_a_proxy_that_does_not_know_the_app_blocks_with_the_fix() -> None:
    p = plan(obs(proxy=replace(UP_BLUE, app_known=False)), INTENT)
    assert any("has no app 'shop'" in b.problem for b in p.blockers)


states = st.sampled_from(["running", "exited", "created", "restarting"])
healths = st.sampled_from([None, "healthy", "unhealthy", "starting"])


@st.composite
def observations(draw: st.DrawFn) -> Observed:
    containers = []
    for color in ("blue", "green"):
        for role in ("server", "worker"):
            if draw(st.booleans()):
                containers.append(c(color, role, draw(states), draw(healths)))
    status = draw(st.sampled_from(["up", "down", "crash-looping"]))
    px = ProxyObs(
        status=status,
        active=draw(st.sampled_from([None, "blue", "green"])),
        candidate=draw(st.sampled_from([None, "blue", "green"])),
        weight=draw(st.integers(0, 100)),
        healthy={"blue": draw(st.booleans()), "green": draw(st.booleans())},
    )
    return obs(
        tuple(containers), px, state_file_active=draw(st.sampled_from([None, "blue", "green"]))
    )


@given(observations())
def test_every_plan_starts_checks_and_switches_to_the_target_only_after_it_is_healthy(
    o: Observed,
) -> None:
    p = plan(o, INTENT)
    k = kinds(p)
    assert p.target in ("blue", "green")
    assert p.target != p.live
    switch = "go_live" if p.live is None else "promote"
    assert k.index("start_target") < k.index("wait_healthy") < k.index("smoke") < k.index(switch)
    assert k.count("start_target") == 1
    # the old color stops only after the new one serves everything
    for i, s in enumerate(p.steps):
        if s.kind == "stop_old":
            assert i > k.index(switch)
            assert s.color != p.target
    # never retire the live color
    assert Step("retire", color=p.live) not in p.steps


def test_a_killed_deploys_one_off_containers_and_history_entry_are_cleared_before_anything_else() -> (
    None
):
    hook = replace(c("green", role="hook"), name="shop-pre-deploy-r0", release="r0")
    o = replace(
        obs(running("blue"), proxy=ProxyObs(status="down")),
        orphans=(hook,),
        stuck_releases=("r0",),
    )
    p = plan(o, INTENT)
    assert [s.kind for s in p.steps[:2]] == ["remove_orphans", "close_interrupted"]
    assert p.steps[0].describe() == (
        "stop and remove one-off containers a killed deploy left (shop-pre-deploy-r0)"
    )
    problems = [f.problem for f in p.findings]
    assert (
        "one-off container shop-pre-deploy-r0 (running) of deploy r0 is left from a deploy "
        "that did not finish" in problems
    )
    assert "release r0 is recorded as running, but no deploy holds the lock" in problems
    assert p.steps.index(Step("pre_deploy")) > 1
