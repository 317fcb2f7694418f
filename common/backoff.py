"""Backoff and rate limiting: client-go's workqueue rate limiters and `wait.Backoff`, on an injectable clock.

Queue limiters answer "how long should this key wait before its next try" (`RateLimiter.when`):

- `ItemExponential(base, cap)`: per key, ``base * 2**failures`` capped at `cap`
  (client-go ``ItemExponentialFailureRateLimiter``; `forget` resets the key).
- `TokenBucket(qps, burst)`: one bucket for all keys (``BucketRateLimiter`` over
  golang.org/x/time/rate): starts full, refills at `qps`, each `when` reserves a token and returns
  the time until it is available. The same object is the Kubernetes client's limiter for
  ``--kube-api-qps``/``--kube-api-burst``: ``await acquire()`` waits for a token, and ``pause(s)``
  holds every caller back for `s` seconds when the API server answers 429 with Retry-After.
- `MaxOf(*limiters)`: the longest wait of all (``MaxOfRateLimiter``).
- `default_controller_limiter(base, cap)`: ``MaxOf(ItemExponential(base, cap), TokenBucket(10, 100))``
  like ``DefaultControllerRateLimiter``, with the sidecars' ``--retry-interval-start/-max``.

Loops that are not queue items (re-connecting a watch, re-trying a lease) use `Backoff`
(client-go ``wait.Backoff`` plus the reflector's "reset after a quiet period"), and `jitter` is
``wait.Jitter``.

Time is read through a `Clock` (``now() -> float`` seconds). The default, `LOOP_CLOCK`, is the running
event loop's clock (``time.monotonic`` outside a loop), so tests on a virtual loop clock (looptime)
see virtual time everywhere; unit tests of pure logic pass a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class Clock(Protocol):
    """A monotonic time source in seconds."""

    def now(self) -> float: ...


class LoopClock:
    """The running event loop's clock, or `time.monotonic` when no loop is running (the same clock
    for the default loop)."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()


LOOP_CLOCK: Clock = LoopClock()


class RateLimiter(Protocol[K_contra]):
    """client-go's ``workqueue.RateLimiter``: how long a key waits before it is retried."""

    def when(self, item: K_contra) -> float:
        """Seconds `item` should wait now; counts as one more failure for per-key limiters."""
        ...

    def forget(self, item: K_contra) -> None:
        """Stop tracking `item` (it succeeded, or we gave up on it)."""
        ...

    def num_requeues(self, item: K_contra) -> int:
        """How many failures `item` has had since it was last forgotten."""
        ...


class ItemExponential(Generic[K]):
    """Per-key exponential backoff: the n-th failure (from 0) waits ``base * 2**n``, at most `cap`."""

    def __init__(self, base: float, cap: float) -> None:
        if base < 0 or cap < 0:
            raise ValueError("backoff base and cap must not be negative")
        self.base = base
        self.cap = cap
        self._failures: dict[K, int] = {}

    def when(self, item: K) -> float:
        exp = self._failures.get(item, 0)
        self._failures[item] = exp + 1
        try:
            delay = self.base * 2.0**exp
        except OverflowError:  # 2.0**exp beyond a float: certainly over the cap
            return self.cap
        return min(delay, self.cap)

    def forget(self, item: K) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: K) -> int:
        return self._failures.get(item, 0)


class TokenBucket:
    """A token bucket (golang.org/x/time/rate semantics): `burst` tokens, refilled at `qps` per second.

    As a queue limiter, `when` reserves a token and returns how long until it is due, so a burst of
    failures spreads out at `qps`. As a client limiter, `acquire` waits for a token. `pause` makes
    every later reservation wait until the pause is over (a 429 Retry-After). ``qps=math.inf`` never
    waits.
    """

    def __init__(self, qps: float, burst: int, *, clock: Clock = LOOP_CLOCK) -> None:
        if not qps > 0:
            raise ValueError("qps must be positive (use math.inf for no limit)")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last: float | None = None
        self._paused_until = -math.inf

    def _reserve(self) -> float:
        """Take one token (possibly going into debt) and return the seconds until it is due."""
        if math.isinf(self.qps):
            return 0.0
        now = self._clock.now()
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now if self._last is None else max(now, self._last)
        self._tokens -= 1.0
        return -self._tokens / self.qps if self._tokens < 0 else 0.0

    def when(self, item: object) -> float:
        paused = self._paused_until - self._clock.now()
        return max(self._reserve(), paused, 0.0)

    def forget(self, item: object) -> None:
        """The bucket is shared by all keys: nothing to forget."""

    def num_requeues(self, item: object) -> int:
        return 0

    def pause(self, seconds: float) -> None:
        """Hold back every reservation for `seconds` from now (extends, never shortens, a pause)."""
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)

    async def acquire(self) -> None:
        """Wait until any pause is over, then until a token is available, and take it."""
        while (wait := self._paused_until - self._clock.now()) > 0:
            await asyncio.sleep(wait)
        delay = self._reserve()
        if delay > 0:
            await asyncio.sleep(delay)
        # A pause that started while we waited for our token applies to us too.
        while (wait := self._paused_until - self._clock.now()) > 0:
            await asyncio.sleep(wait)


class MaxOf(Generic[K]):
    """The longest wait of several limiters; `forget` forgets in all, `num_requeues` is the largest."""

    def __init__(self, *limiters: RateLimiter[K]) -> None:
        self.limiters = limiters

    def when(self, item: K) -> float:
        # Every limiter is asked (each records the failure / reserves its token), like client-go.
        return max((limiter.when(item) for limiter in self.limiters), default=0.0)

    def forget(self, item: K) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: K) -> int:
        return max((limiter.num_requeues(item) for limiter in self.limiters), default=0)


def default_controller_limiter(base: float, cap: float, *, clock: Clock = LOOP_CLOCK) -> MaxOf[Hashable]:
    """client-go's ``DefaultControllerRateLimiter`` with our per-key range: exponential from `base` to
    `cap` per key, and at most 10 retries a second (burst 100) overall."""
    return MaxOf(ItemExponential(base, cap), TokenBucket(10, 100, clock=clock))


def jitter(duration: float, max_factor: float, *, rand: Callable[[], float] = random.random) -> float:
    """``wait.Jitter``: a random duration in ``[duration, duration * (1 + max_factor))``
    (`max_factor` <= 0 means 1.0)."""
    if max_factor <= 0:
        max_factor = 1.0
    return duration + rand() * max_factor * duration


class Backoff:
    """Exponential backoff for a loop (``wait.Backoff`` with no step limit).

    `next()` returns `initial`, then multiplies by `factor` up to `cap`; each returned value is
    jittered by `jitter` (so it may exceed `cap` by that factor, as in client-go). With
    `reset_after`, a call that comes more than that many seconds after the previous one starts over
    from `initial` (the reflector's backoff manager: 800 ms to 30 s, reset after 2 min of quiet).
    """

    def __init__(
        self,
        initial: float,
        cap: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        reset_after: float | None = None,
        clock: Clock = LOOP_CLOCK,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if initial < 0 or cap < initial or factor < 1:
            raise ValueError("need 0 <= initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.reset_after = reset_after
        self._clock = clock
        self._rand = rand
        self._current = initial
        self._last: float | None = None

    def next(self) -> float:
        """The seconds to wait before the next attempt."""
        if self.reset_after is not None:
            now = self._clock.now()
            if self._last is not None and now - self._last > self.reset_after:
                self._current = self.initial
            self._last = now
        delay = self._current
        self._current = min(self._current * self.factor, self.cap)
        return jitter(delay, self.jitter, rand=self._rand) if self.jitter > 0 else delay

    def reset(self) -> None:
        """Start over from `initial` (after a success)."""
        self._current = self.initial
        self._last = None
