"""The one worker loop (common.controller): success, backoff, Requeue, giving up, cancellation."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from common import logging as klog
from common.backoff import ItemExponential
from common.controller import Requeue, run_worker, run_workers
from common.workqueue import WorkQueue


def now() -> float:
    return asyncio.get_running_loop().time()


async def advance(seconds: float) -> None:
    """Let `seconds` of virtual time pass; never sleeps for real (needs @pytest.mark.looptime)."""
    assert getattr(asyncio.get_running_loop(), "looptime_on", False), "virtual time only: mark it looptime"
    await asyncio.sleep(seconds)


LogReader = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def logs() -> Iterator[LogReader]:
    """A reader of the JSON log lines written so far in the test (at the default verbosity)."""
    stream = io.StringIO()
    klog.configure(verbosity=0, fmt="json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    klog.configure(verbosity=0, fmt="text", stream=sys.stderr, console=False)


def queue_with(base: float = 1.0) -> WorkQueue[str]:
    return WorkQueue[str]("test", limiter=ItemExponential(base, 100))


async def stop(queue: WorkQueue[str], worker: asyncio.Task[None]) -> None:
    await queue.shutdown(drain=True)
    await worker


@pytest.mark.looptime
async def test_success_forgets_the_key_and_marks_it_done() -> None:
    queue = queue_with()
    synced: list[str] = []

    async def sync(key: str) -> None:
        synced.append(key)

    queue.add_rate_limited("a")  # a previous failure
    assert queue.num_requeues("a") == 1
    worker = asyncio.create_task(run_worker(queue, sync, name="test"), name="worker test-0")
    queue.add("a")
    await advance(0.01)
    assert synced == ["a"]
    assert queue.num_requeues("a") == 0
    await stop(queue, worker)  # drain returns: the key was marked done


@pytest.mark.looptime
async def test_failure_requeues_with_exponential_backoff(logs: LogReader) -> None:
    queue = queue_with(base=0.02)
    attempts: list[float] = []

    async def sync(key: str) -> None:
        attempts.append(now())
        if len(attempts) < 4:
            raise RuntimeError("driver said no")

    worker = asyncio.create_task(run_worker(queue, sync, name="test"), name="worker test-0")
    queue.add("a")
    await advance(10)
    gaps = [later - earlier for earlier, later in pairwise(attempts)]
    assert gaps == pytest.approx([0.02, 0.04, 0.08])  # the 3rd failure waits exactly 4*base
    assert queue.num_requeues("a") == 0  # the 4th attempt succeeded
    failures = [line for line in logs() if line["msg"] == "sync failed, will retry"]
    assert [(f["key"], f["error"], f["retries"]) for f in failures] == [
        ("a", "driver said no", 0),
        ("a", "driver said no", 1),
        ("a", "driver said no", 2),
    ]
    assert all(f["level"] == "error" and f["controller"] == "test" for f in failures)
    await stop(queue, worker)


@pytest.mark.looptime
async def test_requeue_after_is_honoured_and_is_not_a_failure(logs: LogReader) -> None:
    queue = queue_with(base=0.02)
    attempts: list[float] = []

    async def sync(key: str) -> None:
        attempts.append(now())
        if len(attempts) == 1:
            raise RuntimeError("first a failure")
        if len(attempts) == 2:
            raise Requeue(after=30, reason="infeasible, retry slowly")

    worker = asyncio.create_task(run_worker(queue, sync, name="test"), name="worker test-0")
    queue.add("a")
    await advance(100)
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] == pytest.approx(30)
    assert queue.num_requeues("a") == 0  # Requeue reset the failure count
    assert [line["msg"] for line in logs()] == ["sync failed, will retry"]  # Requeue logs at v=4 only
    await stop(queue, worker)


@pytest.mark.looptime
async def test_giving_up_is_logged_once_and_forgets(logs: LogReader) -> None:
    queue = queue_with(base=0.01)
    attempts = 0

    async def sync(key: str) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("bad spec")

    worker = asyncio.create_task(run_worker(queue, sync, name="test", give_up_after=3), name="worker test-0")
    queue.add("a")
    await advance(60)
    assert attempts == 4  # the first try and 3 retries
    assert queue.num_requeues("a") == 0
    messages = [line["msg"] for line in logs()]
    assert messages.count("giving up") == 1
    assert messages.count("sync failed, will retry") == 3
    queue.add("a")  # a new event starts the key over
    await advance(60)
    assert attempts == 8
    assert [line["msg"] for line in logs()].count("giving up") == 2
    await stop(queue, worker)


async def test_cancellation_mid_sync_still_calls_done() -> None:
    queue = queue_with()
    started = asyncio.Event()

    async def sync(key: str) -> None:
        started.set()
        await asyncio.Event().wait()  # forever

    worker = asyncio.create_task(run_worker(queue, sync, name="test"), name="worker test-0")
    queue.add("a")
    await started.wait()
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    async with asyncio.timeout(1):
        await queue.shutdown(drain=True)  # nothing left in flight: done was called
    assert queue.num_requeues("a") == 0  # a cancellation is neither a success nor a failure


@pytest.mark.looptime
async def test_run_workers_runs_named_workers_in_parallel() -> None:
    queue = queue_with()
    names: set[str] = set()

    async def sync(key: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        names.add(task.get_name())
        await advance(1)

    start = now()
    for key in "abcdef":
        queue.add(key)
    workers = asyncio.create_task(run_workers(queue, sync, name="claims", count=3), name="workers")
    await advance(0.01)
    await queue.shutdown(drain=True)
    await workers
    assert now() - start == pytest.approx(2)  # 6 keys, 3 at a time, 1 s each
    assert names == {"worker claims-0", "worker claims-1", "worker claims-2"}
