"""Names the provisioner reads and writes: annotations, finalizers, parameter keys, volume names, identity.

Every string here is external-provisioner's or sig-storage-lib-external-provisioner's (REFERENCE
§1.3, §6), except `INTENT_FINALIZER`, which is ours (see sidecars.provisioner.intent).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

# PVC annotations (read; selected-node is also removed to ask the scheduler to reschedule).
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_ALPHA_SELECTED_NODE = "volume.alpha.kubernetes.io/selected-node"
ANN_MIGRATED_TO = "pv.kubernetes.io/migrated-to"

# PV annotations (written).
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_DELETION_SECRET_NAME = "volume.kubernetes.io/provisioner-deletion-secret-name"
ANN_DELETION_SECRET_NAMESPACE = "volume.kubernetes.io/provisioner-deletion-secret-namespace"

PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
"""On every PV this driver owns with reclaim policy Delete, until its volume is deleted."""

INTENT_FINALIZER = "csi-sidecars.python/provisioning-intent"
"""Ours, not upstream's: on a PVC from before its first CreateVolume until its PV is saved or its
volume is confirmed gone (sidecars.provisioner.intent)."""

CLONE_FINALIZER = "provisioner.storage.kubernetes.io/cloning-protection"
"""On a clone source PVC, from provisioning until no Pending PVC clones it (sidecars.provisioner.clone)."""
SNAPSHOT_FINALIZER = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"
"""On a VolumeSnapshot being restored, until its PVC is provisioned (sidecars.provisioner.snapshots)."""
ANN_ALLOW_VOLUME_MODE_CHANGE = "snapshot.storage.kubernetes.io/allow-volume-mode-change"
"""On a VolumeSnapshotContent: "true" allows restoring it with another volumeMode."""
SNAPSHOT_KIND = "VolumeSnapshot"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
PVC_KIND = "PersistentVolumeClaim"

# CSIStorageCapacity labels (sidecars.provisioner.capacity).
CAPACITY_DRIVER_LABEL = "csi.storage.k8s.io/drivername"
CAPACITY_MANAGED_BY_LABEL = "csi.storage.k8s.io/managed-by"
MANAGED_BY = "external-provisioner"

PROVISIONER_ID_KEY = "storage.kubernetes.io/csiProvisionerIdentity"
"""The volumeAttributes key carrying this process's identity."""

CSI_PARAMETER_PREFIX = "csi.storage.k8s.io/"
PREFIXED_FSTYPE = CSI_PARAMETER_PREFIX + "fstype"
PVC_NAME_KEY = CSI_PARAMETER_PREFIX + "pvc/name"
PVC_NAMESPACE_KEY = CSI_PARAMETER_PREFIX + "pvc/namespace"
PV_NAME_KEY = CSI_PARAMETER_PREFIX + "pv/name"

Obj = dict[str, Any]


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def claim_key(claim: Mapping[str, Any]) -> str:
    """`namespace/name`, as upstream prints a claim (klog.KObj)."""
    meta = claim.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def claim_uid(claim: Mapping[str, Any]) -> str:
    return str((claim.get("metadata") or {}).get("uid", ""))


def claim_class(claim: Mapping[str, Any]) -> str:
    """`util.GetPersistentVolumeClaimClass`: the beta annotation, else `spec.storageClassName`."""
    beta = annotations_of(claim).get("volume.beta.kubernetes.io/storage-class")
    if beta is not None:
        return str(beta)
    return str((claim.get("spec") or {}).get("storageClassName") or "")


def storage_provisioner(claim: Mapping[str, Any]) -> str | None:
    """The provisioner the PV controller asked for (GA annotation, else beta); None if neither."""
    anns = annotations_of(claim)
    if ANN_STORAGE_PROVISIONER in anns:
        return str(anns[ANN_STORAGE_PROVISIONER])
    beta = anns.get(ANN_BETA_STORAGE_PROVISIONER)
    return None if beta is None else str(beta)


def selected_node(claim: Mapping[str, Any]) -> str | None:
    """The node the scheduler picked (GA annotation, else the 1.11 alpha one); None if neither."""
    anns = annotations_of(claim)
    if ANN_SELECTED_NODE in anns:
        return str(anns[ANN_SELECTED_NODE])
    alpha = anns.get(ANN_ALPHA_SELECTED_NODE)
    return None if alpha is None else str(alpha)


def is_block(claim: Mapping[str, Any]) -> bool:
    return (claim.get("spec") or {}).get("volumeMode") == "Block"


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def finalizers(obj: Mapping[str, Any]) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


class VolumeNameError(ValueError):
    """The PV name cannot be made (empty prefix, claim without UID)."""


def volume_name(prefix: str, pvc_uid: str, uuid_length: int) -> str:
    """`makeVolumeName`: `<prefix>-<uid>`, or with `uuid_length` >= 0 the UID without dashes, truncated."""
    if not prefix:
        raise VolumeNameError("volume name prefix cannot be of length 0")
    if not pvc_uid:
        raise VolumeNameError("corrupted PVC object, it is missing UID")
    if uuid_length == -1:
        return f"{prefix}-{pvc_uid}"
    return f"{prefix}-{pvc_uid.replace('-', '')[:uuid_length]}"


def provisioner_identity(driver: str, *, now: float | None = None, rand: random.Random | None = None) -> str:
    """`<unix millis>-<random 0..9999>-<driver>`: this process's `csiProvisionerIdentity`."""
    millis = int((time.time() if now is None else now) * 1000)
    number = (rand or random.Random()).randrange(10000)
    return f"{millis}-{number}-{driver}"


def typed(api_version: str, kind: str) -> Callable[[Obj], Obj]:
    """An informer transform: drop managedFields and fill apiVersion/kind, which list items lack
    (Events and claimRefs need them)."""

    def transform(obj: Obj) -> Obj:
        meta = obj.get("metadata")
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
        obj["apiVersion"], obj["kind"] = api_version, kind
        return obj

    return transform


def slim_node(obj: Obj) -> Obj:
    """An informer transform for Nodes: topology needs only the name and the labels."""
    meta = obj.get("metadata") or {}
    kept = {k: meta[k] for k in ("name", "labels", "resourceVersion", "uid") if k in meta}
    return {"metadata": kept}


def fnv1a_32(data: bytes) -> int:
    """Go's `hash/fnv.New32a`."""
    value = 0x811C9DC5
    for byte in data:
        value ^= byte
        value = (value * 0x01000193) & 0xFFFFFFFF
    return value


def name_with_max_length(base: str, suffix: str, max_length: int) -> str:
    """external-provisioner's `getNameWithMaxLength` (from openshift's namer): `base-suffix`, or when
    that is too long the base shortened and an FNV-1a hash added (`base-hash-suffix`, or `base-hash`
    when even the suffix does not fit). Used for the managed-by label with `--node-deployment`."""
    name = f"{base}-{suffix}"
    if len(name) <= max_length:
        return name
    base_length = max_length - 10 - len(suffix)
    if base_length < 0:
        prefix = base[: min(len(base), max(0, max_length - 9))]
        short = f"{prefix}-{fnv1a_32(name.encode()):08x}"
        return short[: min(max_length, len(short))]
    return f"{base[:base_length]}-{fnv1a_32(base.encode()):08x}-{suffix}"
