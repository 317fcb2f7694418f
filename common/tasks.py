"""Named background tasks: the one place a task is started outside an `asyncio.TaskGroup`.

Long-lived tasks belong to the entrypoint's `TaskGroup` (created there with `name=`). A task that
must outlive its caller (e.g. a provisioning operation that continues in the background) is started
with `spawn`, which keeps a strong reference (asyncio only keeps weak ones) and logs a crash instead
of letting it vanish as "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from common.logging import get_logger

T = TypeVar("T")

log = get_logger(__name__)
_running: set[asyncio.Task[Any]] = set()


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task crashed", task=task.get_name(), error=repr(exc), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """Start `coro` as a named task that is kept alive until it ends and whose crash is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def running() -> frozenset[asyncio.Task[Any]]:
    """Tasks started with `spawn` that have not finished (for staged shutdown)."""
    return frozenset(_running)


async def cancel_and_wait(tasks: set[asyncio.Task[Any]] | frozenset[asyncio.Task[Any]], *, msg: str) -> None:
    """Cancel `tasks` with a reason and wait until each has ended."""
    for task in tasks:
        task.cancel(msg=msg)
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
