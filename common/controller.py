"""Controller workers: the one worker loop over a work queue, written once for every controller.

`run_worker` is client-go's ``processNextWorkItem`` loop::

    key = await queue.get()                  # ShutDown -> the worker returns
    try:    await sync(key)
    except Requeue as r:                     # "look again at this time", not a failure:
            queue.forget(key); queue.add_after(key, r.after)
    except Exception:                        # a failure: retry with per-key backoff, or give up
            queue.add_rate_limited(key)  /  log "giving up"; queue.forget(key)
    else:   queue.forget(key)                # success resets the key's backoff
    finally: queue.done(key)                 # always, cancellation included

`Requeue` is controller-runtime's ``Result{RequeueAfter: d}``: the sync did what it could and wants
to see the key again after `after` seconds (e.g. the provisioner's slow retry of infeasible claims,
a capacity poll). It resets the key's failure count and is not logged as an error.

``give_up_after=None`` retries forever (the sidecars' failure thresholds are 0). Otherwise, when a
sync fails and the key has already been requeued `give_up_after` times, the worker logs
"giving up" once and forgets the key; a later add (an informer event) starts it over.

This is the only place in the code base that calls `add_rate_limited`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from common.logging import enabled, get_logger
from common.tasks import cancel_and_wait, spawn
from common.workqueue import ShutDown, WorkQueue

K = TypeVar("K", bound=Hashable)

log = get_logger(__name__)


class Requeue(Exception):
    """Raised by a sync function: process this key again after `after` seconds (not a failure)."""

    def __init__(self, after: float, reason: str = "") -> None:
        super().__init__(after, reason)
        self.after = after
        self.reason = reason


async def run_worker(
    queue: WorkQueue[K],
    sync: Callable[[K], Awaitable[None]],
    *,
    name: str,
    give_up_after: int | None = None,
) -> None:
    """Process keys from `queue` with `sync` until the queue shuts down (see the module docstring)."""
    while True:
        try:
            key = await queue.get()
        except ShutDown:
            return
        try:
            await sync(key)
        except Requeue as requeue:
            log.info("requeue requested", controller=name, key=str(key), after=requeue.after, v=4)
            queue.forget(key)
            queue.add_after(key, requeue.after)
        except Exception as exc:
            _failed(queue, key, exc, name=name, give_up_after=give_up_after)
        else:
            queue.forget(key)
        finally:
            queue.done(key)


def _failed(queue: WorkQueue[K], key: K, exc: Exception, *, name: str, give_up_after: int | None) -> None:
    requeues = queue.num_requeues(key)
    error = str(exc) or repr(exc)
    trace = exc if enabled(6) else None  # expected failures are common: a traceback only at --v=6
    if give_up_after is not None and requeues >= give_up_after:
        log.error("giving up", controller=name, key=str(key), error=error, retries=requeues, exc_info=trace)
        queue.forget(key)
        return
    log.error(
        "sync failed, will retry",
        controller=name,
        key=str(key),
        error=error,
        retries=requeues,
        exc_info=trace,
    )
    queue.add_rate_limited(key)


DRAIN_TIMEOUT = 10.0


async def run_workers(
    queue: WorkQueue[K],
    sync: Callable[[K], Awaitable[None]],
    *,
    name: str,
    count: int,
    give_up_after: int | None = None,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> None:
    """Run `count` workers named ``worker <name>-<i>`` until the queue shuts down or we are cancelled.

    Cancellation is the staged shutdown: the queue stops taking keys and the workers get up to
    `drain_timeout` seconds to finish what they hold (a half-done CSI call is worth finishing); then
    whatever still runs is cancelled.
    """
    from common import once  # here: common.once imports this module

    if (one_pass := once.current()) is not None:
        sync = one_pass.watch(queue, sync, name=name)  # `--once`: record each key's outcome
    workers = {
        spawn(run_worker(queue, sync, name=name, give_up_after=give_up_after), name=f"worker {name}-{i}")
        for i in range(count)
    }
    try:
        await asyncio.wait(workers)  # unlike gather, a cancelled wait leaves the workers running
    except asyncio.CancelledError:
        try:
            async with asyncio.timeout(drain_timeout):
                await queue.shutdown(drain=True)
        except TimeoutError:
            log.warning(
                "workers did not finish in time, cancelling them", controller=name, queued=queue.len()
            )
        raise
    finally:
        await cancel_and_wait(workers, msg=f"controller {name} stopped")
