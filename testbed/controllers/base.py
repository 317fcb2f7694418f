"""Stand-in controller machinery: a list+watch cache per resource, a deduplicating key queue, one worker.

Every stand-in follows the shape of a kube-controller-manager controller, acting on the `Store`
directly (through its public async methods, so the API server's request log holds only what clients
sent over HTTP):

* an `Informer` per watched resource lists it, keeps a dict cache keyed `namespace/name` (or `name`),
  watches from the list's resourceVersion, advances on every event, and relists when the watch is
  Expired (410) — the reflector's contract, in-process;
* every change calls the controller's `keys_for(resource, old, new)`, whose keys go to a `KeyQueue`
  (duplicates collapse; a key re-added while being processed runs again afterwards);
* one worker calls `sync(key)`; an exception retries the key with per-key exponential backoff (API
  Conflicts included: the next sync reads the newer cached object); `resync_period` re-enqueues
  everything, as the real controllers' periodic resync does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar

import structlog

from testbed.apiserver import Expired, Store

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
Key = tuple[str, str]
"""What a controller queues: (kind of work, object key), e.g. ("claim", "default/data")."""


def object_key(obj: Obj) -> str:
    """`namespace/name` for namespaced objects, `name` otherwise (client-go's MetaNamespaceKeyFunc)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))


def resource_version(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Informer:
    """List+watch of one resource into `cache`, calling `on_change(resource, old, new)` on each change."""

    def __init__(
        self,
        store: Store,
        resource: str,
        on_change: Any,
        *,
        field_selector: str = "",
    ) -> None:
        self.store = store
        self.resource = resource
        self.field_selector = field_selector
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self._on_change = on_change
        rtype = store.rtype(resource)
        self._type_meta = {"kind": rtype.kind, "apiVersion": rtype.api_version}

    def _typed(self, obj: Obj) -> Obj:
        """List items carry no kind/apiVersion (as from kube-apiserver); a typed Go object knows its type."""
        return {**self._type_meta, **obj}

    async def run(self) -> None:
        """Forever: list, then watch from the list's resourceVersion; relist after a 410."""
        rv = ""
        while True:
            if not rv:
                rv = await self._relist()
            try:
                watch = self.store.watch(self.resource, rv, field_selector=self.field_selector)
            except Expired:
                log.debug("watch expired, relisting", resource=self.resource, rv=rv)
                rv = ""
                continue
            async with watch:
                async for event in watch:
                    rv = event.object["metadata"].get("resourceVersion") or rv
                    self._apply(event.type, event.object)
            # The stream ended (server-side close): resume from the last resourceVersion seen.
            await asyncio.sleep(0.01)

    async def _relist(self) -> str:
        listed = await self.store.list(self.resource, field_selector=self.field_selector)
        fresh = {object_key(item): self._typed(item) for item in listed["items"]}
        for key in [k for k in self.cache if k not in fresh]:
            self._on_change(self.resource, self.cache.pop(key), None)
        for key, item in fresh.items():
            old = self.cache.get(key)
            if old is None or resource_version(old) != resource_version(item):
                self.cache[key] = item
                self._on_change(self.resource, old, item)
        self.synced.set()
        return str(listed["metadata"]["resourceVersion"])

    def _apply(self, event_type: str, obj: Obj) -> None:
        obj = self._typed(obj)
        key = object_key(obj)
        old = self.cache.get(key)
        if event_type == "DELETED":
            self.cache.pop(key, None)
            self._on_change(self.resource, old, None)
            return
        if old is not None and resource_version(old) > resource_version(obj):
            return  # the controller already stored a newer version it wrote itself
        self.cache[key] = obj
        self._on_change(self.resource, old, obj)

    def remember(self, obj: Obj) -> None:
        """Keep an object the controller just wrote (`storeObjectUpdate`), unless the cache has newer."""
        key = object_key(obj)
        if resource_version(self.cache.get(key)) < resource_version(obj):
            self.cache[key] = self._typed(obj)


class KeyQueue:
    """A work queue of hashable keys: fair, stingy, re-runs keys added while processing, backs off."""

    def __init__(self, *, base_delay: float = 0.01, max_delay: float = 1.0) -> None:
        self._queue: asyncio.Queue[Hashable] = asyncio.Queue()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self.base_delay = base_delay
        self.max_delay = max_delay

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.put_nowait(key)

    def add_after(self, key: Hashable, delay: float) -> None:
        if key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: Hashable) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, min(self.base_delay * 2**failures, self.max_delay))

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    async def get(self) -> Hashable:
        key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.put_nowait(key)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()


class Controller:
    """Base of the stand-ins: informers for `resources`, a `KeyQueue`, one worker running `sync`.

    Subclasses set `name` and `resources` and implement `keys_for` (which keys a change touches) and
    `sync` (reconcile one key; raise to retry it with backoff). `extra_tasks()` may add long-running
    coroutines (the kubelet's plugin watcher). `run()` returns only by cancellation.
    """

    name: ClassVar[str] = "controller"
    resources: ClassVar[tuple[str, ...]] = ()
    expected_errors: ClassVar[tuple[type[Exception], ...]] = ()
    """Failures that only mean "not yet" (logged at debug level, retried like any other)."""

    def __init__(self, store: Store, *, resync_period: float = 15.0) -> None:
        self.store = store
        self.resync_period = resync_period
        self.queue = KeyQueue()
        self.informers = {
            r: Informer(store, r, self._changed, **self.informer_options(r)) for r in self.resources
        }

    def informer_options(self, resource: str) -> dict[str, Any]:
        """Per-resource informer options (a field selector); none by default."""
        return {}

    def cache(self, resource: str) -> dict[str, Obj]:
        """The informer cache of `resource`, keyed `namespace/name` or `name`."""
        return self.informers[resource].cache

    def cached(self, resource: str, key: str) -> Obj | None:
        return self.informers[resource].cache.get(key)

    def remember(self, resource: str, obj: Obj) -> Obj:
        """Put an object this controller just wrote into its cache; returns it."""
        self.informers[resource].remember(obj)
        return obj

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        return ()

    def resync_keys(self) -> Iterable[Key]:
        """What the periodic resync re-enqueues (every object's keys, by default)."""
        for resource, informer in self.informers.items():
            for obj in list(informer.cache.values()):
                yield from self.keys_for(resource, obj, obj)

    async def sync(self, key: Key) -> None:
        raise NotImplementedError

    def _changed(self, resource: str, old: Obj | None, new: Obj | None) -> None:
        for key in self.keys_for(resource, old, new):
            self.queue.add(key)

    def extra_tasks(self) -> dict[str, Any]:
        """Additional coroutines to run next to the informers and the worker, by task name."""
        return {}

    async def run(self) -> None:
        """Run the informers, wait for their first list, then the worker and the resync (until cancelled)."""
        try:
            async with asyncio.TaskGroup() as tasks:
                for resource, informer in self.informers.items():
                    tasks.create_task(informer.run(), name=f"{self.name} informer {resource}")
                for informer in self.informers.values():
                    await informer.synced.wait()
                for task_name, coroutine in self.extra_tasks().items():
                    tasks.create_task(coroutine, name=f"{self.name} {task_name}")
                tasks.create_task(self._work(), name=f"{self.name} worker")
                tasks.create_task(self._resync(), name=f"{self.name} resync")
        finally:
            self.queue.close()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_period)
            for key in self.resync_keys():
                self.queue.add(key)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.sync(key)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                report = log.debug if isinstance(exc, self.expected_errors) else log.info
                report("sync failed, will retry", controller=self.name, key=key, error=str(exc))
                self.queue.retry(key)
            else:
                self.queue.forget(key)
            finally:
                self.queue.done(key)


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait for it, swallowing its cancellation."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
