"""Deletion: graceful deletion, finalizers, preconditions, delete-collection and namespace termination.

What `Store.delete` does, after the generic registry's `Delete`/`BeforeDelete`:

* preconditions (`uid`, `resourceVersion`) that do not match are 409 (golden case 31);
* an object with finalizers (or a scheduled pod within its grace period) is only marked:
  `deletionTimestamp` and `deletionGracePeriodSeconds` are set and it stays (golden case 30); it goes
  when an update leaves it without finalizers (golden case 33);
* otherwise it is removed at once and watchers get DELETED with the deletion's resourceVersion;
* deleting a namespace marks it Terminating, deletes everything in it and removes it once empty
  (what the namespace controller does on a real cluster).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testbed.apiserver import admission, errors, lifecycle
from testbed.apiserver.listing import ListOptions
from testbed.apiserver.watch import DELETED, MODIFIED, Entry

if TYPE_CHECKING:
    from collections.abc import Callable

    from testbed.apiserver.resources import Registry, ResourceType

Obj = dict[str, Any]


@dataclass(frozen=True)
class DeleteOptions:
    """The parts of `metav1.DeleteOptions` the store honours."""

    uid: str | None = None
    """`preconditions.uid`."""
    resource_version: str | None = None
    """`preconditions.resourceVersion`."""
    grace_period_seconds: int | None = None
    """Pods only: overrides `spec.terminationGracePeriodSeconds`; 0 deletes at once."""
    dry_run: bool = False

    @classmethod
    def from_body(
        cls, body: Any, *, grace_period_seconds: int | None = None, dry_run: bool = False
    ) -> DeleteOptions:
        """Read a DeleteOptions JSON body (and the equivalent query parameters)."""
        body = body if isinstance(body, dict) else {}
        pre = body.get("preconditions") or {}
        grace = body.get("gracePeriodSeconds", grace_period_seconds)
        return cls(
            uid=pre.get("uid"),
            resource_version=pre.get("resourceVersion"),
            grace_period_seconds=None if grace is None else int(grace),
            dry_run=dry_run or bool(body.get("dryRun")),
        )


class DeletionMixin:
    """The delete half of `Store` (see that class for the attributes used here)."""

    if TYPE_CHECKING:
        registry: Registry
        _objects: dict[str, dict[str, Entry]]
        clock: Callable[[], float]

        def rtype(self, resource: str | ResourceType) -> ResourceType: ...
        def _entry(self, rtype: ResourceType, namespace: str, name: str) -> tuple[str, Entry]: ...
        def _commit(
            self, rtype: ResourceType, key: str, event: str, obj: Obj | None, prev: Entry | None
        ) -> Entry: ...
        def list_entries(
            self, rtype: ResourceType, options: ListOptions, *, namespace: str = ""
        ) -> tuple[list[Entry], Obj]: ...

    async def delete(
        self, resource: str, name: str, *, namespace: str = "", options: DeleteOptions | None = None
    ) -> Obj:
        """DELETE: the object (kept with deletionTimestamp, or as it was), or a `Status` for some kinds."""
        return self._delete(
            self.rtype(resource), name, namespace=namespace, options=options or DeleteOptions()
        )

    def _delete(self, rtype: ResourceType, name: str, *, namespace: str, options: DeleteOptions) -> Obj:
        admission.admit_delete(rtype, name)
        key, entry = self._entry(rtype, namespace, name)
        meta = entry.obj["metadata"]
        if options.uid is not None and options.uid != meta["uid"]:
            detail = (
                f"the UID in the precondition ({options.uid}) does not match the UID in record "
                f"({meta['uid']}). The object might have been deleted and then recreated"
            )
            raise errors.precondition_conflict(rtype.kind, rtype.group, name, detail)
        if options.resource_version is not None and options.resource_version != str(entry.rv):
            detail = (
                f"the ResourceVersion in the precondition ({options.resource_version}) does not match the "
                f"ResourceVersion in record ({entry.rv}). The object might have been modified"
            )
            raise errors.precondition_conflict(rtype.kind, rtype.group, name, detail)
        if rtype.key == "namespaces":
            return self._delete_namespace(rtype, key, entry, options)
        grace = self._grace_period(rtype, entry.obj, options)
        pending = meta.get("deletionTimestamp")
        if meta.get("finalizers") or grace > 0:
            if pending and grace >= int(meta.get("deletionGracePeriodSeconds") or 0):
                return entry.copy()
            marked = lifecycle.mark_deleted(rtype, entry.obj, now=self.clock(), grace=grace)
            if options.dry_run:
                return marked
            return self._commit(rtype, key, MODIFIED, lifecycle.normalize(marked), entry).copy()
        if options.dry_run:
            return entry.copy()
        self._commit(rtype, key, DELETED, None, entry)
        self._after_delete(rtype, key)
        if rtype.return_deleted_object:
            return entry.copy()
        details: Obj = {"name": name}
        if rtype.group:
            details["group"] = rtype.group
        details |= {"kind": rtype.plural, "uid": meta["uid"]}
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}

    def _grace_period(self, rtype: ResourceType, obj: Obj, options: DeleteOptions) -> int:
        """Only pods delete gracefully, and only once scheduled and not yet finished."""
        if rtype.key != "pods":
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Failed", "Succeeded"):
            return 0
        if options.grace_period_seconds is not None:
            return max(0, options.grace_period_seconds)
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def _finalized(self, rtype: ResourceType, new: Obj, old: Obj) -> bool:
        """True if an update removed the last finalizer of an object being deleted: it goes now."""
        old_meta, new_meta = old["metadata"], new["metadata"]
        if (
            not old_meta.get("deletionTimestamp")
            or new_meta.get("finalizers")
            or not old_meta.get("finalizers")
        ):
            return False
        return rtype.key != "pods" or new_meta.get("deletionGracePeriodSeconds") == 0

    def _after_delete(self, rtype: ResourceType, key: str) -> None:
        if rtype.namespaced:
            self._finish_namespace(key.split("/", 1)[0])

    async def delete_collection(
        self, resource: str, *, namespace: str = "", label_selector: str = "", field_selector: str = ""
    ) -> Obj:
        """DELETE on a collection: deletes what matches, answers the list of what was deleted."""
        rtype = self.rtype(resource)
        selection = ListOptions(label_selector=label_selector, field_selector=field_selector)
        entries, meta = self.list_entries(rtype, selection, namespace=namespace)
        items = []
        for entry in entries:
            obj_meta = entry.obj["metadata"]
            try:
                items.append(
                    self._delete(
                        rtype,
                        obj_meta["name"],
                        namespace=obj_meta.get("namespace", ""),
                        options=DeleteOptions(),
                    )
                )
            except errors.NotFound:
                continue
        items = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": meta,
            "items": items,
        }

    def _delete_namespace(self, rtype: ResourceType, key: str, entry: Entry, options: DeleteOptions) -> Obj:
        if options.dry_run:
            return entry.copy()
        if not entry.obj["metadata"].get("deletionTimestamp"):
            marked = lifecycle.mark_deleted(rtype, entry.obj, now=self.clock(), grace=0)
            marked["status"] = {**(marked.get("status") or {}), "phase": "Terminating"}
            entry = self._commit(rtype, key, MODIFIED, lifecycle.normalize(marked), entry)
        for resource in self.registry.resources:
            if not resource.namespaced:
                continue
            for obj_key in [k for k in self._objects[resource.key] if k.startswith(key + "/")]:
                obj_name = obj_key.split("/", 1)[1]
                try:
                    self._delete(
                        resource, obj_name, namespace=key, options=DeleteOptions(grace_period_seconds=0)
                    )
                except errors.NotFound:
                    continue
        self._finish_namespace(key)
        current = self._objects[rtype.key].get(key)
        return (current or entry).copy()

    def _finish_namespace(self, namespace: str) -> None:
        """Remove a terminating namespace once nothing is left in it (the namespace controller's job)."""
        rtype = self.registry.get("namespaces")
        entry = self._objects[rtype.key].get(namespace)
        if entry is None or not entry.obj["metadata"].get("deletionTimestamp"):
            return
        prefix = namespace + "/"
        for resource in self.registry.resources:
            if resource.namespaced and any(k.startswith(prefix) for k in self._objects[resource.key]):
                return
        if (entry.obj.get("spec") or {}).get("finalizers"):
            spec = {k: v for k, v in entry.obj["spec"].items() if k != "finalizers"}
            emptied = {**entry.obj, "spec": spec}
            entry = self._commit(rtype, namespace, MODIFIED, lifecycle.normalize(emptied), entry)
        if not entry.obj["metadata"].get("finalizers"):
            self._commit(rtype, namespace, DELETED, None, entry)
