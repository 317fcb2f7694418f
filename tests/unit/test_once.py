"""One reconcile pass (common.once): outcomes per key, idle detection in virtual time, the verdict."""

from __future__ import annotations

import asyncio

import pytest

from common.backoff import ItemExponential
from common.controller import Requeue, run_workers
from common.once import OnceFailed, OncePass, Outcome, current, describe_uids
from common.workqueue import WorkQueue


def queue_with(name: str = "things", base: float = 1.0) -> WorkQueue[str]:
    return WorkQueue[str](name, limiter=ItemExponential(base, 100))


async def one_pass(once: OncePass, *work: tuple[WorkQueue[str], object]) -> float:
    """Run workers for each (queue, sync) inside the pass until it is idle, then stop them; returns the
    seconds until idle."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with once.active():
        tasks = [
            asyncio.create_task(run_workers(q, sync, name=q.name, count=2), name=f"workers {q.name}")  # type: ignore[arg-type]
            for q, sync in work
        ]
        await once.wait_idle()
    took = loop.time() - start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return took


@pytest.mark.looptime
async def test_every_key_synced_passes() -> None:
    queue = queue_with()
    for key in ("a", "b", "c"):
        queue.add(key)
    seen: list[str] = []

    async def sync(key: str) -> None:
        await asyncio.sleep(0.1)
        seen.append(key)

    once = OncePass(settle=0.5)
    await one_pass(once, (queue, sync))
    result = once.result()
    assert sorted(seen) == ["a", "b", "c"]
    assert result.synced == 3 and result.not_synced == [] and result.unfinished == []
    result.raise_for_failures()  # no exception
    assert current() is None  # the pass is only active inside `active()`


@pytest.mark.looptime
async def test_failed_and_deferred_keys_are_named() -> None:
    queue = queue_with(base=10.0)  # the retry comes after the pass has settled
    for key in ("good", "bad", "later"):
        queue.add(key)

    async def sync(key: str) -> None:
        if key == "bad":
            raise RuntimeError("driver said no")
        if key == "later":
            raise Requeue(30.0, "waiting for the PV")

    once = OncePass(settle=0.5)
    took = await one_pass(once, (queue, sync))
    assert took == pytest.approx(0.5, abs=0.01)  # idle at once, then one settle period
    result = once.result()
    outcomes = {o.key: (o.outcome, o.error) for o in result.outcomes}
    assert outcomes == {
        "good": (Outcome.SYNCED, ""),
        "bad": (Outcome.FAILED, "driver said no"),
        "later": (Outcome.DEFERRED, "waiting for the PV"),
    }
    with pytest.raises(OnceFailed) as failed:
        result.raise_for_failures()
    assert str(failed.value) == (
        "2 not synced after one pass (1 synced): things bad (failed: driver said no); "
        "things later (deferred: waiting for the PV)"
    )


@pytest.mark.looptime
async def test_a_retry_within_the_pass_that_succeeds_counts_as_synced() -> None:
    queue = queue_with(base=0.2)
    queue.add("flaky")
    queue.add("slow")
    attempts: list[str] = []

    async def sync(key: str) -> None:
        attempts.append(key)
        if key == "slow":
            await asyncio.sleep(1.0)  # keeps the pass busy while "flaky" backs off
        elif attempts.count("flaky") == 1:
            raise RuntimeError("conflict")

    once = OncePass(settle=0.5)
    await one_pass(once, (queue, sync))
    assert attempts.count("flaky") == 2
    assert once.result().not_synced == []


@pytest.mark.looptime
async def test_keys_added_during_the_settle_period_are_processed() -> None:
    first, second = queue_with("first"), queue_with("second")
    first.add("a")
    done: list[str] = []

    async def sync_first(key: str) -> None:
        done.append(key)
        asyncio.get_running_loop().call_later(0.3, second.add, "echo")  # a watch event of our write

    async def sync_second(key: str) -> None:
        done.append(key)

    once = OncePass(settle=0.5)
    await one_pass(once, (first, sync_first), (second, sync_second))
    assert done == ["a", "echo"]
    assert once.result().synced == 2


@pytest.mark.looptime
async def test_the_pass_is_bounded() -> None:
    queue = queue_with()
    queue.add("stuck")

    async def sync(key: str) -> None:
        await asyncio.sleep(3600)

    once = OncePass(settle=0.5, timeout=5.0)
    assert await one_pass(once, (queue, sync)) == pytest.approx(5.0, abs=0.01)
    result = once.result()
    assert result.unfinished == ["1 syncs in flight"]
    [stuck] = result.not_synced  # cancelled when the workers stopped: not counted as synced
    assert (stuck.outcome, stuck.error) == (Outcome.FAILED, "interrupted: the pass ended first")
    with pytest.raises(OnceFailed, match="still queued when the pass timed out: 1 syncs in flight"):
        result.raise_for_failures()


async def test_outside_a_pass_run_workers_is_unchanged() -> None:
    queue = queue_with()
    queue.add("a")
    synced: list[str] = []

    async def sync(key: str) -> None:
        synced.append(key)

    assert current() is None
    task = asyncio.create_task(run_workers(queue, sync, name="plain", count=1), name="workers plain")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await queue.shutdown(drain=True)
    await task
    assert synced == ["a"]


def test_uids_are_described_as_objects() -> None:
    stores = {
        "persistentvolumeclaims": [{"metadata": {"name": "data", "namespace": "default", "uid": "u-1"}}],
        "persistentvolumes": [{"metadata": {"name": "pv-1", "uid": "u-2"}}],
    }
    describe = describe_uids(stores)
    assert describe("u-1") == "persistentvolumeclaims default/data"
    assert describe("u-2") == "persistentvolumes pv-1"
    assert describe("default/other") == "default/other"
