"""The release history file."""

from __future__ import annotations

import json
from pathlib import Path

from switchctl.deploy.history import History, Release, new_release_id


def rel(i: str, outcome: str = "success", at: float = 0) -> Release:
    return Release.model_validate(
        {
            "id": i,
            "app": "shop",
            "image": f"shop:{i}",
            "color": "blue",
            "started_at": at,
            "outcome": outcome,
        }
    )


def test_releases_are_recorded_replaced_by_id_and_kept_in_start_order(tmp_path: Path) -> None:
    h = History(tmp_path / "shop" / "releases.json")
    h.record(rel("b", "running", at=2))
    h.record(rel("a", at=1))
    h.record(rel("b", "failed", at=2))
    assert [(r.id, r.outcome) for r in h.load()] == [("a", "success"), ("b", "failed")]
    assert json.loads(h.path.read_text())["version"] == 1
    assert h.last_success() == h.get("a")


def test_retained_releases_are_the_newest_successful_ones(tmp_path: Path) -> None:
    h = History(tmp_path / "releases.json")
    for n in range(6):
        h.record(rel(f"r{n}", "success" if n != 4 else "rolled_back", at=n))
    assert [r.id for r in h.retained(3)] == ["r2", "r3", "r5"]


def test_release_ids_sort_by_time_and_carry_the_short_ref() -> None:
    assert new_release_id("ab12cd34ef56aa", now=0) == "19700101T000000-ab12cd34ef56"
    assert new_release_id(None, now=0) == "19700101T000000"
    assert new_release_id("v1.2/x", now=0) == "19700101T000000-v12x"
