"""The PersistentVolume for a provisioned volume, field for field as external-provisioner writes it.

From the claim, its StorageClass, the prepared request (sidecars.provisioner.request) and the
CreateVolume answer:

* metadata: name = the volume name; annotations `pv.kubernetes.io/provisioned-by` and the
  provisioner-deletion secret name/namespace (always, "" without a secret); finalizer
  `external-provisioner.volume.kubernetes.io/finalizer`;
* spec: accessModes and volumeMode of the claim, mountOptions and reclaim policy of the class,
  capacity = the answered `capacity_bytes` in binary-SI form (the request when the driver said 0),
  `csi` (driver, volumeHandle, fsType unless Block, volumeAttributes = our identity plus the
  volume_context, the controller-publish/node-stage/node-publish/controller-expand/node-expand secret
  references, readOnly for a ReadOnlyMany-only claim with `--controller-publish-readonly`),
  nodeAffinity from accessible_topology (topology drivers only), volumeAttributesClassName, claimRef
  and storageClassName.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.govalues import go_quote
from common.quantity import format_quantity
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.request import Prepared
from sidecars.provisioner.topology import node_affinity

Obj = dict[str, Any]


def claim_reference(claim: Mapping[str, Any]) -> dict[str, str]:
    """`ref.GetReference(claim)`: the claimRef of the PV."""
    meta = claim.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": str(meta.get("name", "")),
        "namespace": str(meta.get("namespace", "")),
        "resourceVersion": str(meta.get("resourceVersion", "")),
        "uid": str(meta.get("uid", "")),
    }


def read_only(prepared: Prepared, *, controller_publish_readonly: bool) -> bool:
    caps = list(prepared.request.volume_capabilities)
    rox = csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY
    return controller_publish_readonly and len(caps) == 1 and caps[0].access_mode.mode == rox


@dataclass(frozen=True, kw_only=True)
class PVSettings:
    """What every PV of this process shares."""

    driver: str
    """The driver name (`spec.csi.driver`)."""
    identity: str
    """`storage.kubernetes.io/csiProvisionerIdentity` (names.provisioner_identity)."""
    topology: bool
    """The driver supports topology: write nodeAffinity."""
    controller_publish_readonly: bool = False
    """`--controller-publish-readonly`."""
    volume_attributes_class: bool = True
    """Feature gate VolumeAttributesClass."""


_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def _label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value) is not None)


def invalid_topology(accessible_topology: Sequence[Mapping[str, str]]) -> str:
    """Why the API server would refuse a PV's node affinity built from these segments ("" if it would
    not): keys must be label keys, values label values. Upstream does not check; its PV is refused
    by the API server on every try and the volume is never used."""
    for segment in accessible_topology:
        for key, value in segment.items():
            if not _label_key(key):
                return f"segment key {go_quote(key)} is not a valid label key"
            if not _label_value(value):
                return f"segment value {go_quote(value)} of {go_quote(key)} is not a valid label value"
    return ""


def build_pv(
    claim: Mapping[str, Any], sc: Mapping[str, Any], prepared: Prepared, volume: Any, settings: PVSettings
) -> Obj:
    """The PV object to create for `volume` (a csi_pb2.Volume) provisioned for `claim`."""
    spec_in = claim.get("spec") or {}
    capacity = volume.capacity_bytes or prepared.request.capacity_range.required_bytes
    attributes = {names.PROVISIONER_ID_KEY: settings.identity, **dict(volume.volume_context)}
    csi: Obj = {"driver": settings.driver, "volumeHandle": volume.volume_id}
    if prepared.fs_type and not names.is_block(claim):
        csi["fsType"] = prepared.fs_type
    csi["volumeAttributes"] = attributes
    for field, ref in prepared.secret_refs.items():
        csi[field] = dict(ref)
    if read_only(prepared, controller_publish_readonly=settings.controller_publish_readonly):
        csi["readOnly"] = True
    secret_name, secret_namespace = prepared.deletion_secret
    spec: Obj = {
        "accessModes": list(spec_in.get("accessModes") or []),
        "capacity": {"storage": format_quantity(capacity, binary=True)},
        "claimRef": claim_reference(claim),
        "csi": csi,
        "storageClassName": names.claim_class(claim),
    }
    if sc.get("mountOptions"):
        spec["mountOptions"] = list(sc["mountOptions"])
    if sc.get("reclaimPolicy"):
        spec["persistentVolumeReclaimPolicy"] = sc["reclaimPolicy"]
    if spec_in.get("volumeMode"):
        spec["volumeMode"] = spec_in["volumeMode"]
    if settings.topology:
        affinity = node_affinity([dict(t.segments) for t in volume.accessible_topology])
        if affinity is not None:
            spec["nodeAffinity"] = affinity
    if settings.volume_attributes_class and spec_in.get("volumeAttributesClassName"):
        spec["volumeAttributesClassName"] = spec_in["volumeAttributesClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": prepared.request.name,
            "annotations": {
                names.ANN_PROVISIONED_BY: str(sc.get("provisioner", "")),
                names.ANN_DELETION_SECRET_NAME: secret_name,
                names.ANN_DELETION_SECRET_NAMESPACE: secret_namespace,
            },
            "finalizers": [names.PV_FINALIZER],
        },
        "spec": spec,
    }
