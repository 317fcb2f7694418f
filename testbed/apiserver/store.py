"""The store: kube-apiserver's registry and etcd in one object, with every semantic a client can observe.

Usage (in-process, as the control-plane stand-ins use it; the HTTP layer is a thin shell over it)::

    store = Store()
    pvc = await store.create("persistentvolumeclaims", pvc, namespace="default")
    pvc["metadata"]["annotations"] = {"a": "1"}
    pvc = await store.update("persistentvolumeclaims", pvc)         # 409 Conflict if pvc is stale
    pvc = await store.update_status("persistentvolumeclaims", pvc)  # only status changes are kept
    await store.patch("persistentvolumes", "pv-1", {"metadata": {"finalizers": ["x"]}})  # strategic
    async with store.watch("persistentvolumeclaims", pvc["metadata"]["resourceVersion"]) as events:
        async for event in events:                                  # WatchEvent(type, object)
            ...

Resources are named by their store key: the plural for core and unambiguous resources
(`"volumeattachments"`), `plural.group` otherwise (`"events.events.k8s.io"`). Every method returns a
private copy; failures raise `errors.ApiError` subclasses carrying the exact `Status` body.

Semantics (each matches the real server, see tests/testbed): one global resourceVersion counter;
create fills uid, creationTimestamp, generation, defaults, admission finalizers and generateName;
updates with a stale resourceVersion are 409 and no-op updates write nothing; status goes through
`/status` only; deletion with finalizers sets deletionTimestamp and the object goes when the last
finalizer does; lists paginate from a consistent snapshot; watches replay from any kept
resourceVersion, else 410.
"""

from __future__ import annotations

import builtins
import copy
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from testbed.apiserver import admission, errors, lifecycle, validation
from testbed.apiserver.deletion import DeleteOptions, DeletionMixin
from testbed.apiserver.listing import ListOptions, parse_rv, select
from testbed.apiserver.patch import MalformedPatch, PatchError, json_patch, merge_patch
from testbed.apiserver.resources import Registry, ResourceType
from testbed.apiserver.selectors import FieldSelector, LabelSelector
from testbed.apiserver.strategic import strategic_merge_patch
from testbed.apiserver.watch import ADDED, DELETED, MODIFIED, Change, Entry, History, Watch, WatchFilter

Obj = dict[str, Any]
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
STRATEGIC_UNSUPPORTED = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)


def clone(obj: Obj) -> Obj:
    """A deep copy through JSON, which also rejects what is not JSON (a datetime, a set)."""
    try:
        copied: Obj = json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise errors.BadRequest(f"the object is not valid JSON: {exc}") from None
    return copied


class Store(DeletionMixin):
    """All objects, the change history and the watches of one test-bed API server.

    `history_size` is how many changes are kept for watch resumption and consistent list pages (a
    watch from an older resourceVersion gets 410). `storage_object_in_use_protection` switches the
    admission plugin that adds the pvc/pv-protection finalizers. `bookmark_interval` is how long a
    bookmark-enabled watch may stay silent before it gets a BOOKMARK. `clock` gives the wall time
    used for timestamps; `seed` makes uids and generated names reproducible.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        history_size: int = 5000,
        storage_object_in_use_protection: bool = True,
        bookmark_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ):
        self.registry = registry or Registry()
        self.history = History(history_size)
        self.storage_object_in_use_protection = storage_object_in_use_protection
        self.bookmark_interval = bookmark_interval
        self.clock = clock
        self._rng = random.Random(seed)
        self._rv = 0
        self._objects: dict[str, dict[str, Entry]] = {r.key: {} for r in self.registry.resources}
        self._watches: dict[str, set[Watch]] = defaultdict(set)
        for name in SYSTEM_NAMESPACES:
            self._create(
                self.registry.get("namespaces"),
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            )

    # ---- bookkeeping ----------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion (what a list made now reports)."""
        return self._rv

    def compact(self) -> int:
        """Forget all history now: older watches and continue tokens get 410. Returns the compacted RV."""
        self.history.compact(self._rv)
        return self._rv

    def close_watches(self) -> int:
        """End every open watch (clients see the stream end and re-watch). Returns how many were open."""
        watches = [w for group in self._watches.values() for w in group]
        for watch in watches:
            watch.close()
        return len(watches)

    def state(self) -> Obj:
        return {
            "resourceVersion": self._rv,
            "compactedResourceVersion": self.history.compacted,
            "history": len(self.history),
            "objects": {key: len(objs) for key, objs in self._objects.items() if objs},
            "watches": {key: len(ws) for key, ws in self._watches.items() if ws},
        }

    def rtype(self, resource: str | ResourceType) -> ResourceType:
        try:
            return self.registry.get(resource)
        except KeyError:
            raise errors.resource_not_found() from None

    def _key(self, rtype: ResourceType, namespace: str, name: str) -> str:
        if rtype.namespaced:
            if not namespace:
                raise errors.BadRequest(f"a namespace is required for {rtype.plural}")
            return f"{namespace}/{name}"
        return name

    def _peek(self, resource: str, namespace: str, name: str) -> Obj | None:
        rtype = self.registry.get(resource)
        entry = self._objects[rtype.key].get(f"{namespace}/{name}" if rtype.namespaced else name)
        return entry.obj if entry else None

    def _entry(self, rtype: ResourceType, namespace: str, name: str) -> tuple[str, Entry]:
        key = self._key(rtype, namespace, name)
        entry = self._objects[rtype.key].get(key)
        if entry is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return key, entry

    def _commit(
        self, rtype: ResourceType, key: str, event: str, obj: Obj | None, prev: Entry | None
    ) -> Entry:
        """Write one change: bump the resourceVersion, store or remove, record, fan out to watches."""
        self._rv += 1
        if event == DELETED:
            assert prev is not None
            stamped = {**prev.obj, "metadata": {**prev.obj["metadata"], "resourceVersion": str(self._rv)}}
            entry = Entry(stamped, self._rv)
            del self._objects[rtype.key][key]
        else:
            assert obj is not None
            obj["metadata"]["resourceVersion"] = str(self._rv)
            entry = Entry(lifecycle.normalize(obj), self._rv)
            self._objects[rtype.key][key] = entry
        namespace = key.split("/", 1)[0] if rtype.namespaced else ""
        change = Change(self._rv, event, rtype.key, key, namespace, entry, prev)
        self.history.append(change)
        for watch in tuple(self._watches.get(rtype.key, ())):
            watch.offer(change)
        return entry

    # ---- create / get / list -------------------------------------------------------------------------

    async def create(self, resource: str, obj: Obj, *, namespace: str = "", dry_run: bool = False) -> Obj:
        """POST: the created object (201). AlreadyExists, Invalid, NotFound (namespace), Forbidden."""
        return self._create(self.rtype(resource), clone(obj), namespace=namespace, dry_run=dry_run)

    def _create(self, rtype: ResourceType, obj: Obj, *, namespace: str = "", dry_run: bool = False) -> Obj:
        obj = lifecycle.check_type(rtype, obj)
        namespace = namespace or lifecycle.meta_of(obj).get("namespace") or ""
        if rtype.namespaced and not namespace:
            raise errors.BadRequest(f"a namespace is required for {rtype.plural}")
        obj = lifecycle.prepare_create(rtype, obj, namespace=namespace, now=self.clock(), rng=self._rng)
        meta = obj["metadata"]
        admission.admit_create(
            rtype,
            obj,
            lookup=self._peek,
            storage_classes=lambda: [e.obj for e in self._objects["storageclasses"].values()],
            protection=self.storage_object_in_use_protection,
        )
        name = meta.get("name") or ""
        validation.check_create(rtype, obj)
        key = self._key(rtype, namespace, name)
        if key in self._objects[rtype.key]:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        obj = lifecycle.normalize(obj)
        if dry_run:
            return clone(obj)
        return self._commit(rtype, key, ADDED, obj, None).copy()

    async def get(self, resource: str, name: str, *, namespace: str = "") -> Obj:
        """GET one object; NotFound (golden cases 12, 13)."""
        return self._entry(self.rtype(resource), namespace, name)[1].copy()

    async def list(
        self,
        resource: str,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
    ) -> Obj:
        """LIST as the server answers it: `{kind: XList, metadata: {resourceVersion, continue?}, items}`."""
        rtype = self.rtype(resource)
        options = ListOptions(
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            continue_token=continue_token,
            resource_version=resource_version,
        )
        entries, meta = self.list_entries(rtype, options, namespace=namespace)
        items = [json.loads(e.item_json()) for e in entries]
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": meta,
            "items": items,
        }

    def list_entries(
        self, rtype: ResourceType, options: ListOptions, *, namespace: str = ""
    ) -> tuple[builtins.list[Entry], Obj]:
        """The stored versions a list returns and the list metadata (what the HTTP layer serializes)."""
        return select(
            self._objects[rtype.key], self.history, rtype, options, namespace=namespace, rv=self._rv
        )

    # ---- update / patch -------------------------------------------------------------------------------

    async def update(
        self, resource: str, obj: Obj, *, namespace: str = "", subresource: str = "", dry_run: bool = False
    ) -> Obj:
        """PUT: 409 Conflict on a stale metadata.resourceVersion, none given is unconditional (if allowed)."""
        rtype = self.rtype(resource)
        obj = lifecycle.check_type(rtype, clone(obj))
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or ""
        if rtype.namespaced and namespace and meta.get("namespace") not in (None, "", namespace):
            raise errors.BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        key, entry = self._entry(rtype, namespace or meta.get("namespace", ""), name)
        if meta.get("resourceVersion"):
            if meta["resourceVersion"] != str(entry.rv):
                raise errors.conflict(rtype.plural, rtype.group, name)
        elif not rtype.unconditional_update:
            cause = errors.invalid_value(
                "metadata.resourceVersion", None, "must be specified for an update", rendered="0x0"
            )
            raise errors.invalid(rtype.kind, rtype.group, name, [cause])
        return self._apply_update(rtype, key, entry, obj, subresource=subresource, dry_run=dry_run)

    async def update_status(
        self, resource: str, obj: Obj, *, namespace: str = "", dry_run: bool = False
    ) -> Obj:
        """PUT on /status: only the status of `obj` is kept (golden case 22)."""
        return await self.update(resource, obj, namespace=namespace, subresource="status", dry_run=dry_run)

    async def patch(
        self,
        resource: str,
        name: str,
        patch: Any,
        *,
        patch_type: str = "strategic",
        namespace: str = "",
        subresource: str = "",
        dry_run: bool = False,
    ) -> Obj:
        """PATCH: `patch_type` is "merge", "strategic" or "json"; a resourceVersion in it is a condition."""
        rtype = self.rtype(resource)
        key, entry = self._entry(rtype, namespace, name)
        try:
            if patch_type == "json":
                patched = json_patch(entry.copy(), patch)
            elif patch_type == "merge":
                if not isinstance(patch, dict):
                    raise MalformedPatch(
                        "json: cannot unmarshal array into Go value of type map[string]interface {}"
                    )
                patched = merge_patch(entry.copy(), patch)
            elif patch_type == "strategic" and not rtype.custom:
                patched = strategic_merge_patch(entry.copy(), copy.deepcopy(patch), rtype.kind)
            else:
                raise errors.UnsupportedMediaType(STRATEGIC_UNSUPPORTED)
        except PatchError:
            raise errors.unprocessable_patch() from None
        except MalformedPatch as exc:
            raise errors.BadRequest(str(exc)) from None
        if not isinstance(patched, dict) or not isinstance(patched.get("metadata", {}), dict):
            raise errors.BadRequest("the patched object is not a JSON object")
        meta = patched.setdefault("metadata", {})
        if meta.get("name") != name:
            raise errors.BadRequest(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if meta.get("resourceVersion") and meta["resourceVersion"] != str(entry.rv):
            raise errors.conflict(rtype.plural, rtype.group, name)
        return self._apply_update(rtype, key, entry, patched, subresource=subresource, dry_run=dry_run)

    def _apply_update(
        self, rtype: ResourceType, key: str, entry: Entry, new: Obj, *, subresource: str, dry_run: bool
    ) -> Obj:
        old = entry.obj
        uid = lifecycle.meta_of(new).get("uid")
        old_uid = old["metadata"]["uid"]
        if uid and uid != old_uid:
            detail = f"Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"
            raise errors.conflict(rtype.plural, rtype.group, old["metadata"]["name"], detail)
        new = lifecycle.prepare_update(rtype, old, new, subresource=subresource, now=self.clock())
        validation.check_update(rtype, new, old)
        admission.admit_update(rtype, new, old, subresource=subresource, lookup=self._peek)
        new = lifecycle.normalize(new)
        if self._finalized(rtype, new, old):
            new["metadata"]["resourceVersion"] = str(entry.rv)
            if not dry_run:
                self._commit(rtype, key, DELETED, None, entry)
                self._after_delete(rtype, key)
            return clone(new)
        if lifecycle.same_object(new, old):
            return entry.copy()
        if dry_run:
            return clone(new)
        return self._commit(rtype, key, MODIFIED, new, entry).copy()

    # ---- watch --------------------------------------------------------------------------------------------

    def watch(
        self,
        resource: str,
        resource_version: str | int = "",
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        allow_bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watch:
        """Watch from `resource_version` ("" or "0": synthetic ADDED for what exists, then changes).

        Raises Expired (410) if changes after `resource_version` are no longer kept, BadRequest for
        a bad selector. Iterate the returned `Watch` (`async for event in watch`), close it when done.
        """
        rtype = self.rtype(resource)
        labels = LabelSelector.parse(label_selector)
        fields = FieldSelector.parse(field_selector, rtype.field_error)
        rv_text = str(resource_version)
        since = None if rv_text in ("", "0") or send_initial_events else parse_rv(rv_text)
        if since is not None:
            self.history.check(since)
        selection = WatchFilter(rtype, namespace if rtype.namespaced else "", labels, fields)
        watch = Watch(
            selection,
            bookmarks=allow_bookmarks,
            bookmark_interval=self.bookmark_interval,
            current_rv=lambda: self._rv,
            on_close=lambda w: self._watches[rtype.key].discard(w),
        )
        if since is None:
            prefix = f"{namespace}/" if rtype.namespaced and namespace else ""
            objects = self._objects[rtype.key]
            for key in sorted(k for k in objects if k.startswith(prefix)):
                if selection.matches(objects[key]):
                    watch.push(ADDED, objects[key])
            if send_initial_events and allow_bookmarks:
                watch.push_bookmark(self._rv, {"k8s.io/initial-events-end": "true"})
        else:
            for change in self.history.since(since):
                if change.resource == rtype.key:
                    watch.offer(change)
        self._watches[rtype.key].add(watch)
        return watch


__all__ = ["DeleteOptions", "Store", "clone"]
