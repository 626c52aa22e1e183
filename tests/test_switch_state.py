"""The pure switch state: transitions, refusals that name the state, persistence format."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import FrozenInstanceError, fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.errors import InvalidRequest, NotFoundError, SwitchError
from edgeproxy.switching import state as sw
from edgeproxy.switching.state import AppState, StateFormatError

COLORS = ("blue", "green", "red")


def fresh() -> AppState:
    return sw.initial("shop", COLORS, "blue", now=1.0)


def test_a_fresh_app_sends_everything_to_its_active_color() -> None:
    assert sw.weights(fresh()) == {"blue": 100, "green": 0, "red": 0}


def test_setting_a_weight_below_100_makes_the_color_a_candidate() -> None:
    s = sw.set_color(fresh(), "green", 10, now=2.0)
    assert (s.active, s.candidate, s.weight, s.generation, s.changed_at) == (
        "blue",
        "green",
        10,
        1,
        2.0,
    )
    assert sw.weights(s) == {"blue": 90, "green": 10, "red": 0}


def test_setting_weight_100_makes_the_color_active_and_remembers_the_previous_one() -> None:
    s = sw.set_color(sw.set_color(fresh(), "green", 10, 2.0), "green", 100, 3.0)
    assert (s.active, s.candidate, s.weight, s.previous) == ("green", None, 0, "blue")


def test_promote_makes_the_candidate_active_and_the_old_active_previous() -> None:
    s = sw.promote(sw.set_color(fresh(), "green", 25, 2.0), 3.0)
    assert (s.active, s.candidate, s.previous) == ("green", None, "blue")
    assert sw.weights(s)["green"] == 100


def test_promote_without_a_candidate_is_refused_with_a_message_naming_the_app() -> None:
    with pytest.raises(SwitchError, match="cannot promote shop: no candidate color"):
        sw.promote(fresh(), 2.0)


def test_rollback_returns_to_the_previous_color_and_drops_the_candidate() -> None:
    s = sw.promote(sw.set_color(fresh(), "green", 10, 2.0), 3.0)
    s = sw.set_color(s, "red", 5, 4.0)
    s = sw.rollback(s, 5.0)
    assert (s.active, s.candidate, s.weight, s.previous) == ("blue", None, 0, "green")


def test_rollback_without_a_previous_color_is_refused() -> None:
    with pytest.raises(SwitchError, match="cannot roll back shop: no previous color"):
        sw.rollback(fresh(), 2.0)


def test_rollback_to_a_draining_color_cancels_its_drain() -> None:
    s = sw.set_color(fresh(), "green", 100, 2.0)
    s = sw.drain(s, "blue", deadline=100.0, now=3.0)
    s = sw.rollback(s, 4.0)
    assert s.active == "blue"
    assert dict(s.draining) == {}


def test_draining_the_active_color_is_refused() -> None:
    with pytest.raises(SwitchError, match="cannot drain shop/blue: it is the active color"):
        sw.drain(fresh(), "blue", deadline=10.0, now=2.0)


def test_draining_a_candidate_that_still_gets_traffic_is_refused() -> None:
    s = sw.set_color(fresh(), "green", 10, 2.0)
    with pytest.raises(SwitchError, match="candidate with weight 10"):
        sw.drain(s, "green", deadline=10.0, now=3.0)


def test_draining_a_candidate_at_weight_zero_clears_the_candidate() -> None:
    s = sw.drain(sw.set_color(fresh(), "green", 0, 2.0), "green", deadline=10.0, now=3.0)
    assert (s.candidate, dict(s.draining)) == (None, {"green": 10.0})


def test_finish_drain_removes_the_color_and_refuses_a_color_that_is_not_draining() -> None:
    s = sw.drain(sw.set_color(fresh(), "green", 100, 2.0), "blue", deadline=9.0, now=3.0)
    assert dict(sw.finish_drain(s, "blue", 4.0).draining) == {}
    with pytest.raises(SwitchError, match="shop/red: it is not draining"):
        sw.finish_drain(s, "red", 4.0)


def test_setting_the_active_color_below_100_is_refused() -> None:
    with pytest.raises(SwitchError, match="it is the active color"):
        sw.set_color(fresh(), "blue", 50, 2.0)


def test_unknown_colors_and_out_of_range_weights_raise_their_own_errors() -> None:
    with pytest.raises(
        NotFoundError, match=r"unknown color shop/purple \(colors: blue, green, red\)"
    ):
        sw.set_color(fresh(), "purple", 10, 2.0)
    with pytest.raises(InvalidRequest, match="weight: must be between 0 and 100"):
        sw.set_color(fresh(), "green", 101, 2.0)


def test_pause_and_resume_are_refused_when_they_would_change_nothing() -> None:
    s = sw.pause(fresh(), 2.0)
    assert s.paused
    with pytest.raises(SwitchError, match="already paused"):
        sw.pause(s, 3.0)
    assert not sw.resume(s, 3.0).paused
    with pytest.raises(SwitchError, match="not paused"):
        sw.resume(fresh(), 3.0)


def test_the_canary_guard_takes_the_candidate_weight_to_zero_and_records_why() -> None:
    s = sw.guard_trip(sw.set_color(fresh(), "green", 10, 2.0), "error rate 12% > 1%", 3.0)
    assert (s.candidate, s.weight) == ("green", 0)
    assert s.guard == sw.Guard(reason="error rate 12% > 1%", at=3.0)
    assert sw.set_color(s, "green", 10, 4.0).guard is None


def test_the_canary_guard_cannot_trip_when_no_candidate_takes_traffic() -> None:
    with pytest.raises(SwitchError, match="no candidate is taking traffic"):
        sw.guard_trip(fresh(), "whatever", 2.0)


def test_states_are_immutable_values() -> None:
    s = fresh()
    with pytest.raises(FrozenInstanceError):
        s.active = "green"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.draining["blue"] = 1.0  # type: ignore[index]


def test_inconsistent_states_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="active color 'pink'"):
        AppState(app="shop", colors=COLORS, active="pink")
    with pytest.raises(ValueError, match="draining color 'blue'"):
        AppState(app="shop", colors=COLORS, active="blue", draining={"blue": 1.0})


def test_a_state_outside_the_bounds_its_fields_declare_cannot_be_built() -> None:
    for changes, problem in [
        ({"candidate": "green", "weight": 100}, "weight 100 must be between 0 and 99"),
        ({"candidate": "green", "weight": -1}, "weight -1 must be between 0 and 99"),
        ({"generation": -3}, "generation -3 must be at least 0"),
        ({"colors": ()}, "colors must have at least 1 entries"),
    ]:
        with pytest.raises(ValueError, match=problem):
            AppState(**{"app": "shop", "colors": COLORS, "active": "blue", **changes})


def test_the_saved_record_holds_exactly_the_fields_the_state_declares() -> None:
    s = sw.guard_trip(sw.set_color(fresh(), "green", 20, 2.0), "slow", 3.0)
    declared = [f.name for f in fields(AppState) if f.init and f.name != "app"]
    assert [f.name for f in sw.SAVED] == declared
    saved = json.loads(sw.to_json({"shop": s}))["apps"]["shop"]
    assert saved == sw.record(s)
    assert sorted(saved) == sorted(declared)
    assert saved["guard"] == {"reason": "slow", "at": 3.0}


# --- persistence -------------------------------------------------------------------------------


def test_state_survives_a_round_trip_through_json() -> None:
    s = sw.set_color(fresh(), "green", 100, 2.0)
    s = sw.drain(s, "blue", deadline=50.0, now=3.0)
    s = sw.guard_trip(sw.set_color(s, "red", 20, 4.0), "p99 too high", 5.0)
    s = sw.pause(s, 6.0)
    restored = sw.from_json(sw.to_json({"shop": s}))
    assert restored == {"shop": s}
    assert json.loads(sw.to_json({"shop": s}))["version"] == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ("[]", "top level must be an object"),
        ('{"version": 2, "apps": {}}', "unsupported version 2"),
        ('{"version": 1}', "apps: Field required"),
        ('{"version": 1, "apps": {"shop": {"colors": ["blue"], "active": 3}}}', "apps.shop.active"),
        ('{"version": 1, "apps": {"shop": {"colors": ["blue"], "active": "red"}}}', "active color"),
        (
            '{"version": 1, "apps": {"shop": {"colors": ["blue"], "active": "blue", "x": 1}}}',
            "apps.shop.x",
        ),
        (
            '{"version": 1, "apps": {"shop": {"colors": ["blue", "green"], "active": "blue",'
            ' "candidate": "green", "weight": 100}}}',
            "apps.shop.weight",
        ),
    ],
)
def test_malformed_state_files_are_rejected_with_the_place_named(text: str, problem: str) -> None:
    with pytest.raises(StateFormatError, match=problem):
        sw.from_json(text)


# --- properties ------------------------------------------------------------------------------

color_names = st.sampled_from([*COLORS, "purple"])
Step = Callable[[AppState, float], AppState]

steps: st.SearchStrategy[Step] = st.one_of(
    st.builds(
        lambda c, w: lambda s, now: sw.set_color(s, c, w, now),
        color_names,
        st.integers(-5, 105),
    ),
    st.just(sw.promote),
    st.just(sw.rollback),
    st.builds(
        lambda c, d: lambda s, now: sw.drain(s, c, now + d, now),
        color_names,
        st.floats(0, 60),
    ),
    st.builds(lambda c: lambda s, now: sw.finish_drain(s, c, now), color_names),
    st.just(sw.pause),
    st.just(sw.resume),
    st.builds(lambda r: lambda s, now: sw.guard_trip(s, r, now), st.text(max_size=5)),
)


@given(st.lists(steps, max_size=40))
def test_any_sequence_of_transitions_keeps_the_switch_consistent(seq: list[Step]) -> None:
    s = fresh()
    for i, step in enumerate(seq):
        try:
            new = step(s, float(i + 2))
        except SwitchError:
            continue  # a refusal returns nothing; `s` is an immutable value and stays as it was
        assert new.generation == s.generation + 1
        s = new
        shares = sw.weights(s)
        assert sum(shares.values()) == 100
        assert shares[s.active] > 0
        assert [c for c in s.colors if c == s.active] == [s.active]
        assert all(shares[c] == 0 for c in s.draining)
        assert sw.from_json(sw.to_json({"shop": s})) == {"shop": s}


@given(st.lists(steps, max_size=20), steps)
def test_a_refused_transition_leaves_the_state_exactly_as_it_was(
    seq: list[Step], last: Step
) -> None:
    s = fresh()
    for i, step in enumerate(seq):
        try:
            s = step(s, float(i + 2))
        except SwitchError:
            pass
    before = sw.to_json({"shop": s})
    try:
        last(s, 1000.0)
    except SwitchError:
        assert sw.to_json({"shop": s}) == before


@given(
    st.lists(steps, max_size=20),
    st.lists(st.sampled_from([*COLORS, "purple", "teal"]), min_size=1, max_size=4, unique=True),
    st.data(),
)
def test_refitting_to_new_colors_keeps_the_switch_consistent_and_never_lowers_the_generation(
    seq: list[Step], colors: list[str], data: st.DataObject
) -> None:
    s = fresh()
    for i, step in enumerate(seq):
        try:
            s = step(s, float(i + 2))
        except SwitchError:
            pass
    fallback = data.draw(st.sampled_from(colors))
    new = sw.refit(s, tuple(colors), fallback, 1000.0)
    lost = {role for _, role in sw.lost_roles(s, tuple(colors))}
    if tuple(colors) == s.colors:
        assert new is s
    else:
        assert new.generation == s.generation + 1
        assert new.colors == tuple(colors)
    # A role survives when its color does; only a lost active color moves traffic.
    assert new.active == (s.active if "active" not in lost else fallback)
    if s.candidate in colors and s.candidate != new.active:
        assert (new.candidate, new.weight) == (s.candidate, s.weight)
    assert new.paused == s.paused
    assert sum(sw.weights(new).values()) == 100
    assert sw.from_json(sw.to_json({"shop": new})) == {"shop": new}


def test_lost_roles_name_the_active_candidate_and_draining_colors_a_new_config_lacks() -> None:
    s = sw.set_color(fresh(), "green", 100, 2.0)
    s = sw.drain(s, "blue", deadline=50.0, now=3.0)
    s = sw.set_color(s, "red", 10, 4.0)
    assert sw.lost_roles(s, ("blue", "green", "red")) == []
    assert sw.lost_roles(s, ("purple",)) == [
        ("green", "active"),
        ("red", "candidate"),
        ("blue", "draining"),
    ]


@given(st.lists(steps, max_size=30))
def test_restoring_a_file_edgeproxy_wrote_gives_back_every_state_and_sets_nothing_aside(
    seq: list[Step],
) -> None:
    s = fresh()
    for i, step in enumerate(seq):
        try:
            s = step(s, float(i + 2))
        except SwitchError:
            pass
    blog = sw.initial("blog", ("a", "b"), "b", now=3.0)
    restored = sw.restore(sw.to_json({"shop": s, "blog": blog}))
    assert restored.states == {"shop": s, "blog": blog}
    assert (restored.set_aside, restored.problems) == ({}, [])
