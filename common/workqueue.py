"""Work queue: client-go's rate-limited, delaying work queue, asyncio-native.

The guarantees of client-go's ``workqueue`` (doc.go), each pinned by a test in
tests/unit/test_workqueue.py:

- **Fair**: keys are handed out in the order they were added.
- **Stingy**: a key is never handed to two workers at once, and a key added several times before a
  worker gets it is processed once (duplicate adds collapse).
- **Re-add while processing**: a key added while a worker holds it is processed again after that
  worker calls `done` (and not before).
- **Shutdown**: after `shutdown()` adds are ignored and `get()` hands out what is still queued, then
  raises `ShutDown`. ``shutdown(drain=True)`` also waits until every queued and in-flight key is
  done (bound it with a timeout); a later ``shutdown()`` without drain releases that wait.

Delaying (``AddAfter``): `add_after` keeps keys on a heap served by one named timer task, started
when the first delayed key arrives and ended when the heap empties or the queue shuts down. A key
already waiting keeps the earlier of its two due times; keys still waiting at shutdown are dropped.

Rate limiting (``AddRateLimited``): `add_rate_limited` is ``add_after(key, limiter.when(key))``;
`forget` and `num_requeues` delegate to the limiter (common.backoff).

Metrics go through the `QueueMetrics` protocol (common.metrics implements it with the ``workqueue_*``
family); the default records nothing. This module imports nothing outside the standard library: the
limiter and clock protocols of common.backoff are restated here.
Accounting is client-go's: an add counts (adds and depth +1) only when the key becomes newly dirty,
including a key re-added while it is being processed (it is counted in depth before it is back in
the queue); queue duration runs from that add to the `get`; every `add_after` before shutdown is a
retry, the rate-limited ones included.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class RateLimiter(Protocol[K_contra]):
    """What the queue needs of a limiter: common.backoff.RateLimiter, restated so that this module
    imports nothing from the project."""

    def when(self, item: K_contra) -> float: ...

    def forget(self, item: K_contra) -> None: ...

    def num_requeues(self, item: K_contra) -> int: ...


class Clock(Protocol):
    """A monotonic time source in seconds (common.backoff.Clock)."""

    def now(self) -> float: ...


class ShutDown(Exception):
    """`WorkQueue.get` on a queue that is shut down and empty: the worker should return."""


class QueueMetrics(Protocol):
    """The ``workqueue_*`` metrics of one queue (client-go ``queueMetrics`` + ``retryMetrics``)."""

    def on_add(self) -> None:
        """adds_total += 1 and depth += 1 (only when the key actually became dirty)."""

    def on_get(self, waited: float) -> None:
        """depth -= 1 and queue_duration.observe(waited)."""

    def on_done(self, worked: float) -> None:
        """work_duration.observe(worked)."""

    def on_retry(self) -> None:
        """retries_total += 1 (every `add_after` before shutdown)."""

    def watch_in_flight(self, probe: Callable[[], tuple[float, float]]) -> None:
        """Register `probe() -> (unfinished_work_seconds, longest_running_processor_seconds)`,
        read at scrape time."""


class NoMetrics:
    """The default `QueueMetrics`: records nothing."""

    def on_add(self) -> None:
        pass

    def on_get(self, waited: float) -> None:
        pass

    def on_done(self, worked: float) -> None:
        pass

    def on_retry(self) -> None:
        pass

    def watch_in_flight(self, probe: Callable[[], tuple[float, float]]) -> None:
        pass


class _LoopTime:
    def now(self) -> float:
        return asyncio.get_running_loop().time()


class WorkQueue(Generic[K]):
    """A named work queue of hashable keys (see the module docstring for its guarantees).

    `clock` times the metrics and the delayed adds; the timer sleeps on the event loop, so a custom
    clock must advance with the loop (the default is the loop's own clock).
    """

    def __init__(
        self,
        name: str,
        *,
        limiter: RateLimiter[K] | None = None,
        metrics: QueueMetrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = name
        self._limiter = limiter
        self._metrics: QueueMetrics = metrics if metrics is not None else NoMetrics()
        self._clock: Clock = clock if clock is not None else _LoopTime()
        self._queue: deque[K] = deque()  # ready keys, in order; each is dirty and not processing
        self._dirty: set[K] = set()  # keys that need processing (queued, or re-added while processing)
        self._processing: dict[K, float] = {}  # key -> when a worker got it
        self._added_at: dict[K, float] = {}  # key -> when it became dirty (queue duration)
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._drain = False
        self._progress = asyncio.Event()  # set on every `done` and on shutdown, for the drain wait
        # add_after: heap of (due, seq, key); `_waiting[key]` is the live (due, seq), older entries are stale.
        self._heap: list[tuple[float, int, K]] = []
        self._waiting: dict[K, tuple[float, int]] = {}
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_wakeup = asyncio.Event()
        self._metrics.watch_in_flight(self._in_flight)

    # -- the queue ---------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Mark `key` as needing processing (ignored when shutting down or already pending)."""
        if self._shutting_down or key in self._dirty:
            return
        self._metrics.on_add()
        self._dirty.add(key)
        self._added_at.setdefault(key, self._clock.now())
        if key in self._processing:
            return  # queued again by `done`
        self._queue.append(key)
        self._wake_one_getter()

    async def get(self) -> K:
        """The next key to process; the caller must call `done(key)` when finished with it.

        Raises `ShutDown` once the queue is shut down and nothing is left to hand out.
        """
        while not self._queue:
            if self._shutting_down:
                raise ShutDown(self.name)
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                elif self._queue and not getter.cancelled():
                    self._wake_one_getter()  # we were woken for a key we will not take: pass it on
                raise
        key = self._queue.popleft()
        now = self._clock.now()
        added = self._added_at.pop(key, now)
        self._metrics.on_get(max(now - added, 0.0))
        self._processing[key] = now
        self._dirty.discard(key)
        return key

    def done(self, key: K) -> None:
        """Finish processing `key`; if it was added meanwhile, queue it again (at the back)."""
        started = self._processing.pop(key, None)
        if started is None:
            return  # not handed out (or already done): nothing to finish
        self._metrics.on_done(max(self._clock.now() - started, 0.0))
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one_getter()
        self._progress.set()

    def len(self) -> int:
        """Keys ready to be handed out (client-go ``Len``; informational only)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    async def shutdown(self, *, drain: bool = False) -> None:
        """Ignore new adds, drop delayed ones and let idle workers return (`get` raises `ShutDown`).

        With `drain`, also wait until every key already queued or in flight has been processed and
        marked done; the caller bounds this with a timeout. Calling again without `drain` releases
        a draining caller at once, as client-go's ``ShutDown`` after ``ShutDownWithDrain``.
        """
        self._shutting_down = True
        self._drain = drain
        self._progress.set()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
        await self._stop_timer()
        while self._drain and (self._processing or self._queue):
            self._progress.clear()
            await self._progress.wait()

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _in_flight(self) -> tuple[float, float]:
        """(unfinished work seconds, longest running processor seconds), as client-go computes them."""
        now = self._clock.now()
        ages = [max(now - started, 0.0) for started in self._processing.values()]
        return sum(ages), max(ages, default=0.0)

    # -- delaying ------------------------------------------------------------------------------

    def add_after(self, key: K, delay: float) -> None:
        """Add `key` after `delay` seconds (at once if `delay` <= 0). A key already waiting keeps the
        earlier due time. Counts as a retry in the metrics, like client-go's ``AddAfter``."""
        if self._shutting_down:
            return
        self._metrics.on_retry()
        if delay <= 0:
            self.add(key)
            return
        due = self._clock.now() + delay
        waiting = self._waiting.get(key)
        if waiting is not None and waiting[0] <= due:
            return
        entry = (due, next(self._seq))
        self._waiting[key] = entry
        heapq.heappush(self._heap, (entry[0], entry[1], key))
        if self._timer is None or self._timer.done():
            loop = asyncio.get_running_loop()
            self._timer = loop.create_task(self._run_timer(), name=f"workqueue {self.name} delayed adds")
        elif self._heap[0][1] == entry[1]:
            self._timer_wakeup.set()  # the new key is due before the one the timer sleeps for

    async def _run_timer(self) -> None:
        while self._heap and not self._shutting_down:
            now = self._clock.now()
            while self._heap and self._heap[0][0] <= now:
                due, seq, key = heapq.heappop(self._heap)
                if self._waiting.get(key) == (due, seq):
                    del self._waiting[key]
                    self.add(key)
            if not self._heap:
                return
            self._timer_wakeup.clear()
            try:
                async with asyncio.timeout(self._heap[0][0] - now):
                    await self._timer_wakeup.wait()
            except TimeoutError:
                pass

    async def _stop_timer(self) -> None:
        self._heap.clear()
        self._waiting.clear()
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            self._timer_wakeup.set()  # it sees the shutdown and returns
            await asyncio.wait([timer])

    # -- rate limiting ---------------------------------------------------------------------------

    def add_rate_limited(self, key: K) -> None:
        """Add `key` when the limiter says it may be retried (one more failure for `key`)."""
        self.add_after(key, self._require_limiter().when(key))

    def forget(self, key: K) -> None:
        """Stop tracking `key`'s failures (after a success, or when giving up); `done` is still due."""
        if self._limiter is not None:
            self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        """How many times `key` was rate-limited since it was last forgotten."""
        return self._limiter.num_requeues(key) if self._limiter is not None else 0

    def _require_limiter(self) -> RateLimiter[K]:
        if self._limiter is None:
            raise TypeError(f"work queue {self.name!r} has no rate limiter")
        return self._limiter
