"""Key pools: rotation, the cooldown policy, and the outcome of each answer (with a fake clock)."""

from __future__ import annotations

import pytest

from tornado_imagegate.errors import UpstreamError
from tornado_imagegate.keys import (
    COOLDOWN_AUTH,
    COOLDOWN_RATE_LIMITED,
    COOLDOWN_TRANSIENT,
    CooldownPolicy,
    KeyPool,
    Outcome,
    classify,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool_of(*keys: str, clock: Clock | None = None, **policy: float) -> KeyPool:
    return KeyPool(keys, clock=clock or Clock(), policy=CooldownPolicy(**policy))


def tried(pool: KeyPool) -> list[str]:
    return [key for _, key in pool.order()]


def test_each_request_starts_at_the_next_key_and_fails_over_through_the_rest():
    pool = pool_of("a", "b", "c")
    assert tried(pool) == ["a", "b", "c"]
    assert tried(pool) == ["b", "c", "a"]
    assert tried(pool) == ["c", "a", "b"]
    assert tried(pool) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("result", "outcome"),
    [
        (200, Outcome.OK),
        (201, Outcome.OK),
        (429, Outcome.RATE_LIMITED),
        (401, Outcome.AUTH),
        (403, Outcome.AUTH),
        (408, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (400, Outcome.REJECTED),
        (413, Outcome.REJECTED),
        (415, Outcome.REJECTED),
        (422, Outcome.REJECTED),
        (404, Outcome.UNUSABLE),
        (302, Outcome.UNUSABLE),
        (UpstreamError("timeout"), Outcome.TRANSIENT),
        (UpstreamError("connect"), Outcome.TRANSIENT),
        (UpstreamError("bad_answer"), Outcome.TRANSIENT),
        (UpstreamError("too_large"), Outcome.UNUSABLE),
        (UpstreamError("cancelled"), Outcome.UNUSABLE),
    ],
)
def test_each_answer_has_one_outcome(result, outcome):
    assert classify(result) is outcome
    assert outcome.fails_over == (
        outcome in {Outcome.TRANSIENT, Outcome.RATE_LIMITED, Outcome.AUTH}
    )


def test_one_transient_failure_rests_no_key():
    pool = pool_of("a", "b")
    pool.record_failure(0, Outcome.TRANSIENT)
    assert pool.resting() == 0
    assert sorted(tried(pool)) == ["a", "b"]


def test_allowed_fails_within_the_window_rest_a_key_while_another_is_usable():
    clock = Clock()
    pool = pool_of("a", "b", clock=clock, allowed_fails=3)
    for _ in range(2):
        pool.record_failure(0, Outcome.TRANSIENT)
        clock.now += 1
    assert pool.resting() == 0
    pool.record_failure(0, Outcome.TRANSIENT)
    assert tried(pool) == ["b"] and tried(pool) == ["b"]
    assert pool.next_available_in() == 0  # b is usable
    clock.now += COOLDOWN_TRANSIENT
    assert sorted(tried(pool)) == ["a", "b"]


def test_failures_older_than_the_window_do_not_count():
    clock = Clock()
    pool = pool_of("a", "b", clock=clock, allowed_fails=3, window=60)
    for _ in range(2):
        pool.record_failure(0, Outcome.TRANSIENT)
    clock.now += 61
    pool.record_failure(0, Outcome.TRANSIENT)
    assert pool.resting() == 0


def test_a_success_starts_the_count_again():
    pool = pool_of("a", "b", allowed_fails=3)
    for _ in range(2):
        pool.record_failure(0, Outcome.TRANSIENT)
    pool.record_success(0)
    for _ in range(2):
        pool.record_failure(0, Outcome.TRANSIENT)
    assert pool.resting() == 0


@pytest.mark.parametrize("keys", [("a",), ("a", "b")])
def test_the_last_usable_key_is_never_rested_for_transient_failures(keys):
    pool = pool_of(*keys, allowed_fails=1)
    if len(keys) == 2:
        pool.record_failure(1, Outcome.TRANSIENT)  # b rests: a is the last usable key
        assert tried(pool) == ["a"]
    for _ in range(10):
        pool.record_failure(0, Outcome.TRANSIENT)
    assert pool.resting() == len(keys) - 1
    assert "a" in tried(pool)


def test_a_provider_wide_blip_on_every_key_rests_at_most_all_but_one():
    pool = pool_of("a", "b", "c", allowed_fails=1)
    for index, _key in pool.order():
        pool.record_failure(index, Outcome.TRANSIENT)
    assert pool.resting() == 2


def test_a_429_rests_the_key_at_once_for_retry_after_capped_by_the_policy():
    clock = Clock()
    pool = pool_of("a", "b", clock=clock, max_cooldown=300)
    pool.record_failure(1, Outcome.RATE_LIMITED, retry_after=40)
    assert tried(pool) == ["a"]
    pool.record_failure(0, Outcome.RATE_LIMITED, retry_after=3600)
    assert pool.all_resting() and pool.next_available_in() == 40
    clock.now += 40
    assert tried(pool) == ["b"]
    pool.record_failure(1, Outcome.AUTH)
    assert pool.next_available_in() == 260  # a: 300 s in all, not an hour


def test_a_429_without_retry_after_rests_a_short_while_and_401_long():
    pool = pool_of("a", "b", "c")
    pool.record_failure(0, Outcome.RATE_LIMITED)
    pool.record_failure(1, Outcome.AUTH)
    pool.record_failure(2, Outcome.AUTH)
    assert pool.next_available_in() == COOLDOWN_RATE_LIMITED
    until = sorted(pool._resting_until)
    assert until[1] - until[0] == COOLDOWN_AUTH - COOLDOWN_RATE_LIMITED


def test_answers_about_the_request_blame_no_key():
    pool = pool_of("a", "b", allowed_fails=1)
    for outcome in (Outcome.REJECTED, Outcome.UNUSABLE):
        pool.record_failure(0, outcome)
    assert pool.resting() == 0 and pool.failures == [0, 0]


def test_when_every_key_rests_the_one_whose_rest_ends_first_is_tried_alone():
    clock = Clock()
    pool = pool_of("a", "b", "c", clock=clock)
    pool.record_failure(0, Outcome.RATE_LIMITED, retry_after=50)
    pool.record_failure(1, Outcome.RATE_LIMITED, retry_after=10)
    pool.record_failure(2, Outcome.AUTH)
    assert tried(pool) == ["b"] and tried(pool) == ["b"]
    assert pool.next_available_in() == 10
    clock.now += 10
    assert tried(pool) == ["b"]  # b is usable again, by right this time
    assert not pool.all_resting()


def test_a_success_ends_a_rest():
    pool = pool_of("a")
    pool.record_failure(0, Outcome.RATE_LIMITED, retry_after=100)
    assert pool.all_resting()
    pool.record_success(0)
    assert pool.resting() == 0


def test_a_shorter_rest_does_not_shorten_a_longer_one():
    pool = pool_of("a")
    pool.record_failure(0, Outcome.RATE_LIMITED, retry_after=100)
    pool.record_failure(0, Outcome.RATE_LIMITED, retry_after=1)
    assert pool.next_available_in() == 100


def test_each_rest_is_reported_with_its_reason():
    rests: list[tuple[int, str]] = []
    pool = KeyPool(
        ("a", "b"),
        clock=Clock(),
        policy=CooldownPolicy(allowed_fails=2),
        on_rest=lambda *r: rests.append(r),
    )
    pool.record_failure(0, Outcome.TRANSIENT)
    pool.record_failure(1, Outcome.AUTH)
    assert rests == [(1, "auth")]
    pool.record_success(1)
    pool.record_failure(0, Outcome.TRANSIENT)
    assert rests == [(1, "auth"), (0, "transient")]


def test_no_keys():
    pool = KeyPool(())
    assert pool.order() == [] and pool.next_available_in() == 0 and not pool.all_resting()
