"""The state file: atomic 0600 writes, clear errors for corrupt content."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from edgeproxy.switching import state as sw
from edgeproxy.switching.store import CorruptStateFile, StateFileError, StateStore

SHOP = sw.set_color(sw.initial("shop", ("blue", "green"), "blue"), "green", 10, 5.0)


def test_saved_state_is_read_back_and_the_file_is_private(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "lib" / "state.json")
    store.save({"shop": SHOP})
    assert store.load() == {"shop": SHOP}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert json.loads(store.path.read_text())["apps"]["shop"]["weight"] == 10


def test_repeated_saves_leave_only_the_state_file_behind(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    s = SHOP
    for i in range(20):
        s = sw.set_color(s, "green", i, float(i))
        store.save({"shop": s})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert store.load() == {"shop": s}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.save({"shop": SHOP})
    before = store.path.read_bytes()
    store.path.unlink()
    store.path.mkdir()  # rename onto a directory fails after the temp file was written
    (store.path / "keep").write_text("x")
    with pytest.raises(StateFileError, match="nothing was changed"):
        store.save({"shop": sw.promote(SHOP, 6.0)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    store.path.joinpath("keep").unlink()
    store.path.rmdir()
    store.path.write_bytes(before)
    assert store.load() == {"shop": SHOP}


def test_no_state_file_yet_loads_as_none(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state.json").load() is None


def test_corrupt_content_raises_an_error_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.path.write_text('{"version": 1, "apps": {"shop": {"active": "blue"}}}')
    with pytest.raises(CorruptStateFile, match=r"state\.json: apps\.shop\.colors"):
        store.load()


def test_quarantine_moves_the_file_aside_with_a_timestamp(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    store.path.write_text("garbage")
    moved = store.quarantine(now=0.0)
    assert moved == tmp_path / "state.json.corrupt-19700101T000000Z"
    assert moved.read_text() == "garbage"
    assert not store.path.exists()


def test_a_state_file_written_by_the_code_before_issue_15_loads_and_is_written_back_unchanged(
    tmp_path: Path,
) -> None:
    # Written by main at 09f40e9 (the hand-written record) from these very states.
    old = Path(__file__).parent / "data" / "state-written-by-09f40e9.json"
    store = StateStore(tmp_path / "state.json")
    store.path.write_bytes(old.read_bytes())
    shop = sw.AppState(
        app="shop",
        colors=("blue", "green", "red"),
        active="green",
        candidate="red",
        weight=0,
        previous="blue",
        draining={"blue": 1700000100.0},
        paused=True,
        generation=5,
        changed_at=1700000040.0,
        guard=sw.Guard(reason="error rate 7.1% over 5%", at=1700000030.25),
    )
    blog = sw.initial("blog", ("a", "b"), "b", now=1700000000.0, released=False)
    wiki = sw.AppState(
        app="wiki",
        colors=("x", "y"),
        active="y",
        candidate="x",
        weight=35,
        generation=1,
        changed_at=1700000050.0,
    )
    expected = {"shop": shop, "blog": blog, "wiki": wiki}
    assert store.load() == expected
    restored = store.restore()
    assert restored is not None
    assert (restored.states, restored.set_aside, restored.problems) == (expected, {}, [])
    store.save(expected)
    assert store.path.read_text() == old.read_text()
