"""The resource table: one `ResourceType` row per served resource, and the registry to look rows up.

A row says everything the store and the HTTP layer need about a resource: where it lives (group,
version, plural, namespaced), what discovery says about it, which field selectors it accepts (and the
error for the others), its defaults, create/update preparation and validation functions, and the
strategy flags of its registry (`generation`, status subresource, `ReturnDeletedObject`,
`AllowUnconditionalUpdate`). To serve a new resource, add a row.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from testbed.apiserver import defaults as d
from testbed.apiserver import validation as v
from testbed.apiserver.errors import Cause

Obj = dict[str, Any]
ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
DEFAULT_FIELD_LABELS = ("metadata.name", "metadata.namespace")


@dataclass(frozen=True)
class ResourceType:
    """One served resource, e.g. `persistentvolumeclaims` in core/v1."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    """Served subresources: "status" (and "finalize" for namespaces)."""
    field_labels: tuple[str, ...] | None = None
    """Field selectors accepted beyond none; None is the default conversion (name and namespace only)."""
    field_aliases: Mapping[str, str] = field(default_factory=dict)
    """Field label -> object path when they differ (core Event `source` is `source.component`)."""
    defaults: Callable[[Obj], None] | None = None
    prepare_create: Callable[[Obj, float], None] | None = None
    prepare_update: Callable[[Obj, Obj, float], None] | None = None
    validate: Callable[[Obj], list[Cause]] | None = None
    validate_update: Callable[[Obj, Obj], list[Cause]] | None = None
    generation: bool = False
    """metadata.generation is set on create and bumped when the spec changes."""
    status_resets_metadata: bool = False
    """`ResetObjectMetaForStatus`: updates through /status cannot touch labels, annotations, finalizers."""
    return_deleted_object: bool = True
    """A delete answers with the object; otherwise with a `Status` of `status: Success`."""
    unconditional_update: bool = True
    """A PUT without metadata.resourceVersion is accepted (`AllowUnconditionalUpdate`)."""
    custom: bool = False
    """A custom resource (CRD): no strategic merge patch; generation bumps on any non-metadata change."""
    name_style: str = "subdomain"
    verbs: tuple[str, ...] = ALL_VERBS
    storage_gvk: str = ""
    """group/version/kind of the storage version when it differs (events.k8s.io Events are core Events)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """How the store names it: the plural (`persistentvolumeclaims`), or `plural.group` when a core
        resource has the same plural (`events.events.k8s.io`)."""
        if self.group and self.plural in _CORE_PLURALS:
            return f"{self.plural}.{self.group}"
        return self.plural

    @property
    def qualified_kind(self) -> str:
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def storage_version_hash(self) -> str:
        gvk = self.storage_gvk or f"{self.group}/{self.version}/{self.kind}"
        return base64.b64encode(hashlib.sha256(gvk.encode()).digest()[:8]).decode()

    def field_error(self, label: str) -> str | None:
        """None if `label` can be selected on, else the server's error message (golden case 27)."""
        if self.field_labels is None:
            if label in DEFAULT_FIELD_LABELS:
                return None
            return f'"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"'
        if label in self.field_labels or label in self.field_aliases:
            return None
        return f"field label not supported: {label}"

    def field_value(self, obj: Obj, label: str) -> str:
        node: Any = obj
        for part in self.field_aliases.get(label, label).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, bool):
            return "true" if node else "false"
        return "" if node is None else str(node)

    def discovery(self) -> list[Obj]:
        main: Obj = {"name": self.plural, "singularName": self.singular or self.kind.lower()}
        main.update({"namespaced": self.namespaced, "kind": self.kind, "verbs": list(self.verbs)})
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        main["storageVersionHash"] = self.storage_version_hash
        entries = [main]
        for sub in self.subresources:
            verbs = ["update"] if sub == "finalize" else ["get", "patch", "update"]
            entries.append(
                {"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced}
                | {"kind": self.kind, "verbs": verbs}
            )
        return entries


_CORE_PLURALS = {"events"}
"""Core plurals that a group resource shares (its store key then carries the group)."""
_STATUS = ("status",)
_POD_FIELDS = [
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.podIPs",
    "status.nominatedNodeName",
]
_EVENT_FIELDS = [
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
    "metadata.namespace",
    "metadata.name",
]


def _workload(plural: str, kind: str, short: str) -> ResourceType:
    return ResourceType(
        "apps",
        "v1",
        plural,
        kind,
        True,
        short_names=(short,),
        categories=("all",),
        subresources=_STATUS,
        generation=True,
        defaults=d.workload_defaults,
        field_labels=("metadata.name", "metadata.namespace", "status.replicas")
        if kind == "ReplicaSet"
        else None,
    )


def _snapshot(
    plural: str, kind: str, short: tuple[str, ...], *, namespaced: bool, status: bool
) -> ResourceType:
    return ResourceType(
        "snapshot.storage.k8s.io",
        "v1",
        plural,
        kind,
        namespaced,
        short_names=short,
        subresources=_STATUS if status else (),
        custom=True,
        generation=True,
        status_resets_metadata=True,
        prepare_create=d.status_reset if status else None,
    )


RESOURCES: tuple[ResourceType, ...] = (
    # core/v1
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        subresources=("finalize", "status"),
        field_labels=("status.phase", "metadata.name"),
        defaults=d.namespace_defaults,
        prepare_create=d.namespace_create,
        prepare_update=d.namespace_update,
        name_style="label",
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    ResourceType(
        "",
        "v1",
        "nodes",
        "Node",
        False,
        short_names=("no",),
        subresources=_STATUS,
        field_labels=("metadata.name", "spec.unschedulable"),
        defaults=d.node_defaults,
    ),
    ResourceType(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        True,
        short_names=("pvc",),
        subresources=_STATUS,
        defaults=d.pvc_defaults,
        prepare_create=d.pvc_create,
        validate=v.persistent_volume_claim,
        validate_update=v.persistent_volume_claim_update,
    ),
    ResourceType(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        False,
        short_names=("pv",),
        subresources=_STATUS,
        defaults=d.pv_defaults,
        prepare_create=d.pv_create,
        prepare_update=d.pv_update,
        validate=v.persistent_volume,
        validate_update=v.persistent_volume_update,
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        short_names=("po",),
        categories=("all",),
        subresources=_STATUS,
        field_labels=tuple(_POD_FIELDS),
        field_aliases={"spec.host": "spec.nodeName"},
        defaults=d.pod_defaults,
        prepare_create=d.pod_create,
        generation=True,
    ),
    ResourceType(
        "",
        "v1",
        "secrets",
        "Secret",
        True,
        field_labels=("type", "metadata.namespace", "metadata.name"),
        defaults=d.secret_defaults,
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    ResourceType(
        "",
        "v1",
        "events",
        "Event",
        True,
        short_names=("ev",),
        field_labels=tuple(_EVENT_FIELDS),
        field_aliases={"source": "source.component"},
        defaults=d.core_event_defaults,
        validate=v.core_event,
        return_deleted_object=False,
    ),
    # storage.k8s.io/v1
    ResourceType(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        False,
        short_names=("sc",),
        defaults=d.storage_class_defaults,
    ),
    ResourceType(
        "storage.k8s.io",
        "v1",
        "volumeattachments",
        "VolumeAttachment",
        False,
        subresources=_STATUS,
        defaults=d.volume_attachment_defaults,
        prepare_create=d.volume_attachment_create,
        validate=v.volume_attachment,
        validate_update=v.volume_attachment_update,
        status_resets_metadata=True,
        unconditional_update=False,
    ),
    ResourceType("storage.k8s.io", "v1", "csinodes", "CSINode", False),
    ResourceType("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False, defaults=d.csi_driver_defaults),
    ResourceType("storage.k8s.io", "v1", "csistoragecapacities", "CSIStorageCapacity", True),
    ResourceType(
        "storage.k8s.io",
        "v1",
        "volumeattributesclasses",
        "VolumeAttributesClass",
        False,
        short_names=("vac",),
    ),
    # coordination.k8s.io/v1, events.k8s.io/v1
    ResourceType(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        True,
        defaults=d.lease_defaults,
        validate=v.lease,
        return_deleted_object=False,
    ),
    ResourceType(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        True,
        short_names=("ev",),
        defaults=d.events_v1_defaults,
        validate=v.events_v1_event,
        return_deleted_object=False,
        storage_gvk="/v1/Event",
    ),
    # apps/v1: plain storage (the provisioner's capacity owner lookup GETs them)
    _workload("deployments", "Deployment", "deploy"),
    _workload("replicasets", "ReplicaSet", "rs"),
    _workload("statefulsets", "StatefulSet", "sts"),
    _workload("daemonsets", "DaemonSet", "ds"),
    # snapshot.storage.k8s.io/v1: the external-snapshotter CRDs
    _snapshot("volumesnapshots", "VolumeSnapshot", ("vs",), namespaced=True, status=True),
    _snapshot(
        "volumesnapshotcontents", "VolumeSnapshotContent", ("vsc", "vscs"), namespaced=False, status=True
    ),
    _snapshot("volumesnapshotclasses", "VolumeSnapshotClass", ("vsclass",), namespaced=False, status=False),
)

# The order of /apis on the real server (golden case 2); custom resource groups come after.
GROUP_ORDER = ("apps", "events.k8s.io", "storage.k8s.io", "coordination.k8s.io", "snapshot.storage.k8s.io")


class Registry:
    """Lookups over a resource table: by URL parts, by store key, by group."""

    def __init__(self, resources: Iterable[ResourceType] = RESOURCES):
        self.resources = tuple(resources)
        self._by_path = {(r.group, r.version, r.plural): r for r in self.resources}
        self._by_key = {r.key: r for r in self.resources}
        for r in self.resources:
            self._by_key.setdefault(f"{r.plural}.{r.group}" if r.group else r.plural, r)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def get(self, key: str | ResourceType) -> ResourceType:
        """The row for a store key (`"persistentvolumeclaims"`, `"leases.coordination.k8s.io"`); KeyError."""
        return key if isinstance(key, ResourceType) else self._by_key[key]

    def group_versions(self) -> list[tuple[str, str]]:
        found = {(r.group, r.version) for r in self.resources if r.group}
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return sorted(found, key=lambda gv: (order.get(gv[0], len(order)), gv[0], gv[1]))

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [r for r in self.resources if r.group == group and r.version == version]
