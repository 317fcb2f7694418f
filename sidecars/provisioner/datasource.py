"""Volume data sources: a claim's VolumeSnapshot or PVC becomes CreateVolume's volume_content_source.

external-provisioner's `getVolumeContentSource`, `setCloneFinalizer`, `setSnapshotFinalizer` and
`removeSnapshotFinalizer`, check by check and with upstream's texts:

* VolumeSnapshot (CREATE_DELETE_SNAPSHOT): GET the snapshot — one being deleted is refused unless it
  carries our finalizer (provisioning had started); `status.boundVolumeSnapshotContentName` must be
  set; GET that VolumeSnapshotContent, whose `spec.volumeSnapshotRef` must point back at the snapshot
  and whose `spec.driver` must be the StorageClass's provisioner (otherwise "snapshot X not bound");
  the snapshot must be `readyToUse`; the content must have `status.snapshotHandle` (the snapshot id);
  the request must not be smaller than `status.restoreSize`; with `--prevent-volume-mode-conversion`
  a content whose `spec.sourceVolumeMode` differs from the claim's volumeMode must be annotated
  `snapshot.storage.kubernetes.io/allow-volume-mode-change: "true"`.
* PersistentVolumeClaim (CLONE_VOLUME): the source claim (from the informer cache) must be Bound, not
  being deleted, both claims must name a StorageClass, the request must not be smaller than the
  source's, and its PV (a GET) must be a CSI volume of the StorageClass's driver, bound to that very
  claim and Bound; the volume modes must be equal. The volume id is the PV's `csi.volumeHandle`.

Any failure is `ProvisioningNoChange` with "error getting handle for DataSource Type K by Name N: ...".
Then the source is protected: the finalizer `provisioner.storage.kubernetes.io/cloning-protection` on
the source claim, or `provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection` on the
snapshot, each with an update (the RBAC upstream grants); the snapshot's is removed again once the
volume is provisioned (its sweep, sidecars.provisioner.snapshots, catches the rest), the claim's by
the cloning-protection controller (sidecars.provisioner.clone).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from common.govalues import go_quote, parse_bool
from common.kube.client import ApiError, KubeClient
from common.kube.resources import (
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    VOLUME_SNAPSHOT_CONTENTS,
    VOLUME_SNAPSHOTS,
)
from common.logging import get_logger
from common.quantity import QuantityError, to_bytes
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.state import ProvisionError, ProvisioningState

log = get_logger(__name__)

Obj = dict[str, Any]
NO_CHANGE = ProvisioningState.NO_CHANGE


class SourceError(Exception):
    """The data source cannot be used (yet); the text is upstream's."""


class ClaimLookup(Protocol):
    """Claims by name and namespace: the PVC informer."""

    def get(self, name: str, namespace: str | None = None) -> Any: ...


@dataclass(frozen=True)
class Resolved:
    """A data source checked and turned into a content source."""

    content_source: Any
    """The csi_pb2.VolumeContentSource."""
    source: Obj
    """The VolumeSnapshot or source PVC as read (its finalizer is added from this copy)."""
    snapshot: bool
    """`source` is a VolumeSnapshot (else a PVC)."""


def _storage(obj: Mapping[str, Any]) -> str | None:
    return (((obj.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")


def _bytes(quantity: object) -> int:
    try:
        return to_bytes(str(quantity))
    except QuantityError:
        return 0


def _go_claim_status(claim: Mapping[str, Any]) -> str:
    """`%v` of a v1.PersistentVolumeClaimStatus as Go prints it (the empty fields only)."""
    status = claim.get("status") or {}
    modes = " ".join(status.get("accessModes") or [])
    return f"{{{status.get('phase', '')} [{modes}] map[] [] map[] map[] <nil> <nil>}}"


def snapshot_source(snapshot: Mapping[str, Any], content: Mapping[str, Any], sc: Mapping[str, Any]) -> str:
    """The content's checks that only read the two objects; returns the snapshot id (upstream order)."""
    meta = snapshot.get("metadata") or {}
    name = str(meta.get("name", ""))
    ref = (content.get("spec") or {}).get("volumeSnapshotRef") or {}
    if (ref.get("uid"), ref.get("namespace"), ref.get("name")) != (
        meta.get("uid"),
        meta.get("namespace"),
        meta.get("name"),
    ):
        log.warning(
            "snapshotcontent is bound to a different snapshot", snapshot=f"{meta.get('namespace')}/{name}"
        )
        raise SourceError(f"snapshot {name} not bound")
    if (content.get("spec") or {}).get("driver") != sc.get("provisioner"):
        log.warning(
            "snapshotcontent is handled by a different CSI driver than requested by the StorageClass",
            snapshot=f"{meta.get('namespace')}/{name}",
            storageclass=(sc.get("metadata") or {}).get("name", ""),
        )
        raise SourceError(f"snapshot {name} not bound")
    if (snapshot.get("status") or {}).get("readyToUse") is not True:
        raise SourceError(f"snapshot {name} is not Ready")
    handle = (content.get("status") or {}).get("snapshotHandle")
    if handle is None:
        raise SourceError(f"snapshot handle {name} is not available")
    return str(handle)


def check_restore_size(claim: Mapping[str, Any], snapshot: Mapping[str, Any]) -> None:
    restore = (snapshot.get("status") or {}).get("restoreSize")
    if restore is None:
        return
    name = (snapshot.get("metadata") or {}).get("name", "")
    request = _storage(claim)
    if request is None:
        claim_name = (claim.get("metadata") or {}).get("name", "")
        raise SourceError(f"error getting capacity for PVC {claim_name} when creating snapshot {name}")
    size, needed = _bytes(request), _bytes(restore)
    if size < needed:
        raise SourceError(
            f"requested volume size {size} is less than the size {needed} for the source snapshot {name}"
        )
    if size > needed:
        log.warning(
            "requested volume size is greater than the snapshot size; the driver needs to expand the volume",
            requested=size,
            snapshot_size=needed,
            snapshot=name,
        )


def check_volume_mode(claim: Mapping[str, Any], content: Mapping[str, Any]) -> None:
    """`--prevent-volume-mode-conversion`: a mode change needs the allow annotation on the content."""
    source_mode = (content.get("spec") or {}).get("sourceVolumeMode")
    mode = (claim.get("spec") or {}).get("volumeMode")
    if source_mode is None or mode is None or source_mode == mode:
        return
    meta = claim.get("metadata") or {}
    content_name = (content.get("metadata") or {}).get("name", "")
    refused = (
        f"requested volume {meta.get('namespace', '')}/{meta.get('name', '')} modifies the mode of the "
        "source volume but does not have permission to do so. "
    )
    annotation = names.ANN_ALLOW_VOLUME_MODE_CHANGE
    value = names.annotations_of(content).get(annotation)
    if value is None:
        raise SourceError(
            f"{refused}{annotation} annotation is not present on snapshotcontent {content_name}"
        )
    try:
        allowed = parse_bool(value)
    except ValueError:
        detail = f"strconv.ParseBool: parsing {go_quote(value)}: invalid syntax"
        raise SourceError(
            f"{refused}failed to convert {annotation} annotation value to boolean with error: {detail}"
        ) from None
    if not allowed:
        raise SourceError(f"{refused}{annotation} is set to false on snapshotcontent {content_name}")


def check_clone(claim: Mapping[str, Any], source: Mapping[str, Any]) -> None:
    """upstream `getPVCSource`, the checks of the two claims."""
    name = str((source.get("metadata") or {}).get("name", ""))
    if (source.get("status") or {}).get("phase") != "Bound":
        raise SourceError(
            f"the PVC DataSource {name} must have a status of Bound.  Got {_go_claim_status(source)}"
        )
    if names.deleting(source):
        raise SourceError(f"the PVC DataSource {name} is currently being deleted")
    if (source.get("spec") or {}).get("storageClassName") is None:
        raise SourceError(f"the source PVC ({name}) storageclass cannot be empty")
    if (claim.get("spec") or {}).get("storageClassName") is None:
        claim_name = (claim.get("metadata") or {}).get("name", "")
        raise SourceError(f"the requested PVC ({claim_name}) storageclass cannot be empty")
    requested, source_size = _bytes(_storage(claim) or 0), _bytes(_storage(source) or 0)
    if requested < source_size:
        raise SourceError(
            "error, new PVC request must be greater than or equal in size to the specified PVC data source, "
            f"requested {requested} but source is {source_size}"
        )
    if not (source.get("spec") or {}).get("volumeName"):
        raise SourceError(f"volume name is empty in source PVC {name}")


def check_clone_volume(
    claim: Mapping[str, Any], source: Mapping[str, Any], pv: Mapping[str, Any], driver: str
) -> str:
    """upstream `getPVCSource`, the checks of the source PV; returns its volume handle."""
    invalid = SourceError("claim in dataSource not bound or invalid")
    spec = pv.get("spec") or {}
    csi = spec.get("csi")
    src = source.get("metadata") or {}
    ref = spec.get("claimRef") or {}
    where = {
        "pv": (pv.get("metadata") or {}).get("name", ""),
        "pvc": f"{src.get('namespace')}/{src.get('name')}",
    }
    if csi is None:
        log.warning("the source volume is not a CSI volume", **where)
        raise invalid
    if csi.get("driver") != driver:
        log.warning(
            "the source volume is handled by a different CSI driver than the StorageClass asks for", **where
        )
        raise invalid
    if not ref:
        log.warning("the source volume is not bound", **where)
        raise invalid
    if (ref.get("uid"), ref.get("namespace"), ref.get("name")) != (
        src.get("uid"),
        src.get("namespace"),
        src.get("name"),
    ):
        log.warning("the source volume is bound to a different PVC than requested", **where)
        raise invalid
    if (pv.get("status") or {}).get("phase") != "Bound":
        log.warning(
            "the source volume is not Bound", phase=(pv.get("status") or {}).get("phase", ""), **where
        )
        raise invalid
    mode = (claim.get("spec") or {}).get("volumeMode") or "Filesystem"
    source_mode = spec.get("volumeMode") or "Filesystem"
    same = "the source PVC and destination PVCs must have the same volume mode for cloning."
    if mode == "Filesystem" and source_mode != "Filesystem":
        raise SourceError(f"{same}  Source is Block, but new PVC requested Filesystem")
    if mode == "Block" and source_mode != "Block":
        raise SourceError(f"{same}  Source is Filesystem, but new PVC requested Block")
    return str(csi.get("volumeHandle", ""))


class DataSources:
    """Resolves and protects a claim's snapshot or clone source (see the module docstring)."""

    def __init__(
        self, *, kube: KubeClient, claims: ClaimLookup, prevent_volume_mode_conversion: bool
    ) -> None:
        self.kube = kube
        self.claims = claims
        self.prevent_volume_mode_conversion = prevent_volume_mode_conversion

    async def resolve(self, claim: Obj, sc: Mapping[str, Any], source: Mapping[str, str]) -> Resolved:
        """The content source for `source` (request.data_source); ProvisionError NO_CHANGE if unusable.

        A source in another namespace (`dataSourceRef.namespace` with CrossNamespaceVolumeDataSource) is
        refused: upstream admits it only when a gateway ReferenceGrant allows it, which is not checked here.
        """
        if source["namespace"] != (claim.get("metadata") or {}).get("namespace"):
            where = f"{source['kind']} {source['namespace']}/{source['name']}"
            raise ProvisionError(
                f"data source {where} is in another namespace: cross-namespace data sources need "
                "ReferenceGrant checks, which this provisioner does not make",
                ProvisioningState.FINISHED,
            )
        try:
            if source["kind"] == names.SNAPSHOT_KIND:
                return await self._snapshot(claim, sc, source)
            return await self._clone(claim, sc, source)
        except SourceError as err:
            raise ProvisionError(
                f"error getting handle for DataSource Type {source['kind']} by Name {source['name']}: {err}",
                NO_CHANGE,
            ) from None

    async def _snapshot(self, claim: Obj, sc: Mapping[str, Any], source: Mapping[str, str]) -> Resolved:
        name, namespace = source["name"], source["namespace"]
        try:
            snapshot = await self.kube.get(VOLUME_SNAPSHOTS, name, namespace=namespace)
        except ApiError as err:
            raise SourceError(f"error getting snapshot {name} from api server: {err}") from None
        if names.deleting(snapshot):
            if names.SNAPSHOT_FINALIZER not in names.finalizers(snapshot):
                raise SourceError(f"snapshot {name} is being deleted")
            log.info(
                "snapshot is being deleted but carries our finalizer, provisioning continues",
                snapshot=f"{namespace}/{name}",
                v=3,
            )
        content_name = (snapshot.get("status") or {}).get("boundVolumeSnapshotContentName")
        if content_name is None:
            raise SourceError(f"snapshot {name} not bound")
        try:
            content = await self.kube.get(VOLUME_SNAPSHOT_CONTENTS, str(content_name))
        except ApiError as err:
            log.warning(
                "error getting the snapshot's content",
                content=content_name,
                snapshot=f"{namespace}/{name}",
                error=str(err),
            )
            raise SourceError(f"snapshot {name} not bound") from None
        snapshot_id = snapshot_source(snapshot, content, sc)
        check_restore_size(claim, snapshot)
        if self.prevent_volume_mode_conversion:
            check_volume_mode(claim, content)
        content_source = csi_pb2.VolumeContentSource()
        content_source.snapshot.snapshot_id = snapshot_id
        return Resolved(content_source=content_source, source=snapshot, snapshot=True)

    async def _clone(self, claim: Obj, sc: Mapping[str, Any], source: Mapping[str, str]) -> Resolved:
        name, namespace = source["name"], source["namespace"]
        found = self.claims.get(name, namespace)
        if found is None:
            claim_ns = (claim.get("metadata") or {}).get("namespace", "")
            raise SourceError(
                f"error getting PVC {name} (namespace {go_quote(str(claim_ns))}) from api server: "
                f'persistentvolumeclaim "{name}" not found'
            )
        check_clone(claim, found)
        volume_name = str(found["spec"]["volumeName"])
        try:
            pv = await self.kube.get(PERSISTENT_VOLUMES, volume_name)
        except ApiError as err:
            log.warning(
                "error getting the source volume", pv=volume_name, pvc=f"{namespace}/{name}", error=str(err)
            )
            raise SourceError("claim in dataSource not bound or invalid") from None
        handle = check_clone_volume(claim, found, pv, str(sc.get("provisioner", "")))
        content_source = csi_pb2.VolumeContentSource()
        content_source.volume.volume_id = handle
        return Resolved(content_source=content_source, source=found, snapshot=False)

    async def protect(self, resolved: Resolved) -> None:
        """Put the source's protection finalizer on it (an update); ProvisionError NO_CHANGE on failure."""
        obj = resolved.source
        resource, finalizer = (
            (VOLUME_SNAPSHOTS, names.SNAPSHOT_FINALIZER)
            if resolved.snapshot
            else (PERSISTENT_VOLUME_CLAIMS, names.CLONE_FINALIZER)
        )
        if finalizer in names.finalizers(obj):
            return
        updated = copy.deepcopy(obj)
        updated["metadata"]["finalizers"] = [*names.finalizers(obj), finalizer]
        try:
            await self.kube.update(resource, updated)
        except ApiError as err:
            raise ProvisionError(str(err), NO_CHANGE) from None
        meta = obj["metadata"]
        log.info(
            "added finalizer", finalizer=finalizer, source=f"{meta.get('namespace')}/{meta.get('name')}", v=3
        )
