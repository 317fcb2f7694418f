"""The work queue (common.workqueue): client-go's guarantees, delays, rate limiting and metrics.

Time is virtual (looptime): "waits exactly 4*base" is asserted on the loop clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.backoff import ItemExponential
from common.workqueue import ShutDown, WorkQueue


def now() -> float:
    return asyncio.get_running_loop().time()


async def advance(seconds: float) -> None:
    """Let `seconds` of virtual time pass; never sleeps for real (needs @pytest.mark.looptime)."""
    assert getattr(asyncio.get_running_loop(), "looptime_on", False), "virtual time only: mark it looptime"
    await asyncio.sleep(seconds)


async def settle() -> None:
    """Let every ready callback and task step run (no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


class RecordingMetrics:
    """A QueueMetrics that keeps what it was told, like client-go's testMetrics."""

    def __init__(self) -> None:
        self.adds = 0
        self.depth = 0
        self.retries = 0
        self.waited: list[float] = []
        self.worked: list[float] = []
        self.probe: Callable[[], tuple[float, float]] | None = None

    def on_add(self) -> None:
        self.adds += 1
        self.depth += 1

    def on_get(self, waited: float) -> None:
        self.depth -= 1
        self.waited.append(waited)

    def on_done(self, worked: float) -> None:
        self.worked.append(worked)

    def on_retry(self) -> None:
        self.retries += 1

    def watch_in_flight(self, probe: Callable[[], tuple[float, float]]) -> None:
        self.probe = probe


# -- client-go's four guarantees -------------------------------------------------------------------


async def test_keys_come_out_in_the_order_they_went_in_fair() -> None:
    queue = WorkQueue[str]("fair")
    for key in ["c", "a", "b", "d"]:
        queue.add(key)
    assert [await queue.get() for _ in range(4)] == ["c", "a", "b", "d"]


async def test_duplicate_adds_collapse_stingy() -> None:
    queue = WorkQueue[str]("stingy")
    for key in ["a", "b", "a", "a", "b"]:
        queue.add(key)
    assert queue.len() == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert queue.len() == 0


async def test_a_key_is_never_handed_to_two_workers_stingy() -> None:
    queue = WorkQueue[str]("stingy")
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")  # re-added while a worker holds it
    queue.add("b")
    assert await queue.get() == "b"  # the second worker gets b, not a second copy of a
    third = asyncio.create_task(queue.get(), name="third worker")
    await settle()
    assert not third.done()  # a is not handed out while it is being processed
    queue.done("a")
    assert await third == "a"
    queue.done("a")
    queue.done("b")


async def test_readd_while_processing_runs_again() -> None:
    queue = WorkQueue[str]("readd")
    queue.add("a")
    key = await queue.get()
    queue.add(key)
    assert queue.len() == 0  # dirty, but waits for done
    queue.done(key)
    assert queue.len() == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert queue.len() == 0  # processed again once, not forever


async def test_shutdown_without_drain_returns_at_once_and_hands_out_what_is_left() -> None:
    queue = WorkQueue[str]("shutdown")
    idle = asyncio.create_task(queue.get(), name="idle worker")
    await settle()
    queue.add("a")
    queue.add("b")
    assert await idle == "a"  # in flight when we shut down
    await queue.shutdown()  # does not wait for a
    assert queue.shutting_down
    queue.add("c")  # ignored
    assert await queue.get() == "b"  # queued before the shutdown: still handed out (client-go)
    with pytest.raises(ShutDown):
        await queue.get()
    queue.done("a")
    queue.done("b")


async def test_shutdown_wakes_idle_workers() -> None:
    queue = WorkQueue[str]("shutdown")
    workers = [asyncio.create_task(queue.get(), name=f"worker {i}") for i in range(3)]
    await settle()
    await queue.shutdown()
    for worker in workers:
        with pytest.raises(ShutDown):
            await worker


@pytest.mark.looptime
async def test_shutdown_with_drain_waits_for_done() -> None:
    queue = WorkQueue[str]("drain")
    processed: list[tuple[str, float]] = []

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            await advance(5)
            processed.append((key, now()))
            queue.done(key)

    start = now()
    queue.add("a")
    queue.add("b")
    task = asyncio.create_task(worker(), name="worker drain-0")
    await settle()
    await queue.shutdown(drain=True)
    assert now() - start == pytest.approx(10)  # a in flight, then b from the queue
    assert [key for key, _ in processed] == ["a", "b"]
    await task


@pytest.mark.looptime
async def test_shutdown_without_drain_releases_a_draining_caller() -> None:
    queue = WorkQueue[str]("drain")
    queue.add("a")
    await queue.get()  # never done
    start = now()
    drain = asyncio.create_task(queue.shutdown(drain=True), name="drain")
    await advance(3)
    assert not drain.done()
    await queue.shutdown()
    await drain
    assert now() - start == pytest.approx(3)


async def test_a_cancelled_worker_does_not_lose_the_key_it_was_woken_for() -> None:
    queue = WorkQueue[str]("cancel")
    first = asyncio.create_task(queue.get(), name="first")
    second = asyncio.create_task(queue.get(), name="second")
    await settle()
    queue.add("a")  # wakes first
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.wait_for(second, 1) == "a"


def test_done_for_a_key_not_handed_out_is_ignored() -> None:
    queue = WorkQueue[str]("done")
    queue.done("never-got")
    assert queue.len() == 0


# -- delaying --------------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_add_after_hands_keys_out_when_due_in_order() -> None:
    queue = WorkQueue[str]("delays")
    start = now()
    queue.add_after("c", 3)
    queue.add_after("a", 1)
    queue.add_after("b", 2)
    queue.add_after("now", 0)
    got = []
    for _ in range(4):
        key = await queue.get()
        got.append((key, now() - start))
        queue.done(key)
    assert got == [("now", 0), ("a", 1), ("b", 2), ("c", 3)]
    await queue.shutdown()


@pytest.mark.looptime
async def test_add_after_keeps_the_earlier_due_time() -> None:
    queue = WorkQueue[str]("delays")
    start = now()
    queue.add_after("k", 10)
    queue.add_after("k", 2)  # earlier: wins
    queue.add_after("k", 5)  # later than the waiting one: ignored
    assert await queue.get() == "k"
    assert now() - start == pytest.approx(2)
    queue.done("k")
    await advance(20)
    assert queue.len() == 0  # the superseded due times never fire
    await queue.shutdown()


@pytest.mark.looptime
async def test_the_timer_task_is_named_started_lazily_and_gone_after_shutdown() -> None:
    queue = WorkQueue[str]("lazy")

    def timers() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "workqueue lazy delayed adds"]

    assert timers() == []
    queue.add_after("a", 1)
    [timer] = timers()
    await queue.get()  # due: the heap is empty and the timer ends by itself
    await settle()
    assert timer.done()
    queue.add_after("b", 100)
    assert not timers()[0].done()
    await queue.shutdown()
    assert timers() == []
    queue.add_after("c", 1)  # after shutdown: ignored, no new timer
    assert timers() == []


# -- rate limiting ---------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_rate_limited_third_failure_waits_exactly_four_times_base() -> None:
    base = 0.02
    queue = WorkQueue[str]("limited", limiter=ItemExponential(base, 10))
    queue.add("k")
    waits = []
    for _ in range(3):
        key = await queue.get()
        failed_at = now()
        queue.add_rate_limited(key)
        queue.done(key)
        await queue.get()
        waits.append(now() - failed_at)
        queue.done(key)
        queue.add(key)
    assert waits == pytest.approx([base, 2 * base, 4 * base])
    assert queue.num_requeues("k") == 3
    queue.forget("k")
    assert queue.num_requeues("k") == 0
    await queue.shutdown()


async def test_add_rate_limited_needs_a_limiter() -> None:
    queue = WorkQueue[str]("plain")
    with pytest.raises(TypeError):
        queue.add_rate_limited("k")
    assert queue.num_requeues("k") == 0
    queue.forget("k")  # harmless


# -- metrics ---------------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_metrics_follow_client_go_accounting() -> None:
    metrics = RecordingMetrics()
    queue = WorkQueue[str]("metrics", metrics=metrics, limiter=ItemExponential(1, 10))
    queue.add("a")
    queue.add("a")  # collapses: not counted
    assert (metrics.adds, metrics.depth) == (1, 1)
    await advance(2)
    assert await queue.get() == "a"
    assert metrics.waited == [2] and metrics.depth == 0
    await advance(1)
    queue.add("a")  # re-added while processing: counted, and in depth though not yet in the queue
    assert (metrics.adds, metrics.depth, queue.len()) == (2, 1, 0)
    await advance(2)
    queue.done("a")
    assert metrics.worked == [3]
    assert await queue.get() == "a"
    assert metrics.waited == [2, 2]  # from the re-add, not from the done
    queue.done("a")
    queue.add_rate_limited("a")
    queue.add_after("b", 0)
    assert metrics.retries == 2  # every add_after counts, like client-go's AddAfter
    await queue.shutdown()
    queue.add_after("c", 1)
    assert metrics.retries == 2  # not after shutdown


@pytest.mark.looptime
async def test_in_flight_probe_reports_unfinished_work_and_longest_running() -> None:
    metrics = RecordingMetrics()
    queue = WorkQueue[str]("metrics", metrics=metrics)
    assert metrics.probe is not None
    assert metrics.probe() == (0.0, 0.0)
    queue.add("a")
    queue.add("b")
    await queue.get()
    await advance(1)
    await queue.get()
    await advance(2)
    assert metrics.probe() == pytest.approx((3 + 2, 3))
    queue.done("a")
    assert metrics.probe() == pytest.approx((2, 2))


# -- property: concurrent workers ------------------------------------------------------------------

_keys = st.sampled_from(["a", "b", "c", "d"])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), _keys, st.just(0.0)),
        st.tuples(st.just("add_after"), _keys, st.sampled_from([0.0, 0.5, 1.0, 2.5])),
        st.tuples(st.just("sleep"), st.just(""), st.sampled_from([0.0, 0.1, 0.7])),
    ),
    max_size=40,
)


@pytest.mark.looptime
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, work=st.lists(st.sampled_from([0.0, 0.2, 0.6, 1.5]), min_size=1, max_size=8))
async def test_concurrent_workers_never_share_a_key_and_every_add_is_processed(
    ops: list[tuple[str, str, float]], work: list[float]
) -> None:
    queue = WorkQueue[str]("property")
    seq = itertools.count()
    last_add: dict[str, int] = {}
    starts: dict[str, list[int]] = {}
    active: set[str] = set()
    durations = itertools.cycle(work)

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            assert key not in active, f"{key} processed by two workers at once"
            active.add(key)
            starts.setdefault(key, []).append(next(seq))
            await advance(next(durations))
            active.discard(key)
            queue.done(key)

    async with asyncio.TaskGroup() as group:
        for i in range(3):
            group.create_task(worker(), name=f"worker property-{i}")
        for op, key, amount in ops:
            if op == "add":
                last_add[key] = next(seq)
                queue.add(key)
            elif op == "add_after":
                last_add[key] = next(seq)
                queue.add_after(key, amount)
            else:
                await advance(amount)
        await advance(60)  # every delay is due and every key processed
        async with asyncio.timeout(60):
            await queue.shutdown(drain=True)
    for key, added in last_add.items():
        assert max(starts.get(key, [-1])) > added, f"{key} not processed after its last add"
