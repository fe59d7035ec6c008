"""flux.ratelimit with a fake clock: exact limits, refill, fairness, Retry-After, pruning."""

from __future__ import annotations

import pytest

from flux.ratelimit import RateLimiter, retry_after


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limiter(clock: Clock) -> RateLimiter:
    return RateLimiter(clock)


def passed(limiter: RateLimiter, key: str, limit: int, n: int) -> int:
    return sum(limiter.take(key, limit) == 0.0 for _ in range(n))


@pytest.mark.parametrize("limit", [1, 7, 60, 10_000])
def test_a_new_bucket_allows_exactly_the_limit_at_once(limiter: RateLimiter, limit: int) -> None:
    assert passed(limiter, "a", limit, limit) == limit
    assert limiter.take("a", limit) > 0


@pytest.mark.parametrize("limit", [1, 7, 60, 600, 10_000])
def test_refill_is_exact(limiter: RateLimiter, clock: Clock, limit: int) -> None:
    assert passed(limiter, "a", limit, limit) == limit
    wait = limiter.take("a", limit)
    assert wait == pytest.approx(60 / limit, abs=1e-9)
    clock.advance(wait - 1e-6)
    assert limiter.take("a", limit) > 0  # a microsecond early: still refused
    clock.advance(1e-6)
    assert limiter.take("a", limit) == 0.0  # exactly on time: passes
    assert limiter.take("a", limit) > 0
    # a whole minute refills the whole bucket, and no more
    clock.advance(120)
    assert passed(limiter, "a", limit, limit + 5) == limit


def test_a_steady_rate_at_the_limit_passes_every_event(limiter: RateLimiter, clock: Clock) -> None:
    limit = 600  # 10 per second
    assert passed(limiter, "a", limit, limit) == limit
    refused = 0
    for _ in range(3000):  # five minutes at exactly the limit
        clock.advance(0.1)
        refused += limiter.take("a", limit) != 0.0
    assert refused == 0
    assert limiter.take("a", limit) > 0  # and nothing was saved up beyond it


def test_a_refused_event_takes_nothing(limiter: RateLimiter, clock: Clock) -> None:
    assert passed(limiter, "a", 60, 60) == 60
    for _ in range(100):
        assert limiter.take("a", 60) == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.take("a", 60) == 0.0  # the refused attempts did not dig a hole


def test_the_wait_is_the_real_wait(limiter: RateLimiter, clock: Clock) -> None:
    assert passed(limiter, "a", 6, 6) == 6  # one event per 10 s
    assert limiter.take("a", 6) == pytest.approx(10.0)
    clock.advance(2.5)
    assert limiter.take("a", 6) == pytest.approx(7.5)
    assert retry_after(limiter.take("a", 6)) == 8
    clock.advance(7.5)
    assert limiter.take("a", 6) == 0.0


def test_retry_after_is_whole_seconds_rounded_up_at_least_one() -> None:
    assert retry_after(0.0001) == 1
    assert retry_after(1.0) == 1
    assert retry_after(1.01) == 2
    assert retry_after(59.5) == 60


def test_namespaces_are_independent(limiter: RateLimiter, clock: Clock) -> None:
    """Fairness: one namespace hammering past its limit costs the others nothing."""
    for _ in range(10):
        assert passed(limiter, "greedy", 100, 1000) <= 100
        assert passed(limiter, "quiet", 100, 10) == 10
        clock.advance(6)  # refills 10 for each
    # the greedy one has only what refilled; the quiet one its whole limit
    assert passed(limiter, "greedy", 100, 1000) == 10
    assert passed(limiter, "quiet", 100, 1000) == 100


def test_many_namespaces_each_get_their_own_limit(limiter: RateLimiter) -> None:
    keys = [f"ns{i}" for i in range(50)]
    for _ in range(3):
        for key in keys:
            assert passed(limiter, key, 20, 10) == 10 or passed(limiter, key, 20, 1) == 0
    assert all(limiter.take(key, 20) > 0 for key in keys)


def test_a_lower_limit_applies_at_once_and_a_higher_one_refills_up_to_it(
    limiter: RateLimiter, clock: Clock
) -> None:
    assert passed(limiter, "a", 100, 10) == 10  # 90 left
    assert passed(limiter, "a", 5, 10) == 5  # capped at the new capacity
    clock.advance(60)
    assert passed(limiter, "a", 200, 300) == 200


def test_idle_buckets_are_pruned(limiter: RateLimiter, clock: Clock) -> None:
    for i in range(100):
        limiter.take(f"ns{i}", 10)
    assert len(limiter) == 100
    clock.advance(30)
    limiter.take("busy", 10)
    assert limiter.prune() == 0  # nobody is full yet
    clock.advance(30)
    # a minute idle: full again, the same as absent; "busy" is 30 s in and stays
    assert limiter.prune() == 100
    assert len(limiter) == 1
    assert passed(limiter, "ns1", 10, 20) == 10  # a pruned bucket starts full again
    # take() prunes by itself once a minute
    clock.advance(61)
    limiter.take("other", 10)
    assert len(limiter) == 1


def test_take_many_takes_what_the_bucket_holds(limiter: RateLimiter, clock: Clock) -> None:
    """A batch (of deletes) is admitted in part: as many as the bucket holds, no more."""
    assert limiter.take_many("a", 6, 4) == (4, 0.0)
    assert limiter.take_many("a", 6, 5) == (2, 10.0)  # 2 left; the next one in 10 s
    assert limiter.take_many("a", 6, 1) == (0, 10.0)
    assert limiter.take("a", 6) == 10.0  # shared with single events
    clock.advance(25)
    assert limiter.take_many("a", 6, 3) == (2, 5.0)
    assert limiter.take_many("a", 6, 0) == (0, 0.0)
    assert limiter.take_many("b", 6, 100) == (6, 10.0)  # a new bucket starts full


def test_take_many_of_one_agrees_with_take(clock: Clock) -> None:
    single, many = RateLimiter(clock), RateLimiter(clock)
    for step in [0.0, 0.3, 0.0, 7.1, 0.05, 9.99, 0.0, 61.0]:
        clock.advance(step)
        wait = single.take("k", 7)
        taken, pause = many.take_many("k", 7, 1)
        assert (taken, pause) == ((1, 0.0) if wait == 0.0 else (0, wait))
