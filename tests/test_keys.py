"""Key pools: rotation, resting keys and their return (with a fake clock)."""

from __future__ import annotations

from tornado_imagegate.keys import MAX_RETRY_AFTER, KeyPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_request_starts_at_the_next_key_and_fails_over_through_the_rest():
    pool = KeyPool(("a", "b", "c"), clock=Clock())
    assert [key for _, key in pool.order()] == ["a", "b", "c"]
    assert [key for _, key in pool.order()] == ["b", "c", "a"]
    assert [key for _, key in pool.order()] == ["c", "a", "b"]
    assert [key for _, key in pool.order()] == ["a", "b", "c"]


def test_a_resting_key_is_left_out_until_its_time_is_up():
    clock = Clock()
    pool = KeyPool(("a", "b"), clock=clock)
    pool.rest(0, 30)
    assert [key for _, key in pool.order()] == ["b"]
    assert [key for _, key in pool.order()] == ["b"]
    assert pool.resting() == 1
    clock.now += 31
    assert {key for _, key in pool.order()} == {"a", "b"}
    assert pool.failures == [1, 0]


def test_all_resting_means_none_to_try_and_says_when():
    clock = Clock()
    pool = KeyPool(("a", "b"), clock=clock)
    pool.rest(0, 10)
    pool.rest(1, 40)
    assert pool.order() == []
    assert pool.next_available_in() == 10
    clock.now += 10
    assert [key for _, key in pool.order()] == ["a"]


def test_a_huge_retry_after_is_capped_and_a_shorter_one_does_not_shorten_a_rest():
    clock = Clock()
    pool = KeyPool(("a",), clock=clock)
    pool.rest(0, 10**9)
    assert pool.next_available_in() == MAX_RETRY_AFTER
    pool.rest(0, 1)
    assert pool.next_available_in() == MAX_RETRY_AFTER


def test_no_keys():
    pool = KeyPool(())
    assert pool.order() == [] and pool.next_available_in() == 0
