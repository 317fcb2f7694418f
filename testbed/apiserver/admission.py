"""Admission plugins of a default kube-apiserver that a storage sidecar can observe.

* NamespaceLifecycle: no new objects in a missing (404) or terminating (403) namespace; the
  immortal namespaces cannot be deleted.
* DefaultStorageClass: a PVC without `storageClassName` gets the default class, if one is marked.
* StorageObjectInUseProtection (switchable, on by default as in the golden capture): new PVCs get
  `kubernetes.io/pvc-protection`, new PVs `kubernetes.io/pv-protection`.
* PersistentVolumeClaimResize: a PVC may only grow when bound and its class allows expansion (403).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from testbed.apiserver import errors
from testbed.apiserver.quantity import storage_of
from testbed.apiserver.resources import ResourceType

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], Obj | None]
"""(resource key, namespace, name) -> the stored object, read-only, or None."""

PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


def admit_create(
    rtype: ResourceType,
    obj: Obj,
    *,
    lookup: Lookup,
    storage_classes: Callable[[], Iterable[Obj]],
    protection: bool,
) -> None:
    """Mutating and validating create admission; raises the plugin's error."""
    meta = obj["metadata"]
    if rtype.namespaced:
        namespace = lookup("namespaces", "", meta["namespace"])
        if namespace is None:
            raise errors.not_found("namespaces", "", meta["namespace"])
        if namespace["metadata"].get("deletionTimestamp"):
            raise errors.forbidden_request(
                rtype.plural,
                rtype.group,
                meta.get("name", ""),
                f"unable to create new content in namespace {meta['namespace']} "
                "because it is being terminated",
            )
    if rtype.key == "persistentvolumeclaims":
        spec = obj.setdefault("spec", {})
        if spec.get("storageClassName") is None and (default := _default_class(storage_classes())):
            spec["storageClassName"] = default
    if protection and rtype.key in ("persistentvolumeclaims", "persistentvolumes"):
        finalizer = PVC_PROTECTION if rtype.key == "persistentvolumeclaims" else PV_PROTECTION
        finalizers = meta.setdefault("finalizers", [])
        if finalizer not in finalizers:
            finalizers.append(finalizer)


def _default_class(classes: Iterable[Obj]) -> str | None:
    defaults = [
        c
        for c in classes
        if any((c["metadata"].get("annotations") or {}).get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS)
    ]
    if not defaults:
        return None
    newest = max(defaults, key=lambda c: (c["metadata"]["creationTimestamp"], c["metadata"]["name"]))
    return str(newest["metadata"]["name"])


def admit_update(rtype: ResourceType, new: Obj, old: Obj, *, subresource: str, lookup: Lookup) -> None:
    """PersistentVolumeClaimResize on updates of the main PVC resource."""
    if rtype.key != "persistentvolumeclaims" or subresource:
        return
    old_size = storage_of((old.get("spec", {}).get("resources") or {}).get("requests"))
    new_size = storage_of((new.get("spec", {}).get("resources") or {}).get("requests"))
    if old_size is None or new_size is None or new_size <= old_size:
        return
    name = new["metadata"]["name"]
    if (old.get("status") or {}).get("phase") != "Bound":
        raise errors.forbidden_request(
            rtype.plural, "", name, "Only bound persistent volume claims can be expanded"
        )
    class_name = new["spec"].get("storageClassName") or ""
    storage_class = lookup("storageclasses", "", class_name) if class_name else None
    if not storage_class or not storage_class.get("allowVolumeExpansion"):
        raise errors.forbidden_request(
            rtype.plural,
            "",
            name,
            "only dynamically provisioned pvc can be resized and the storageclass that provisions "
            "the pvc must support resize",
        )


def admit_delete(rtype: ResourceType, name: str) -> None:
    if rtype.key == "namespaces" and name in IMMORTAL_NAMESPACES:
        raise errors.forbidden_request("namespaces", "", name, "this namespace may not be deleted")
