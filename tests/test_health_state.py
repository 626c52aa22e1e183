"""The pure health verdicts: check thresholds and backoff, passive ejection cool-downs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.health.state import CheckState, EjectionState


def run(state: CheckState, results: list[bool]) -> list[bool | None]:
    out = []
    for i, ok in enumerate(results):
        state.record(ok, "GET /health → 500", float(i))
        out.append(state.healthy)
    return out


def test_the_first_probe_decides_either_way_like_envoy_at_startup() -> None:
    assert run(CheckState(2, 3), [True]) == [True]
    assert run(CheckState(2, 3), [False]) == [False]


def test_a_healthy_upstream_needs_the_unhealthy_threshold_of_failures_in_a_row() -> None:
    state = CheckState(2, 3)
    verdicts = run(state, [True, False, False, True, False, False, False])
    assert verdicts == [True, True, True, True, True, True, False]
    assert state.describe() == "GET /health → 500 (3 in a row)"


def test_an_unhealthy_upstream_needs_the_healthy_threshold_of_passes_in_a_row() -> None:
    verdicts = run(CheckState(2, 3), [False, True, False, True, True])
    assert verdicts == [False, False, False, False, True]


def test_an_upstream_that_is_not_healthy_is_probed_at_most_one_interval_after_the_last_probe() -> (
    None
):
    state = CheckState(2, 3)
    for i in range(40):
        state.record(False, "refused", float(i))
        assert [state.next_delay(1.0, j) for j in (-1.0, 0.0, 1.0)] == [0.9, 1.0, 1.0]
    state.record(True, "ok", 41.0)
    assert state.healthy is False  # 1 of 2 passing: still probed at most an interval apart
    assert state.next_delay(1.0, 1.0) == 1.0
    assert state.describe() == "refused, then 1 of 2 passing checks in a row"
    state.record(True, "ok", 42.0)
    assert state.healthy is True
    assert [state.next_delay(1.0, j) for j in (-1.0, 1.0)] == [0.9, 1.1]  # ±10% jitter


def test_a_pending_upstream_is_probed_at_most_one_interval_apart() -> None:
    assert CheckState(2, 3).next_delay(2.0, 1.0) == 2.0


def test_a_check_that_could_not_run_for_a_local_error_changes_no_verdict_and_no_count() -> None:
    state = CheckState(2, 1)
    state.record(True, "ok", 0.0)
    first = [state.record_local("GET /health: local error EMFILE") for _ in range(5)]
    assert first == [True, False, False, False, False]  # logged once per run
    assert (state.healthy, state.failures, state.failed, state.local_errors) == (True, 0, 0, 5)
    state.record(False, "GET /health → 500", 1.0)  # a real failure still counts
    assert state.healthy is False and state.local_streak == 0
    assert state.record_local("GET /health: local error ENOBUFS") is True
    assert (state.failures, state.successes) == (1, 0)
    assert CheckState(2, 3).describe() == "no health check has finished yet"


@given(
    results=st.lists(st.booleans(), min_size=1, max_size=60),
    healthy_threshold=st.integers(1, 5),
    unhealthy_threshold=st.integers(1, 5),
    jitter=st.floats(-1.0, 1.0),
)
def test_verdicts_change_only_at_the_thresholds_and_delays_stay_within_jitter_and_cap(
    results: list[bool], healthy_threshold: int, unhealthy_threshold: int, jitter: float
) -> None:
    state = CheckState(healthy_threshold, unhealthy_threshold)
    before: bool | None = None
    for i, ok in enumerate(results):
        changed = state.record(ok, "x", float(i))
        assert changed == (state.healthy != before)
        if changed and before is not None:
            if state.healthy:
                assert state.successes == healthy_threshold
            else:
                assert state.failures == unhealthy_threshold
        before = state.healthy
        delay = state.next_delay(0.5, jitter)
        assert 0.45 <= delay <= (0.55 if state.healthy else 0.5)


def eject(**kw: float) -> EjectionState:
    return EjectionState(int(kw.get("n", 3)), kw.get("base", 10.0), kw.get("max", 25.0))


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    e = eject()
    assert e.failure("502", 0.0) is None
    assert e.failure("502", 0.1) is None
    e.success()
    assert e.failure("502", 0.2) is None
    assert e.failure("502", 0.3) is None
    assert e.failure("502", 0.4) == 10.0
    assert e.ejected(5.0) and not e.ejected(10.4)
    assert e.ejections == 1


def test_failures_of_requests_finishing_during_an_ejection_do_not_extend_it() -> None:
    e = eject(n=1)
    assert e.failure("500", 0.0) == 10.0
    assert e.failure("500", 3.0) is None
    assert e.ejected_until == 10.0


def test_the_cool_down_grows_on_repeat_up_to_the_maximum_and_is_forgiven_over_time() -> None:
    e = eject(n=1)
    assert e.failure("500", 0.0) == 10.0  # out until 10
    assert e.failure("500", 11.0) == 20.0  # again soon after: 2 x base, out until 31
    assert e.failure("500", 32.0) == 25.0  # capped at max
    assert e.multiplier == 3
    # 3 base periods in service after the last ejection (ended at 57) forgive 3 steps.
    assert e.failure("500", 57.0 + 30.0) == 10.0
