"""The switch's one decision per request (`switching/decide.py`): serve, hold or refuse.

Driven over a real SwitchBoard and a real ProxyContext (the `Fitness` the
decision asks); only the health verdicts are set by hand (`Unfit.colors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.config import Config
from edgeproxy.proxy.context import ProxyContext
from edgeproxy.proxy.upstream import UpstreamPool
from edgeproxy.switching.board import SwitchBoard
from edgeproxy.switching.decide import HOLD, REFUSE, SERVE, Decision, Fitness, Picker
from edgeproxy.switching.store import StateStore

VISITOR = "203.0.113.7"
TESTER = "127.0.0.1"


class Unfit:
    """The health verdicts of a real ProxyContext: colors listed here have no fit upstream."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.colors: set[str] = set()
        ctx.health_ok = self.ok

    def ok(self, pool: UpstreamPool) -> bool:
        return not any(pool in self.ctx.colors[("shop", c)].pools for c in self.colors)


def config(**app: Any) -> Config:
    return Config.model_validate(
        {
            "apps": {
                "shop": {
                    "colors": {
                        c: {"upstreams": [f"http://127.0.0.1:{port}"]}
                        for c, port in (("blue", 9), ("green", 10), ("red", 11))
                    },
                    **app,
                }
            }
        }
    )


Decide = Callable[..., Decision]


@pytest.fixture
def switch(tmp_path: Path) -> Callable[..., tuple[SwitchBoard, Unfit, Decide]]:
    def build(**app: Any) -> tuple[SwitchBoard, Unfit, Decide]:
        cfg = config(**app)
        board = SwitchBoard.load(cfg, StateStore(tmp_path / "state.json"))
        ctx = ProxyContext(cfg)
        unfit = Unfit(ctx)
        picker = Picker(cfg, board, ctx)

        def decide(
            ip: str = VISITOR,
            *,
            override: bytes | None = None,
            cookie: bytes | None = None,
            headers: list[tuple[bytes, bytes]] | None = None,
            tls: bool = False,
        ) -> Decision:
            return picker.decide("shop", override, cookie, ip, ip.encode(), headers or [], tls)

        return board, unfit, decide

    return build


Switch = Callable[..., tuple[SwitchBoard, Unfit, Decide]]


async def test_without_a_canary_every_request_is_served_by_the_active_color_with_one_shared_decision(
    switch: Switch,
) -> None:
    board, _, decide = switch()
    first, second = decide(), decide("198.51.100.1", cookie=b"a=b")
    assert (first.action, first.color, first.set_cookie, first.override) == (
        SERVE,
        "blue",
        None,
        None,
    )
    assert second is first  # nothing allocated per request on the common path
    await board.set("shop", "green", 100)
    assert decide().color == "green"


async def test_a_paused_app_holds_every_request_even_a_testers(switch: Switch) -> None:
    board, _, decide = switch()
    await board.pause("shop")
    assert decide().action == HOLD
    held = decide(TESTER, override=b"green")
    assert (held.action, held.color, held.override) == (HOLD, None, "green")


async def test_an_app_never_released_refuses_visitors_and_serves_a_tester_the_color_asked(
    switch: Switch,
) -> None:
    _, _, decide = switch(first_release="hold")
    refused = decide()
    assert (refused.action, refused.color, refused.retry_after) == (REFUSE, None, b"30")
    assert "not released yet" in refused.why
    tester = decide(TESTER, override=b"Green ")
    assert (tester.action, tester.color, tester.override) == (SERVE, "green", "green")


async def test_an_override_counts_only_from_allow_from_networks_and_by_header_or_cookie(
    switch: Switch,
) -> None:
    _, _, decide = switch()
    assert decide(VISITOR, override=b"green").color == "blue"
    assert decide(VISITOR, override=b"green").override is None
    assert decide(TESTER, override=b"green").color == "green"
    by_cookie = decide(TESTER, cookie=b"x=1; edgeproxy_color=red")
    assert (by_cookie.color, by_cookie.override) == ("red", "red")
    assert decide(TESTER, cookie=b"xedgeproxy_color=red").color == "blue"  # another cookie


async def test_an_override_for_a_draining_unknown_or_unfit_color_is_refused_never_served_elsewhere(
    switch: Switch,
) -> None:
    board, unfit, decide = switch()
    await board.set("shop", "green", 100)
    await board.drain("shop", "blue")
    for asked, why in [
        (b"blue", "it is not a color of this app, or it is draining"),
        (b"purple", "it is not a color of this app, or it is draining"),
    ]:
        d = decide(TESTER, override=asked)
        assert (d.action, d.color, d.override) == (REFUSE, "green", asked.decode())
        assert d.why == f"the override asks for {asked.decode()}, but {why}"
    unfit.colors.add("red")
    d = decide(TESTER, override=b"red")
    assert (d.action, d.why) == (
        REFUSE,
        "the override asks for red, but red has no healthy upstream",
    )


async def test_a_canary_visitor_gets_a_sticky_cookie_secure_over_tls_and_keeps_its_bucket(
    switch: Switch,
) -> None:
    board, _, decide = switch()
    await board.set("shop", "green", 50)
    decisions = [decide(f"192.0.2.{i}", tls=True) for i in range(40)]
    assert {d.color for d in decisions} == {"blue", "green"}
    for d in decisions:
        assert d.set_cookie is not None
        assert d.set_cookie.startswith(b"edgeproxy_canary=%s." % d.color.encode())  # type: ignore[union-attr]
        assert d.set_cookie.endswith(b"SameSite=Lax; Secure")
    assert decide(tls=False).set_cookie.endswith(b"SameSite=Lax")  # type: ignore[union-attr]
    kept = decide("198.51.100.200", cookie=b"edgeproxy_canary=green.10")
    assert (kept.color, kept.set_cookie) == ("green", None)


async def test_canary_key_header_puts_the_same_shopper_in_the_same_bucket_from_any_address(
    switch: Switch,
) -> None:
    board, _, decide = switch(canary_key="header:X-Shopper-Id")
    await board.set("shop", "green", 50)
    colors = {decide(f"192.0.2.{i}", headers=[(b"x-shopper-id", b"s-42")]).color for i in range(30)}
    assert len(colors) == 1


async def test_canary_key_request_sets_no_cookie(switch: Switch) -> None:
    board, _, decide = switch(canary_key="request")
    await board.set("shop", "green", 50)
    decisions = [decide() for _ in range(60)]
    assert {d.color for d in decisions} == {"blue", "green"}
    assert {d.set_cookie for d in decisions} == {None}


async def test_an_unfit_canary_sends_its_visitors_to_the_active_color_keeping_their_cookie(
    switch: Switch,
) -> None:
    board, unfit, decide = switch()
    await board.set("shop", "green", 99)
    unfit.colors.add("green")
    d = decide(cookie=b"edgeproxy_canary=green.10")
    assert (d.action, d.color, d.panic) == (SERVE, "blue", False)
    fresh = decide("192.0.2.99")
    assert (fresh.color, fresh.panic) == ("blue", False)
    assert fresh.set_cookie is not None and fresh.set_cookie.startswith(b"edgeproxy_canary=green.")


@pytest.mark.parametrize(
    ("when_all_down", "action", "panic"), [("route", SERVE, True), ("refuse", REFUSE, False)]
)
async def test_with_no_fit_color_when_all_down_routes_to_the_active_color_anyway_or_refuses(
    switch: Switch, when_all_down: str, action: int, panic: bool
) -> None:
    board, unfit, decide = switch(when_all_down=when_all_down)
    unfit.colors.update({"blue", "green"})
    plain = decide()
    assert (plain.action, plain.color, plain.panic) == (action, "blue", panic)
    await board.set("shop", "green", 99)
    canary = decide(cookie=b"edgeproxy_canary=green.10")
    assert (canary.action, canary.panic) == (action, panic)
    assert canary.color == ("blue" if panic else "green")
    if not panic:
        assert (canary.why, canary.retry_after) == (
            "no healthy upstream for this app right now",
            b"5",
        )


@given(st.integers(1, 98), st.integers(1, 98), st.integers(0, 10_000))
def test_a_visitor_on_the_candidate_stays_there_when_the_weight_rises(
    tmp_path_factory: pytest.TempPathFactory, low: int, rise: int, visitor: int
) -> None:
    high = min(99, low + rise)
    cfg = config()

    async def run() -> tuple[str | None, str | None]:
        board = SwitchBoard.load(cfg, StateStore(tmp_path_factory.mktemp("s") / "state.json"))
        picker = Picker(cfg, board, Fitness())
        ip = f"10.{visitor >> 8}.{visitor & 255}.1"
        await board.set("shop", "green", low)
        before = picker.decide("shop", None, None, ip, ip.encode(), [], False)
        await board.set("shop", "green", high)
        after = picker.decide("shop", None, None, ip, ip.encode(), [], False)
        return before.color, after.color

    before, after = asyncio.run(run())
    if before == "green":
        assert after == "green"
