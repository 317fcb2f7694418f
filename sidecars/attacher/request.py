"""The ControllerPublishVolume request of a VolumeAttachment: source, capability, read-only flag, node ID.

Pure functions over the API objects (plain dicts), as external-attacher's `csi_handler.go` and
`util.go` decide them:

* the source is `spec.source.persistentVolumeName` (the PV's `spec.csi`) or
  `spec.source.inlineVolumeSpec.csi`; both or neither is an error;
* volume_id = `csi.volumeHandle`, volume_context = `csi.volumeAttributes`, readonly = `csi.readOnly`
  (forced false unless the driver has PUBLISH_READONLY), secrets from `controllerPublishSecretRef`;
* one VolumeCapability: Block for `volumeMode: Block`, else Mount with `csi.fsType` (or
  `--default-fstype`) and the PV's mount options; the access mode comes from *all* the PV's access
  modes (csi-lib-utils `accessmodes`), with the SINGLE_NODE_* variants when the driver has
  SINGLE_NODE_MULTI_WRITER;
* the node ID is the CSINode's entry for the driver. Upstream has no other source on attach; we also
  read the Node's `csi.volume.kubernetes.io/nodeid` annotation (what kubelet wrote before CSINode
  existed), as the issue asks. On detach the `csi.alpha.kubernetes.io/node-id` annotation the attach
  recorded on the VolumeAttachment comes first after the CSINode, so a deleted Node still detaches.

Every failure is a `VolumeError` whose text is what upstream writes into `attachError.message` /
`detachError.message` (Go's `err.Error()`), e.g. `csinode.storage.k8s.io "node-1" not found`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.csi import capability
from common.leaderelection import sanitize_name
from proto import csi_pb2

Object = dict[str, Any]

NODE_ID_ANNOTATION = "csi.alpha.kubernetes.io/node-id"
"""On the VolumeAttachment: the node ID the attach used (upstream's `vaNodeIDAnnotation`)."""
NODE_IDS_ANNOTATION = "csi.volume.kubernetes.io/nodeid"
"""On the Node: kubelet's legacy JSON map driver name → node ID."""


class VolumeError(Exception):
    """Why an attach or detach failed, worded as upstream words it; `code` is the gRPC code number of a
    failed CSI call (upstream's `attachError.errorCode`), None for any other failure."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


def finalizer_name(driver: str) -> str:
    """`external-attacher/<driver, [^a-zA-Z0-9-] → '-'>` (+`X` after a final '-'), on the VA and the PV."""
    return "external-attacher/" + sanitize_name(driver)


def not_found(resource: str, name: str) -> VolumeError:
    """A lister's NotFound, as apimachinery prints it: `persistentvolume "pv-1" not found`."""
    return VolumeError(f'{resource} "{name}" not found')


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def pv_name_of(va: Mapping[str, Any]) -> str | None:
    """The PV a VolumeAttachment attaches, None for an inline volume."""
    source = (va.get("spec") or {}).get("source") or {}
    name = source.get("persistentVolumeName")
    return str(name) if name else None


def inline_spec_of(va: Mapping[str, Any]) -> Object | None:
    source = (va.get("spec") or {}).get("source") or {}
    spec = source.get("inlineVolumeSpec")
    return spec if isinstance(spec, dict) else None


def check_source(va: Mapping[str, Any]) -> None:
    """Exactly one of persistentVolumeName and inlineVolumeSpec (with a `csi` source), as upstream."""
    pv_name, inline = pv_name_of(va), inline_spec_of(va)
    if pv_name is not None and inline is not None:
        raise VolumeError("both InlineCSIVolumeSource and PersistentVolumeName specified in VA source")
    if pv_name is None and inline is None:
        raise VolumeError("neither InlineCSIVolumeSource nor PersistentVolumeName specified in VA source")
    if inline is not None and not inline.get("csi"):
        raise VolumeError("inline volume spec contains nil CSI source")


def csi_source(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """`spec.csi` of a PV spec; in-tree PVs are not translated (CSI migration is not supported)."""
    source = spec.get("csi")
    if not isinstance(source, dict):
        raise VolumeError("pv spec contained non-csi source that was not migrated")
    return source


def access_mode(
    modes: list[str], *, single_node_multi_writer: bool
) -> csi_pb2.VolumeCapability.AccessMode.Mode:
    """csi-lib-utils `ToCSIAccessMode` (common.csi.capability), failing with a VolumeError."""
    try:
        return capability.access_mode(modes, single_node_multi_writer=single_node_multi_writer)
    except capability.AccessModeError as err:
        raise VolumeError(str(err)) from None


def volume_capability(
    spec: Mapping[str, Any], *, single_node_multi_writer: bool, default_fstype: str
) -> csi_pb2.VolumeCapability:
    """external-attacher `GetVolumeCapabilities` (common.csi.capability), failing with a VolumeError."""
    try:
        return capability.volume_capability(
            spec, single_node_multi_writer=single_node_multi_writer, default_fstype=default_fstype
        )
    except capability.AccessModeError as err:
        raise VolumeError(str(err)) from None


@dataclass(frozen=True, kw_only=True)
class Publish:
    """What ControllerPublishVolume / ControllerUnpublishVolume need, minus the node ID and secrets."""

    volume_id: str
    readonly: bool
    volume_context: Mapping[str, str] = field(default_factory=dict)
    secret_ref: Mapping[str, str] | None = None
    """`controllerPublishSecretRef` ({name, namespace}) or None."""


def publish_of(source: Mapping[str, Any], *, publish_readonly: bool) -> Publish:
    """The volume handle, read-only flag (false without PUBLISH_READONLY), context and secret reference."""
    ref = source.get("controllerPublishSecretRef")
    return Publish(
        volume_id=str(source.get("volumeHandle") or ""),
        readonly=bool(source.get("readOnly")) and publish_readonly,
        volume_context=dict(source.get("volumeAttributes") or {}),
        secret_ref={"name": str(ref.get("name", "")), "namespace": str(ref.get("namespace", ""))}
        if isinstance(ref, dict)
        else None,
    )


def node_id_from_csinode(csinode: Mapping[str, Any], driver: str) -> str | None:
    """external-attacher `GetNodeIDFromCSINode`: the driver's `nodeID` in `spec.drivers`, if listed."""
    for entry in (csinode.get("spec") or {}).get("drivers") or []:
        if entry.get("name") == driver:
            return str(entry.get("nodeID", ""))
    return None


def node_id_from_node(node: Mapping[str, Any], driver: str) -> str | None:
    """The driver's entry in the Node's legacy `csi.volume.kubernetes.io/nodeid` JSON annotation."""
    raw = (meta(node).get("annotations") or {}).get(NODE_IDS_ANNOTATION)
    if not raw:
        return None
    try:
        ids = json.loads(raw)
    except ValueError:
        return None
    value = ids.get(driver) if isinstance(ids, dict) else None
    return str(value) if value else None


def csinode_error(csinode: Mapping[str, Any] | None, node_name: str, driver: str) -> VolumeError:
    """Why the CSINode gives no node ID: missing object, or no entry for the driver (upstream's texts)."""
    if csinode is None:
        return not_found("csinode.storage.k8s.io", node_name)
    return VolumeError(f"CSINode {node_name} does not contain driver {driver}")


# The decisions of one attach or detach, given the objects (the CSI handler and `explain` call them).


def is_for(va: Mapping[str, Any], driver: str) -> bool:
    """The VolumeAttachment names this driver as its attacher (`spec.attacher`)."""
    return (va.get("spec") or {}).get("attacher") == driver


def attachable_pv(pv_name: str, pv: Object | None) -> Object:
    """The PV of an attach: VolumeError when it is missing or marked for deletion (upstream's checks)."""
    if pv is None:
        raise not_found("persistentvolume", pv_name)
    if meta(pv).get("deletionTimestamp"):
        raise VolumeError(f'PersistentVolume "{pv_name}" is marked for deletion')
    return pv


def attach_request(
    va: Mapping[str, Any],
    pv: Mapping[str, Any] | None,
    *,
    publish_readonly: bool,
    single_node_multi_writer: bool,
    default_fstype: str,
) -> tuple[Publish, csi_pb2.VolumeCapability]:
    """What ControllerPublishVolume will carry for `va` (`pv` None: an inline volume); VolumeError for a
    PV without a CSI source or access modes CSI cannot express."""
    if pv is not None:
        spec: Mapping[str, Any] = pv.get("spec") or {}
        source = csi_source(spec)
    else:
        spec = inline_spec_of(va) or {}
        source = spec["csi"]
    publish = publish_of(source, publish_readonly=publish_readonly)
    capability = volume_capability(
        spec, single_node_multi_writer=single_node_multi_writer, default_fstype=default_fstype
    )
    return publish, capability


def attach_node_id(
    node_name: str, driver: str, *, csinode: Mapping[str, Any] | None, node: Mapping[str, Any] | None = None
) -> str:
    """The node ID to attach to: the CSINode's entry for the driver, else (beyond upstream) the Node's
    legacy annotation; VolumeError saying what the CSINode lacks."""
    found = node_id_from_csinode(csinode, driver) if csinode is not None else None
    if found is None and node is not None:
        found = node_id_from_node(node, driver)
    if found is None:
        raise csinode_error(csinode, node_name, driver)
    return found


def detach_node_id(va: Mapping[str, Any], driver: str, *, csinode: Mapping[str, Any] | None) -> str | None:
    """Upstream's getNodeID(va): the CSINode entry, else the node ID the attach recorded on the VA."""
    found = node_id_from_csinode(csinode, driver) if csinode is not None else None
    if found is None:
        recorded = (meta(va).get("annotations") or {}).get(NODE_ID_ANNOTATION)
        found = str(recorded) if recorded is not None else None
    return found


def decode_secret(secret: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's `data` as CSI secrets (values base64-decoded; `stringData` is never served)."""
    return {
        key: base64.b64decode(value).decode("utf-8", errors="replace")
        for key, value in (secret.get("data") or {}).items()
    }
