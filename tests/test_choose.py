"""Choosing a color per request: override → sticky cookie → stable weighted hash."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.switching import state as sw
from edgeproxy.switching.choose import bucket_of, choose, cookie_value, parse_cookie
from edgeproxy.switching.state import AppState

COLORS = ("blue", "green", "red")


def canary(weight: int) -> AppState:
    return sw.set_color(sw.initial("shop", COLORS, "blue"), "green", weight, 1.0)


def pick(s: AppState, key: bytes, *, override: str | None = None, sticky: str | None = None) -> str:
    return choose(s, override=override, sticky=sticky, client_key=key)[0]


def test_without_a_candidate_every_request_goes_to_the_active_color_and_no_cookie_is_set() -> None:
    s = sw.initial("shop", COLORS, "blue")
    assert {choose(s, override=None, sticky=None, client_key=b"%d" % i) for i in range(200)} == {
        ("blue", None)
    }


def test_a_candidate_at_weight_zero_gets_nothing() -> None:
    assert {pick(canary(0), b"%d" % i) for i in range(500)} == {"blue"}


def test_weight_10_sends_about_10_percent_of_distinct_clients_to_the_candidate() -> None:
    s = canary(10)
    on_candidate = sum(pick(s, f"203.0.113.{i}:{i * 7}".encode()) == "green" for i in range(10_000))
    assert 900 <= on_candidate <= 1100


def test_a_tester_override_wins_when_it_names_a_configured_color() -> None:
    assert choose(canary(10), override="red", sticky=None, client_key=b"x") == ("red", None)
    assert pick(sw.initial("shop", COLORS, "blue"), b"x", override="purple") == "blue"


def test_a_draining_color_is_never_chosen_even_by_override() -> None:
    s = sw.drain(sw.set_color(sw.initial("shop", COLORS, "blue"), "green", 100, 1.0), "blue", 9, 2)
    assert pick(s, b"x", override="blue") == "green"


def test_the_first_canary_choice_sets_a_cookie_with_color_and_bucket() -> None:
    key = b"198.51.100.7"
    color, cookie = choose(canary(30), override=None, sticky=None, client_key=key)
    assert cookie == cookie_value(color, bucket_of(key))
    assert parse_cookie(cookie) == (color, bucket_of(key))


def test_the_sticky_cookie_keeps_the_visitor_on_its_bucket_when_its_address_changes() -> None:
    s = canary(50)
    # bucket 10 is on the candidate at weight 50 whatever the client's address hashes to
    assert {
        choose(s, override=None, sticky="green.10", client_key=b"%d" % i) for i in range(100)
    } == {("green", None)}
    assert choose(s, override=None, sticky="blue.9000", client_key=b"1") == ("blue", None)


def test_a_visitor_moves_to_the_candidate_as_weight_rises_and_gets_a_new_cookie() -> None:
    assert choose(canary(10), override=None, sticky="blue.1500", client_key=b"1") == ("blue", None)
    assert choose(canary(20), override=None, sticky="blue.1500", client_key=b"1") == (
        "green",
        "green.1500",
    )


def test_a_cookie_for_a_color_without_traffic_or_a_garbled_cookie_is_ignored() -> None:
    key = b"192.0.2.1"
    fresh = choose(canary(40), override=None, sticky=None, client_key=key)
    for cookie in ("red.10", "green.abc", "green.123456", "nonsense", ".5", ""):
        assert choose(canary(40), override=None, sticky=cookie, client_key=key) == fresh


@given(st.binary(min_size=1, max_size=32), st.integers(0, 99), st.integers(0, 99))
def test_a_client_on_the_candidate_stays_there_when_the_weight_rises(
    key: bytes, w1: int, w2: int
) -> None:
    low, high = sorted((w1, w2))
    if pick(canary(low), key) == "green":
        assert pick(canary(high), key) == "green"


@given(st.binary(max_size=32), st.integers(0, 99), st.integers(0, 9999))
def test_following_the_returned_cookie_gives_the_same_color_again(
    key: bytes, weight: int, bucket: int
) -> None:
    s = canary(weight)
    color, cookie = choose(s, override=None, sticky=f"blue.{bucket}", client_key=key)
    next_cookie = cookie or f"blue.{bucket}"
    assert choose(s, override=None, sticky=next_cookie, client_key=key)[0] == color


@given(st.binary(max_size=32), st.integers(0, 100))
def test_a_per_request_key_picks_the_same_color_as_a_kept_key_but_never_sets_a_cookie(
    key: bytes, weight: int
) -> None:
    s = canary(weight)
    kept = choose(s, override=None, sticky=None, client_key=key)
    assert choose(s, override=None, sticky=None, client_key=key, keep=False) == (kept[0], None)


@given(st.binary(max_size=32), st.integers(0, 100), st.integers(0, 9999))
def test_a_sticky_cookie_wins_over_any_key_kept_or_not(
    key: bytes, weight: int, bucket: int
) -> None:
    s = canary(weight)
    want = "green" if bucket < weight * 100 else "blue"
    for keep in (True, False):
        assert (
            choose(s, override=None, sticky=f"green.{bucket}", client_key=key, keep=keep)[0] == want
        )


@given(st.lists(st.binary(min_size=1, max_size=16), min_size=1, max_size=50), st.integers(0, 99))
def test_the_color_depends_only_on_the_key_so_one_address_with_many_keys_splits(
    keys: list[bytes], weight: int
) -> None:
    s = canary(weight)
    for key in keys:
        assert pick(s, key) == ("green" if bucket_of(key) < weight * 100 else "blue")
