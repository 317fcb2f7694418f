"""One reconcile pass (`--once`): every queued key is synced, then the process exits with a verdict.

For driver vendors' CI: start the controllers as usual (the informers' initial lists queue every
object), let the workers process until every queue is empty and no sync is in flight, and report::

    once = OncePass()
    with once.active():                    # run_workers started in this context report to the pass
        ... start the controllers ...
        await once.wait_idle()             # empty and quiet for `settle` seconds, or `timeout`
    once.result().raise_for_failures()     # OnceFailed (exit 1) naming every object not synced

`common.controller.run_workers` asks `current()` and, inside a pass, wraps its sync function with
`OncePass.watch`, which records each key's last outcome (synced, failed with the error, or deferred
by `Requeue`) and re-raises, so the worker loop retries exactly as it always does: a key that fails
and then succeeds within the pass counts as synced. "Synced" means the controller is done with the
object for now; that may be "not mine" or "waiting for a node to be selected" (`explain` says why).

A key still waiting for its retry when the queues fall quiet is reported as failed; the pass does
not wait out backoffs. The pass also ends after `timeout` seconds, listing what was still queued.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, TypeVar

from common.controller import Requeue
from common.errors import SidecarError
from common.logging import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)

SETTLE = 0.5
"""Seconds every queue must stay empty and idle before the pass ends (watch echoes of our own
writes arrive well within it)."""
TIMEOUT = 300.0
"""Seconds a pass may take at most."""

_CURRENT: contextvars.ContextVar[OncePass | None] = contextvars.ContextVar("once pass", default=None)


def current() -> OncePass | None:
    """The pass the calling task runs in, if any."""
    return _CURRENT.get()


class Queue(Protocol):
    """What the pass reads of a work queue."""

    name: str

    def len(self) -> int: ...


class Outcome(Enum):
    SYNCED = "synced"
    FAILED = "failed"
    DEFERRED = "deferred"
    """The sync raised `Requeue`: it wants to look again later."""


@dataclass(frozen=True)
class KeyOutcome:
    controller: str
    key: str
    outcome: Outcome
    error: str = ""


class OnceFailed(SidecarError):
    """Some objects were not synced in the pass (exit 1, the message names them)."""


@dataclass
class OnceResult:
    """What one pass did: the last outcome of every key, and what was still queued at the end."""

    outcomes: list[KeyOutcome] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    """`<queue>: <n> keys` for queues that were not empty when the pass timed out."""

    @property
    def synced(self) -> int:
        return sum(1 for o in self.outcomes if o.outcome is Outcome.SYNCED)

    @property
    def not_synced(self) -> list[KeyOutcome]:
        return [o for o in self.outcomes if o.outcome is not Outcome.SYNCED]

    def raise_for_failures(self, describe: Callable[[str], str] = str) -> None:
        """OnceFailed naming each object not synced (`describe(key)` names it, e.g. a UID as ns/name)."""
        bad = self.not_synced
        for item in bad:
            log.error(
                "not synced in this pass",
                controller=item.controller,
                object=describe(item.key),
                outcome=item.outcome.value,
                error=item.error,
            )
        if not bad and not self.unfinished:
            log.info("reconcile pass finished", synced=self.synced)
            return
        listed = [f"{o.controller} {describe(o.key)} ({o.outcome.value}: {o.error})" for o in bad]
        listed += [f"still queued when the pass timed out: {u}" for u in self.unfinished]
        total = len(bad) + len(self.unfinished)
        raise OnceFailed(f"{total} not synced after one pass ({self.synced} synced): " + "; ".join(listed))


class OncePass:
    """Watches the work queues of one pass (see the module docstring)."""

    def __init__(self, *, settle: float = SETTLE, timeout: float = TIMEOUT) -> None:
        self.settle = settle
        self.timeout = timeout
        self._queues: list[Queue] = []
        self._in_flight = 0
        self._activity = 0
        self._changed = asyncio.Event()
        self._outcomes: dict[tuple[str, str], KeyOutcome] = {}
        self._unfinished: list[str] = []

    @contextmanager
    def active(self) -> Iterator[OncePass]:
        """Make this the pass of the current context (tasks created inside inherit it)."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def watch(
        self, queue: Queue, sync: Callable[[K], Awaitable[None]], *, name: str
    ) -> Callable[[K], Awaitable[None]]:
        """`sync`, recording each key's outcome in this pass; `queue` counts towards "idle"."""
        self._queues.append(queue)
        self._changed.set()

        async def watched(key: K) -> None:
            self._in_flight += 1
            self._activity += 1
            outcome, error = Outcome.FAILED, "interrupted: the pass ended first"
            try:
                await sync(key)
                outcome, error = Outcome.SYNCED, ""
            except Requeue as requeue:
                outcome, error = Outcome.DEFERRED, requeue.reason or f"look again in {requeue.after:g}s"
                raise
            except Exception as exc:
                outcome, error = Outcome.FAILED, str(exc) or repr(exc)
                raise
            finally:
                self._in_flight -= 1
                self._outcomes[(name, str(key))] = KeyOutcome(name, str(key), outcome, error)
                self._changed.set()

        return watched

    def idle(self) -> bool:
        """Some queue is watched, none has a key ready, and no sync is running."""
        return bool(self._queues) and self._in_flight == 0 and all(q.len() == 0 for q in self._queues)

    async def wait_idle(self) -> None:
        """Until the queues stay idle for `settle` seconds (bounded by `timeout`)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self._settled()
        except TimeoutError:
            self._unfinished = [f"{q.name}: {q.len()} keys" for q in self._queues if q.len()]
            if self._in_flight:
                self._unfinished.append(f"{self._in_flight} syncs in flight")
            log.warning("reconcile pass timed out", seconds=self.timeout, unfinished=self._unfinished)

    async def _settled(self) -> None:
        while True:
            if self.idle():
                seen = self._activity
                await asyncio.sleep(self.settle)
                if self.idle() and self._activity == seen:
                    return
                continue
            self._changed.clear()
            try:
                async with asyncio.timeout(self.settle):
                    await self._changed.wait()
            except TimeoutError:
                pass  # keys may be ready with no event of ours (an informer added them): look again

    def result(self) -> OnceResult:
        return OnceResult(outcomes=list(self._outcomes.values()), unfinished=list(self._unfinished))


def describe_uids(stores: Mapping[str, Iterable[Mapping[str, Any]]]) -> Callable[[str], str]:
    """A `describe` for `raise_for_failures`: a key that is an object's UID (the provisioner's claim
    queue) becomes `<resource> <namespace>/<name>`; `stores` maps resource names to cached objects."""

    def describe(key: str) -> str:
        for resource, objects in stores.items():
            for obj in objects:
                meta = obj.get("metadata") or {}
                if meta.get("uid") == key:
                    ref = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
                    return f"{resource} {ref}"
        return key

    return describe
