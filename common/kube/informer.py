"""Informers: list+watch one resource into a local cache and tell handlers what changed.

Three layers, as in client-go's reflector:

* `run` — forever: `list_then_watch`, and after a failure wait with backoff and go again.
* `list_then_watch` — list (paginated with `limit`/`continue`) and replace the cache, emitting the
  differences as add/update/delete (deletes that happened while we were away included); then watch
  from the list's resourceVersion until the watch fails. A watch that ends normally (the server's
  `timeoutSeconds`) or drops is resumed from the last resourceVersion seen, bookmarks included, with
  no relist. Only 410 Gone (our resourceVersion was compacted away) returns to relist.
* `watch_once` — one watch request with `allowWatchBookmarks` and `timeoutSeconds`, and an
  inactivity deadline in case the connection hangs without closing.

resourceVersion policy (client-go `relistResourceVersion`): the first list asks for
`resourceVersion=0`, which the API server may answer from its watch cache (cheap, maybe slightly
stale, fine for a first sync); a relist after 410 asks for `""`, a consistent read, because the cache
we had is known to be too old.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from common.backoff import Backoff
from common.kube.cache import IndexFunc, Object, Store
from common.kube.client import ApiError, KubeClient
from common.kube.resources import Resource, object_key
from common.logging import get_logger

log = get_logger(__name__)

MIN_WATCH_TIMEOUT = 300.0
PAGE_SIZE = 500


class Handler(Protocol):
    """Receives cache changes. Called in the informer's task: keep it quick (enqueue a key)."""

    def on_add(self, obj: Object) -> None: ...

    def on_update(self, old: Object, new: Object) -> None: ...

    def on_delete(self, obj: Object) -> None: ...


@dataclass(slots=True)
class FuncHandler:
    """A `Handler` from plain functions; missing ones do nothing."""

    add: Callable[[Object], None] | None = None
    update: Callable[[Object, Object], None] | None = None
    delete: Callable[[Object], None] | None = None

    def on_add(self, obj: Object) -> None:
        if self.add:
            self.add(obj)

    def on_update(self, old: Object, new: Object) -> None:
        if self.update:
            self.update(old, new)

    def on_delete(self, obj: Object) -> None:
        if self.delete:
            self.delete(obj)


def drop_managed_fields(obj: Object) -> Object:
    """The default transform: `managedFields` is large and no sidecar reads it."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def shape_problem(obj: Any) -> str | None:
    """What makes `obj` unusable as an API object ("" fields aside), or None when its shape is right:
    metadata an object with a non-empty string name, string namespace/uid/resourceVersion, string maps
    for labels and annotations, a string list for finalizers; spec and status objects (or null)."""
    if not isinstance(obj, dict):
        return f"not an object but {type(obj).__name__}"
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return "metadata is not an object"
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        return "metadata.name is missing or not a string"
    for field in ("namespace", "uid", "resourceVersion", "deletionTimestamp"):
        if meta.get(field) is not None and not isinstance(meta[field], str):
            return f"metadata.{field} is not a string"
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            return f"metadata.{field} is not a map of strings"
    finalizers = meta.get("finalizers")
    if finalizers is not None and not (
        isinstance(finalizers, list) and all(isinstance(f, str) for f in finalizers)
    ):
        return "metadata.finalizers is not a list of strings"
    for field in ("spec", "status"):
        if obj.get(field) is not None and not isinstance(obj[field], dict):
            return f"{field} is not an object"
    return None


def _rv(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


class Informer:
    """A list+watch of one resource (optionally one namespace and selectors) into a `Store`."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        resync: float = 0.0,
        transform: Callable[[Object], Object] = drop_managed_fields,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync = resync
        self.transform = transform
        self.page_size = PAGE_SIZE
        """Objects per list page. A page is parsed whole before `transform` runs, so a smaller page lowers
        the peak memory of listing big objects (e.g. every Pod in the cluster) for more requests."""
        self.store = Store()
        self.resource_version = ""
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._backoff = Backoff(initial=0.8, cap=30.0, factor=2.0, jitter=1.0)

    @property
    def name(self) -> str:
        return str(self.resource)

    # Public surface.

    def add_handler(self, handler: Handler) -> None:
        """Subscribe; objects already cached are replayed as adds, as client-go does."""
        self._handlers.append(handler)
        for obj in self.store:
            handler.on_add(obj)

    def add_index(self, name: str, func: IndexFunc) -> None:
        self.store.add_index(name, func)

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def get(self, name: str, namespace: str | None = None) -> Object | None:
        return self.store.get_by_name(name, namespace)

    async def run(self) -> None:
        """List, watch, and after any failure back off and do it again, until cancelled."""
        consistent = False
        while True:
            try:
                consistent = await self.list_then_watch(consistent_list=consistent)
                self._backoff.reset()
                continue
            except ApiError as exc:
                delay = self._backoff.next()
                log.info(
                    "watch failed, retrying", resource=self.name, error=str(exc), seconds=round(delay, 2), v=2
                )
            await asyncio.sleep(delay)

    async def run_resync(self) -> None:
        """Every `resync` seconds, hand every cached object to the handlers as an update."""
        if self.resync <= 0:
            return
        while True:
            await asyncio.sleep(self.resync)
            for obj in self.store:
                for handler in self._handlers:
                    handler.on_update(obj, obj)

    # The layers.

    async def list_then_watch(self, *, consistent_list: bool) -> bool:
        """Relist if needed, then watch until 410 (returns True: relist consistently next)."""
        if not self.resource_version or consistent_list:
            await self._list("" if consistent_list else "0")
        while True:
            try:
                await self.watch_once()
            except ApiError as exc:
                if exc.gone:
                    log.info("watch expired, relisting", resource=self.name, rv=self.resource_version, v=2)
                    return True
                raise
            self._backoff.reset()

    async def _list(self, resource_version: str) -> None:
        items: list[Object] = []
        token = ""
        while True:
            page = await self.client.list(
                self.resource,
                namespace=self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                limit=self.page_size,
                continue_token=token,
                resource_version=resource_version if not token else None,
            )
            items.extend(obj for item in page.get("items") or () if (obj := self._accept(item)) is not None)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        self.resource_version = str((page.get("metadata") or {}).get("resourceVersion", ""))
        self._replace(items)
        self._synced.set()
        log.info("listed", resource=self.name, objects=len(items), rv=self.resource_version, v=4)

    def _replace(self, items: list[Object]) -> None:
        fresh = {object_key(obj): obj for obj in items}
        for key in self.store.list_keys():
            if key not in fresh:
                gone = self.store.remove(key)
                if gone is not None:
                    self._notify("DELETED", None, gone)
        for obj in fresh.values():
            old = self.store.put(obj)
            if old is None:
                self._notify("ADDED", None, obj)
            elif _rv(old) != _rv(obj):  # unchanged objects are re-announced by resync, not by a relist
                self._notify("MODIFIED", old, obj)

    async def watch_once(self) -> None:
        """One watch request from `resource_version`; returns when the server ends it."""
        timeout = int(MIN_WATCH_TIMEOUT * (1 + random.random()))
        query = {
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        path = self.resource.path(namespace=self.namespace)
        async for event in self.client.watch(path, query=query, inactivity_timeout=timeout + 30.0):
            self._apply(event)

    def _accept(self, obj: Any) -> Object | None:
        """`obj` transformed, or None (logged with its name) when it is not a well-formed object.

        The API server validates what it stores, so this guards against what should never come: a
        proxy, a bug or a version skew serving an object whose metadata, spec or status has the wrong
        shape. Such an object is skipped, as if the event never came; the informer goes on.
        """
        problem = shape_problem(obj)
        if problem is None:
            try:
                obj = self.transform(obj)
                object_key(obj)
                self.store.index_values(obj)
            except Exception as exc:  # a transform or index that cannot read it: the same verdict
                problem = f"cannot be read: {exc!r}"
        if problem is None:
            return obj  # type: ignore[no-any-return]
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        log.warning(
            "skipping malformed object",
            resource=self.name,
            name=repr(name),
            namespace=repr(namespace),
            problem=problem,
        )
        return None

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = str(meta.get("resourceVersion", "")) if isinstance(meta, dict) else ""
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("unexpected watch event", resource=self.name, type=kind)
            return
        accepted = self._accept(obj)
        if accepted is None:
            return
        obj, key = accepted, object_key(accepted)
        if kind == "DELETED":
            old = self.store.remove(key)
            self._notify("DELETED", None, old or obj)
        else:
            old = self.store.put(obj)
            if old is not None and rv and _rv(old) == rv:
                pass  # the cache had it already (a controller wrote its answer through): not news
            else:
                self._notify("MODIFIED" if old is not None else "ADDED", old, obj)
        if rv:
            self.resource_version = rv

    def _notify(self, kind: str, old: Object | None, obj: Object) -> None:
        for handler in self._handlers:
            try:
                if kind == "ADDED":
                    handler.on_add(obj)
                elif kind == "MODIFIED":
                    handler.on_update(old if old is not None else obj, obj)
                else:
                    handler.on_delete(obj)
            except Exception as exc:  # a handler bug must not stop the informer
                log.error("event handler failed", resource=self.name, key=object_key(obj), error=repr(exc))


class InformerFactory:
    """One informer per (resource, namespace, selectors), shared by every controller in the process."""

    def __init__(self, client: KubeClient, *, resync: float = 0.0) -> None:
        self.client = client
        self.resync = resync
        self._informers: dict[tuple[Resource, str | None, str, str], Informer] = {}

    def informer(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        transform: Callable[[Object], Object] = drop_managed_fields,
    ) -> Informer:
        key = (resource, namespace, label_selector, field_selector)
        if key not in self._informers:
            self._informers[key] = Informer(
                self.client,
                resource,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                resync=self.resync,
                transform=transform,
            )
        return self._informers[key]

    @property
    def informers(self) -> list[Informer]:
        return list(self._informers.values())

    def start(self, group: asyncio.TaskGroup) -> None:
        """Start every informer (and its resync) as named tasks of `group`."""
        for informer in self._informers.values():
            group.create_task(informer.run(), name=f"informer {informer.name}")
            if informer.resync > 0:
                group.create_task(informer.run_resync(), name=f"resync {informer.name}")

    async def wait_synced(self) -> None:
        await asyncio.gather(*(informer.wait_synced() for informer in self._informers.values()))
