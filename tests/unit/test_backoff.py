"""Rate limiters and backoff (common.backoff) against client-go's numbers, on a fake clock."""

from __future__ import annotations

import asyncio
import math

import pytest

from common.backoff import (
    Backoff,
    ItemExponential,
    MaxOf,
    TokenBucket,
    default_controller_limiter,
    jitter,
)


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def step(self, seconds: float) -> None:
        self.t += seconds


async def advance(seconds: float) -> None:
    """Let `seconds` of virtual time pass; never sleeps for real (needs @pytest.mark.looptime)."""
    assert getattr(asyncio.get_running_loop(), "looptime_on", False), "virtual time only: mark it looptime"
    await asyncio.sleep(seconds)


def test_item_exponential_doubles_per_key_and_caps() -> None:
    # client-go TestItemExponentialFailureRateLimiter: 1ms base, 1s cap.
    limiter = ItemExponential[str](0.001, 1.0)
    assert [limiter.when("one") for _ in range(5)] == [0.001, 0.002, 0.004, 0.008, 0.016]
    assert limiter.num_requeues("one") == 5
    assert limiter.when("two") == 0.001  # per key
    limiter.forget("one")
    assert limiter.num_requeues("one") == 0
    assert limiter.when("one") == 0.001
    for _ in range(20):
        limiter.when("one")
    assert limiter.when("one") == 1.0


def test_item_exponential_survives_overflow() -> None:
    limiter = ItemExponential[str](0.005, 300.0)
    for _ in range(5000):  # 2.0**5000 does not fit a float
        delay = limiter.when("k")
    assert delay == 300.0


def test_token_bucket_allows_a_burst_then_spaces_at_qps() -> None:
    # client-go TestBucketRateLimiter with rate.NewLimiter(1, 3): three free, then 1s apart.
    clock = FakeClock()
    bucket = TokenBucket(1, 3, clock=clock)
    assert [bucket.when(k) for k in "abcde"] == [0, 0, 0, 1, 2]
    clock.step(2)  # two tokens come back, but the reservations above already owe them
    assert bucket.when("f") == pytest.approx(1)
    clock.step(10)
    assert [bucket.when(k) for k in "ghij"] == [0, 0, 0, 1]
    assert bucket.num_requeues("g") == 0


def test_token_bucket_pause_holds_back_reservations() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 10, clock=clock)
    bucket.pause(5)
    bucket.pause(2)  # a shorter pause never shortens the current one
    assert bucket.when("a") == 5
    clock.step(5)
    assert bucket.when("b") == 0


def test_token_bucket_rejects_nonsense_and_allows_infinite_qps() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)
    bucket = TokenBucket(math.inf, 1, clock=FakeClock())
    assert [bucket.when("x") for _ in range(1000)] == [0.0] * 1000


@pytest.mark.looptime
async def test_token_bucket_acquire_waits_in_loop_time(looptime: float) -> None:
    bucket = TokenBucket(5, 2)  # default clock: the (virtual) loop clock
    start = float(looptime)
    for _ in range(4):
        await bucket.acquire()
    assert looptime == pytest.approx(start + 0.4)  # 2 free, then 0.2 s each


@pytest.mark.looptime
async def test_token_bucket_acquire_honours_a_pause_started_while_waiting(looptime: float) -> None:
    bucket = TokenBucket(1, 1)
    start = float(looptime)
    await bucket.acquire()  # the only token
    waiter = asyncio.create_task(bucket.acquire(), name="acquire")
    await advance(0.5)
    bucket.pause(3)  # a 429 while the waiter waits for its token
    await waiter
    assert looptime == pytest.approx(start + 3.5)


def test_max_of_takes_the_longest_wait_and_forgets_everywhere() -> None:
    clock = FakeClock()
    limiter = MaxOf[str](ItemExponential(0.001, 1.0), TokenBucket(1, 2, clock=clock))
    assert limiter.when("a") == 0.001
    assert limiter.when("a") == 0.002
    assert limiter.when("b") == 1.0  # the bucket is empty now
    assert limiter.num_requeues("a") == 2
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


def test_default_controller_limiter_is_exponential_per_key_under_an_overall_bucket() -> None:
    clock = FakeClock()
    limiter = default_controller_limiter(1.0, 300.0, clock=clock)
    assert [limiter.when("pvc") for _ in range(10)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    limiter.forget("pvc")
    assert limiter.num_requeues("pvc") == 0


def test_default_controller_limiter_bucket_spreads_a_storm_at_10_per_second() -> None:
    # client-go's numbers: 5 ms per key, 100 tokens, 10 qps.
    limiter = default_controller_limiter(0.005, 1000.0, clock=FakeClock())
    delays = [limiter.when(f"key-{i}") for i in range(103)]
    assert delays[:100] == [0.005] * 100
    assert delays[100:] == pytest.approx([0.1, 0.2, 0.3])


def test_jitter_is_client_go_wait_jitter() -> None:
    assert jitter(10, 0.5, rand=lambda: 0.0) == 10
    assert jitter(10, 0.5, rand=lambda: 0.999) == pytest.approx(14.995)
    assert jitter(10, 0, rand=lambda: 0.5) == 15  # max_factor <= 0 means 1.0


def test_backoff_grows_caps_and_resets() -> None:
    backoff = Backoff(0.8, 30, factor=2)
    assert [backoff.next() for _ in range(8)] == [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
    backoff.reset()
    assert backoff.next() == 0.8


def test_backoff_jitters_after_the_cap() -> None:
    backoff = Backoff(1, 4, jitter=1.0, rand=lambda: 0.5)
    assert [backoff.next() for _ in range(4)] == [1.5, 3.0, 6.0, 6.0]


def test_backoff_resets_after_a_quiet_period() -> None:
    # The reflector's backoff manager: 800 ms .. 30 s, back to 800 ms after 2 min without failures.
    clock = FakeClock()
    backoff = Backoff(0.8, 30, reset_after=120, clock=clock)
    assert [backoff.next() for _ in range(3)] == [0.8, 1.6, 3.2]
    clock.step(120)
    assert backoff.next() == 6.4  # not quiet for *more* than 2 min
    clock.step(121)
    assert backoff.next() == 0.8


def test_backoff_validates_its_numbers() -> None:
    with pytest.raises(ValueError):
        Backoff(5, 1)
    with pytest.raises(ValueError):
        Backoff(1, 5, factor=0.5)
