"""The per-client token bucket (nginx `limit_req … burst=N nodelay`) with an injected clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeproxy.config import RateLimit
from edgeproxy.policies.ratelimit import RateLimiter, retry_after

# Any bucket shape, and request arrival gaps from a flood to a trickle.
BUCKETS = given(
    rate=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=0, max_value=30),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)


def test_a_new_client_gets_burst_plus_one_requests_at_once_then_is_refused() -> None:
    rl = RateLimiter(rate=10, burst=20)
    results = [rl.check("1.2.3.4", 100.0) for _ in range(25)]
    assert results[:21] == [None] * 21
    assert results[21:] == [1.0] * 4


def test_tokens_refill_at_the_configured_rate() -> None:
    rl = RateLimiter(rate=10, burst=2)
    assert [rl.check("c", 0.0) for _ in range(4)] == [None, None, None, 1.0]
    # After 0.1 s exactly one token is back.
    assert rl.check("c", 0.1) is None
    assert rl.check("c", 0.1) == 1.0
    # After another 0.3 s the bucket (capacity 3) is full again.
    assert [rl.check("c", 0.4) for _ in range(4)] == [None, None, None, 1.0]


def test_requests_spaced_exactly_one_interval_apart_all_pass() -> None:
    rl = RateLimiter(rate=10, burst=0)
    assert all(rl.check("c", i * 0.1) is None for i in range(1000))
    assert rl.check("c", 999 * 0.1) == 1.0


def test_retry_after_is_the_wait_rounded_up_to_whole_seconds() -> None:
    rl = RateLimiter(rate=0.25, burst=0)  # one request every 4 s
    assert rl.check("c", 0.0) is None
    assert rl.check("c", 0.0) == 4.0
    assert rl.check("c", 2.5) == 2.0
    assert rl.check("c", 3.99) == 1.0
    assert rl.check("c", 4.0) is None
    assert retry_after(4.0) == b"4"


def test_clients_have_separate_buckets() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert [rl.check("a", 0.0) for _ in range(3)] == [None, None, 1.0]
    assert [rl.check("b", 0.0) for _ in range(3)] == [None, None, 1.0]


def test_refused_requests_do_not_consume_tokens() -> None:
    rl = RateLimiter(rate=1, burst=0)
    assert rl.check("c", 0.0) is None
    for _ in range(100):
        assert rl.check("c", 0.5) == 1.0
    assert rl.check("c", 1.0) is None


def test_the_table_never_holds_more_than_max_clients_under_a_million_distinct_keys() -> None:
    rl = RateLimiter(rate=10, burst=20, max_clients=1000)
    for i in range(1_000_000):
        assert rl.check(str(i), i * 1e-6) is None
        assert rl.clients <= 1000
    assert rl.clients == 1000


def test_the_least_recently_allowed_client_is_evicted_first() -> None:
    rl = RateLimiter(rate=1, burst=0, max_clients=2)
    assert rl.check("a", 0.0) is None
    assert rl.check("b", 0.0) is None
    assert rl.check("a", 1.0) is None  # a is now the most recent
    assert rl.check("c", 1.0) is None  # evicts b
    assert rl.check("a", 1.0) == 1.0  # a kept its (empty) bucket
    assert rl.check("b", 1.0) is None  # b starts over (evicts c)
    assert rl.clients == 2


def test_expire_drops_only_clients_whose_bucket_is_full_again() -> None:
    rl = RateLimiter(rate=1, burst=4)
    rl.check("idle", 0.0)
    for _ in range(5):
        rl.check("busy", 9.0)
    assert rl.expire(10.0) == 1
    assert rl.clients == 1
    assert rl.check("busy", 10.0) is None  # one token refilled in the second since
    assert rl.check("busy", 10.0) == 1.0


def test_from_config_keeps_the_config_it_was_built_from() -> None:
    cfg = RateLimit(rate=5, burst=3, max_clients=7)
    rl = RateLimiter.from_config(cfg)
    assert (rl.rate, rl.burst, rl.config) == (5, 3, cfg)


@pytest.mark.parametrize(("rate", "burst", "clients"), [(0, 1, 1), (1, -1, 1), (1, 1, 0)])
def test_nonsense_parameters_are_refused(rate: float, burst: int, clients: int) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RateLimiter(rate, burst, clients)


@BUCKETS
def test_no_window_of_length_t_allows_more_than_burst_plus_one_plus_rate_times_t(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rl = RateLimiter(rate, burst)
    allowed = [now for now in itertools.accumulate(gaps) if rl.check("k", now) is None]
    # Every window [allowed[i], allowed[j]] is the tightest one holding those requests.
    for i in range(len(allowed)):
        for j in range(i, len(allowed)):
            t = allowed[j] - allowed[i]
            assert j - i + 1 <= burst + 1 + rate * (t + 1e-6)


@BUCKETS
def test_a_refused_request_is_told_a_wait_after_which_it_passes(
    rate: float, burst: int, gaps: list[float]
) -> None:
    rl = RateLimiter(rate, burst)
    for now in itertools.accumulate(gaps):
        wait = rl.check("k", now)
        if wait is not None:
            assert wait >= 1
            assert wait == int(wait)
            assert rl.check("k", now + wait) is None
            return


@given(
    keys=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=500),
    max_clients=st.integers(min_value=1, max_value=20),
)
def test_memory_stays_bounded_for_any_sequence_of_clients(
    keys: list[int], max_clients: int
) -> None:
    rl = RateLimiter(rate=1, burst=1, max_clients=max_clients)
    for i, k in enumerate(keys):
        rl.check(str(k), i * 0.01)
        assert rl.clients <= max_clients


def test_a_limiter_with_no_clients_yet_is_truthy_so_if_checks_do_not_skip_it() -> None:
    assert RateLimiter(rate=1)
