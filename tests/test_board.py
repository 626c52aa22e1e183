"""The SwitchBoard: restore at boot, persist-then-swap, health refusals, pause, drains."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeproxy.config import Config
from edgeproxy.errors import ConfigError, NotFoundError, SwitchError, UnhealthyTarget
from edgeproxy.switching import state as sw
from edgeproxy.switching.board import Change, Check, SwitchBoard, Transition
from edgeproxy.switching.state import AppState
from edgeproxy.switching.store import StateFileError, StateStore

MakeConfig = Callable[..., Config]


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.json")


def saved(store: StateStore) -> dict[str, dict[str, object]]:
    apps: dict[str, dict[str, object]] = json.loads(store.path.read_text())["apps"]
    return apps


async def test_a_first_boot_puts_every_app_on_its_default_color_and_saves_it(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green"), blog=("a", "b")), store)
    assert {a: s.active for a, s in board.states.items()} == {"shop": "blue", "blog": "a"}
    assert saved(store)["shop"]["active"] == "blue"


async def test_a_restart_restores_the_saved_state(
    make_config: MakeConfig, store: StateStore
) -> None:
    config = make_config(shop=("blue", "green"))
    board = SwitchBoard.load(config, store)
    await board.set("shop", "green", 25)
    await board.pause("shop")
    again = SwitchBoard.load(config, store)
    assert again.states == board.states
    assert (again.states["shop"].candidate, again.states["shop"].weight) == ("green", 25)


async def test_a_corrupt_state_file_is_moved_aside_and_apps_start_on_defaults(
    make_config: MakeConfig, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.path.write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="edgeproxy.state"):
        board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    assert board.states["shop"] == sw.initial(
        "shop", ("blue", "green"), "blue", board.states["shop"].changed_at
    )
    aside = [p for p in store.path.parent.iterdir() if p.name.startswith("state.json.corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_text() == "{not json"
    assert "not valid JSON" in caplog.text
    assert str(aside[0]) in caplog.text
    assert saved(store)["shop"]["active"] == "blue"


async def test_saved_apps_and_colors_that_left_the_config_are_dropped_with_warnings(
    make_config: MakeConfig, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    old = SwitchBoard.load(make_config(shop=("blue", "green", "red"), gone=("x",)), store)
    await old.set("shop", "red", 100)
    await old.set("shop", "green", 10)
    await old.set("shop", "blue", 100)  # previous: red, candidate dropped
    await old.set("shop", "red", 20)
    with caplog.at_level(logging.WARNING, logger="edgeproxy.state"):
        board = SwitchBoard.load(make_config(shop=("blue", "green"), new=("a", "b")), store)
    shop = board.states["shop"]
    assert (shop.active, shop.candidate, shop.weight, shop.colors) == (
        "blue",
        None,
        0,
        ("blue", "green"),
    )
    assert board.states["new"].active == "a"
    assert "gone" not in board.states
    assert "'gone': it is no longer in the config" in caplog.text
    assert "no longer configured: red" in caplog.text


async def test_every_mutation_is_persisted_before_it_is_visible(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    seen: list[tuple[int, int]] = []

    def listener(app: str, old: AppState, new: AppState) -> None:
        generation = saved(store)["shop"]["generation"]
        assert isinstance(generation, int)
        seen.append((new.generation, generation))

    board.add_listener(listener)
    await board.set("shop", "green", 10)
    await board.promote("shop")
    await board.drain("shop", "blue", seconds=60)
    await board.rollback("shop")
    await board.pause("shop")
    await board.resume("shop")
    await board.set("shop", "green", 5)
    await board.guard_trip("shop", "too many 5xx")
    assert [new for new, _ in seen] == list(range(1, 9))
    assert all(new == on_disk for new, on_disk in seen)
    assert saved(store)["shop"]["guard"] == {
        "reason": "too many 5xx",
        "at": pytest.approx(0, abs=1e10),
    }


async def test_when_the_state_cannot_be_saved_nothing_changes(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    calls: list[str] = []
    board.add_listener(lambda app, old, new: calls.append(app))
    before = board.states
    store.path.unlink()
    store.path.mkdir()
    with pytest.raises(StateFileError):
        await board.set("shop", "green", 100)
    assert board.states is before
    assert calls == []


async def test_switching_to_an_unhealthy_color_is_refused_unless_forced(
    make_config: MakeConfig, store: StateStore
) -> None:
    def health(app: str, color: str) -> tuple[bool, list[str]]:
        if color == "green":
            return False, ["GET /health: 503 (3 in a row)"]
        return True, []

    board = SwitchBoard.load(make_config(shop=("blue", "green")), store, health=health)
    with pytest.raises(
        UnhealthyTarget, match=r"cannot set shop: green is unhealthy \(GET /health: 503"
    ):
        await board.set("shop", "green", 10)
    await board.set("shop", "green", 0)  # no traffic: allowed
    with pytest.raises(UnhealthyTarget, match="cannot promote shop: green is unhealthy"):
        await board.promote("shop")
    await board.promote("shop", force=True)
    assert board.states["shop"].active == "green"
    await board.rollback("shop")  # blue is healthy
    assert board.states["shop"].active == "blue"


async def test_unknown_apps_and_colors_raise_not_found(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    with pytest.raises(NotFoundError, match=r"unknown app 'blog' \(apps: shop\)"):
        await board.pause("blog")
    with pytest.raises(NotFoundError, match="unknown color shop/red"):
        await board.drain("shop", "red")
    with pytest.raises(NotFoundError):
        board.view("blog")


async def test_paused_requests_are_released_in_arrival_order_on_resume(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    assert await board.wait_unpaused("shop", timeout=0.01)
    await board.pause("shop")
    order: list[int] = []

    async def request(i: int) -> None:
        assert await board.wait_unpaused("shop", timeout=30)
        order.append(i)

    tasks = []
    for i in range(10):
        tasks.append(asyncio.create_task(request(i)))
        await asyncio.sleep(0)  # let it queue before the next one arrives
    assert order == []
    await board.resume("shop")
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_a_paused_request_gives_up_after_its_timeout(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    await board.pause("shop")
    assert not await board.wait_unpaused("shop", timeout=0.05)
    await board.resume("shop")  # nothing left queued for the one that gave up
    assert await board.wait_unpaused("shop", timeout=0.05)


async def test_the_supervisor_finishes_a_drain_when_nothing_is_left_in_flight(
    make_config: MakeConfig, store: StateStore
) -> None:
    inflight = {"blue": (2, 1)}
    cut: list[str] = []
    board = SwitchBoard.load(
        make_config(shop=("blue", "green")),
        store,
        inflight=lambda app, color: inflight.get(color, (0, 0)),
        cut=lambda app, color: cut.append(color),
        drain_poll=0.01,
    )
    finished = asyncio.Event()
    board.add_listener(
        lambda app, old, new: finished.set() if old.draining and not new.draining else None
    )
    board.start()
    try:
        await board.set("shop", "green", 100)
        await board.drain("shop", "blue", seconds=3600)
        await asyncio.sleep(0.05)
        assert "blue" in board.states["shop"].draining
        inflight["blue"] = (0, 0)
        board.poke()
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        await board.stop()
    assert cut == []
    assert "blue" not in saved(store)["shop"]["draining"]  # type: ignore[operator]


async def test_the_supervisor_cuts_what_is_left_at_the_deadline(
    make_config: MakeConfig, store: StateStore
) -> None:
    cut: list[tuple[str, str]] = []
    board = SwitchBoard.load(
        make_config(shop=("blue", "green")),
        store,
        inflight=lambda app, color: (1, 0) if color == "blue" else (0, 0),
        cut=lambda app, color: cut.append((app, color)),
        drain_poll=0.01,
    )
    finished = asyncio.Event()
    board.add_listener(lambda app, old, new: finished.set() if old.draining else None)
    board.start()
    try:
        await board.set("shop", "green", 100)
        await board.drain("shop", "blue", seconds=0.1)
        await asyncio.wait_for(finished.wait(), 10)
    finally:
        await board.stop()
    assert cut == [("shop", "blue")]
    assert not board.states["shop"].draining


async def test_a_failing_listener_does_not_undo_a_change(
    make_config: MakeConfig, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)

    def broken(app: str, old: AppState, new: AppState) -> None:
        raise RuntimeError("boom")

    board.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="edgeproxy.state"):
        await board.set("shop", "green", 100)
    assert board.states["shop"].active == "green"
    assert "switch listener" in caplog.text


async def test_the_view_merges_weights_health_in_flight_and_stats(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(
        make_config(shop=("blue", "green")),
        store,
        health=lambda app, color: (color == "blue", [] if color == "blue" else ["refused"]),
        inflight=lambda app, color: (3, 1) if color == "blue" else (0, 0),
        color_stats=lambda app, color: {"requests": 10, "p99_ms": 2.5},
    )
    await board.set("shop", "green", 0, force=True)
    view = board.view("shop")
    assert view["weights"] == {"blue": 100, "green": 0}
    assert (view["active"], view["candidate"], view["weight"], view["generation"]) == (
        "blue",
        "green",
        0,
        1,
    )
    assert view["colors"]["blue"] == {
        "weight": 100,
        "in_flight": 3,
        "tunnels": 1,
        "healthy": True,
        "failing_checks": [],
        "requests": 10,
        "p99_ms": 2.5,
    }
    assert view["colors"]["green"]["failing_checks"] == ["refused"]


async def test_refused_transitions_surface_as_switch_errors(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    with pytest.raises(SwitchError, match="cannot drain shop/blue: it is the active color"):
        await board.drain("shop", "blue")
    assert board.states["shop"].generation == 0


async def test_a_waiter_that_gave_up_does_not_hold_back_the_ones_behind_it(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    await board.pause("shop")
    released: list[str] = []

    async def request(name: str, patience: float) -> bool:
        ok = await board.wait_unpaused("shop", timeout=patience)
        released.append(name)
        return ok

    first = asyncio.create_task(request("first", 30))
    await asyncio.sleep(0)
    assert not await request("impatient", 0.01)
    last = asyncio.create_task(request("last", 30))
    await asyncio.sleep(0)
    await board.resume("shop")
    assert await first
    assert await last
    assert released == ["impatient", "first", "last"]


async def test_a_config_reload_that_drops_a_color_in_use_is_refused_naming_the_color_and_what_to_do(
    make_config: MakeConfig, store: StateStore
) -> None:
    config = make_config(shop=("blue", "green", "red"), blog=("a", "b"))
    board = SwitchBoard.load(config, store)
    await board.set("shop", "green", 100)
    await board.drain("shop", "blue", seconds=600)
    await board.set("shop", "red", 10)
    before, on_disk = board.states, store.path.read_text()
    with pytest.raises(ConfigError) as refused:
        await board.reconfigure(make_config(shop=("purple",), blog=("a", "b")))
    assert refused.value.problems == [
        "config reload would drop green, which is active for app shop: "
        "`switchctl --app shop set purple` first, or reload with --force",
        "config reload would drop red, the canary candidate of app shop (10%): "
        "`switchctl --app shop set green` first (ends the canary), or reload with --force",
        "config reload would drop blue, which is draining for app shop: "
        "wait until its drain ends (`switchctl --app shop status`), or reload with --force",
    ]
    assert board.states is before
    assert board.config is config
    assert store.path.read_text() == on_disk


async def test_a_forced_reload_that_drops_the_active_color_is_health_checked_and_raises_the_generation(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    for color in ("green", "blue", "green"):
        await board.set("shop", color, 100)
    await board.set("shop", "blue", 0)
    green = board.states["shop"]
    assert (green.active, green.generation) == ("green", 4)
    seen: list[tuple[str, str]] = []
    board.add_listener(lambda app, old, new: seen.append((old.summary(), new.summary())))

    async def unhealthy(app: str, color: str) -> tuple[bool, list[str]]:
        return False, ["http://127.0.0.1:9: GET /health → 503"]

    async def healthy(app: str, color: str) -> tuple[bool, list[str]]:
        return True, []

    only_blue = make_config(shop=("blue",))
    with pytest.raises(ConfigError, match=r"cannot reload the config for shop: blue is unhealthy"):
        await board.reconfigure(only_blue, force=True, health=unhealthy)
    assert board.states["shop"] is green
    assert seen == []
    changes = await board.reconfigure(only_blue, force=True, health=healthy)
    blue = board.states["shop"]
    assert (blue.active, blue.candidate, blue.generation) == ("blue", None, 5)
    assert changes == {"shop": (green, blue)}
    assert board.replaced("shop") is green
    assert seen == [("active=green candidate=blue@0 gen=4", "active=blue gen=5")]
    assert saved(store)["shop"]["generation"] == 5
    # Green configured again: a new color list, the same switch, the generation still rises.
    await board.reconfigure(make_config(shop=("blue", "green")))
    assert (board.states["shop"].active, board.states["shop"].generation) == ("blue", 6)
    # A reload that changes nothing changes no state.
    assert await board.reconfigure(make_config(shop=("blue", "green"))) == {}
    assert board.states["shop"].generation == 6


def record(colors: list[str], active: str, generation: int, **more: object) -> dict[str, object]:
    return {"colors": colors, "active": active, "generation": generation, **more}


async def test_a_partly_invalid_state_file_restores_every_valid_record_and_sets_aside_the_rest(
    make_config: MakeConfig, store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    text = json.dumps(
        {
            "version": 1,
            "apps": {
                "shop": record(["blue", "green"], "green", 4, previous="blue"),
                "blog": record(["a", "b"], "b", 3, candidate="purple", weight=10),
                "wiki": record(["x", "y"], "nope", 7),
            },
        }
    )
    store.path.write_text(text)
    config = make_config(shop=("blue", "green"), blog=("a", "b"), wiki=("x", "y"))
    with caplog.at_level(logging.ERROR, logger="edgeproxy.state"):
        board = SwitchBoard.load(config, store)
    shop, blog, wiki = (board.states[a] for a in ("shop", "blog", "wiki"))
    assert (shop.active, shop.previous, shop.generation) == ("green", "blue", 4)
    assert (blog.active, blog.candidate, blog.weight, blog.generation) == ("b", None, 0, 3)
    assert (wiki.active, wiki.generation) == ("x", 8)  # default color; the generation goes up
    assert board.set_aside["blog"] == [
        "candidate 'purple' (weight 10) set aside: it is not one of its colors ['a', 'b'] "
        "other than the active one"
    ]
    assert board.set_aside["wiki"] == [
        "the saved record is not usable: active color 'nope' is not one of its colors "
        "['x', 'y']; started on x"
    ]
    assert "shop" not in board.set_aside
    assert board.view("shop")["set_aside"] == []
    assert board.view("blog")["set_aside"] == board.set_aside["blog"]
    copy = board.set_aside_copy
    assert copy is not None and copy.name.startswith("state.json.rejected-")
    assert copy.read_text() == text
    assert board.view("wiki")["set_aside_copy"] == str(copy)
    assert "app blog: candidate 'purple'" in caplog.text
    assert "app wiki: the saved record is not usable" in caplog.text
    assert str(copy) in caplog.text
    assert saved(store)["shop"]["active"] == "green"


async def test_a_state_file_of_a_future_version_restores_what_it_can_read_and_says_so(
    make_config: MakeConfig, store: StateStore
) -> None:
    store.path.write_text(
        json.dumps(
            {
                "version": 2,
                "apps": {"shop": record(["blue", "green"], "green", 9, sticky_salt="x1")},
            }
        )
    )
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    shop = board.states["shop"]
    assert (shop.active, shop.generation) == ("green", 9)
    assert board.set_aside["shop"] == [
        "the file has version 2 and this edgeproxy writes version 1: each app's record "
        "was read by version 1's rules",
        "unknown field sticky_salt (set aside)",
    ]
    assert board.set_aside_copy is not None and board.set_aside_copy.exists()


async def test_a_saved_color_the_config_no_longer_has_is_reported_as_set_aside(
    make_config: MakeConfig, store: StateStore
) -> None:
    old = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    await old.set("shop", "green", 100)
    board = SwitchBoard.load(make_config(shop=("blue",)), store)
    assert (board.states["shop"].active, board.states["shop"].generation) == ("blue", 2)
    assert board.set_aside["shop"] == [
        "saved active color 'green' is not in the config (now: active=blue gen=2)"
    ]


async def test_every_change_a_verb_or_a_config_reload_takes_the_one_locked_path(
    make_config: MakeConfig, store: StateStore
) -> None:
    taken: list[list[str]] = []

    class Recording(SwitchBoard):
        async def _apply(
            self, transition: Transition, check: Check | None = None, config: Config | None = None
        ) -> dict[str, Change]:
            changes = await super()._apply(transition, check, config)
            taken.append(sorted(changes))
            return changes

    board = Recording.load(make_config(shop=("blue", "green"), blog=("a", "b")), store)
    seen: list[tuple[str, int]] = []
    board.add_listener(lambda app, old, new: seen.append((app, new.generation)))
    await board.set("shop", "green", 10)
    await board.pause("blog")
    await board.reconfigure(make_config(shop=("blue", "green", "red"), blog=("a", "b")))
    assert taken == [["shop"], ["blog"], ["shop"]]
    assert seen == [("shop", 1), ("blog", 1), ("shop", 2)]
    assert saved(store)["shop"]["colors"] == ["blue", "green", "red"]
    assert board.config.apps["shop"].colors.keys() == {"blue", "green", "red"}


async def test_the_view_shows_every_saved_field_of_the_state_and_what_the_view_adds(
    make_config: MakeConfig, store: StateStore
) -> None:
    board = SwitchBoard.load(make_config(shop=("blue", "green")), store)
    await board.set("shop", "green", 30)
    await board.pause("shop")
    view = board.view("shop")
    record = sw.record(board.states["shop"])
    reshaped = {"colors", "draining"}  # per-color details, deadlines as objects
    assert {k: view[k] for k in record if k not in reshaped} == {
        k: v for k, v in record.items() if k not in reshaped
    }
    assert set(view) == {*record, "app", "weights", "set_aside", "set_aside_copy"}
    assert set(view["colors"]) == set(record["colors"])
