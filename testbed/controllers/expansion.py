"""Kubelet's node side of volume expansion: NodeExpandVolume on a mounted volume, then the PVC status.

A mounted, writable volume needs a file-system resize when its PV's capacity is larger than the size
kubelet last recorded for the claim (`status.capacity` when mounted). Then, as
pkg/volume/util/operationexecutor/node_expander.go with RecoverVolumeExpansionFailure:

* with `status.allocatedResources` / `allocatedResourceStatuses` (a recovery-aware resizer): the
  new size is `allocatedResources.storage`; expansion proceeds only when the status is
  NodeResizePending or NodeResizeInProgress (or the PVC already shows the size and no status, as for
  RWX volumes expanded elsewhere); the status is first set to NodeResizeInProgress;
* otherwise (legacy): the new size is the PV capacity;
* `NodeExpandVolume{volume_id, volume_path (the pod's target path), staging_target_path,
  capacity_range.required_bytes, volume_capability, secrets (nodeExpandSecretRef)}`;
* success: Normal `FileSystemResizeSuccessful` events on pod and PVC ("MountVolume.NodeExpandVolume
  succeeded for volume "<pv>" <node>") and `MarkFSResizeFinished`: `status.capacity.storage` = new
  size, the storage key dropped from `allocatedResourceStatuses`, every resize condition removed;
* failure with a final error: InvalidArgument/OutOfRange/NotFound mark NodeResizeInfeasible plus a
  `NodeResizeError` condition ("failed to expand pvc with ..."), other final errors only the
  condition; FailedPrecondition is not retried on this node; other errors are retried.

PVC status writes are merge patches of /status carrying the resourceVersion they were computed from
(the resizer's `PatchPVCStatus` precondition), except the failure marks, which carry none (as upstream).
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from proto import csi_pb2
from testbed.controllers.csi import go_error, is_final, is_infeasible, volume_capability
from testbed.controllers.events import NORMAL, go_time
from testbed.controllers.storage import storage, unique_volume_name
from testbed.controllers.volumes import fetch_secrets

if TYPE_CHECKING:
    from testbed.controllers.volumes import Host, MountedVolume

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PVCS = "persistentvolumeclaims"
RESIZE_CONDITIONS = frozenset(
    {"FileSystemResizePending", "Resizing", "ControllerResizeError", "NodeResizeError"}
)


def merge_resize_conditions(conditions: list[Obj], new: list[Obj], *, keep_old: bool) -> list[Obj]:
    """`MergeResizeConditionOnPVC`: non-resize conditions stay; resize ones are replaced or dropped."""
    wanted = {c["type"]: c for c in new}
    merged, processed = [], set()
    for condition in conditions:
        kind = condition.get("type")
        if kind not in RESIZE_CONDITIONS:
            merged.append(condition)
        elif kind in wanted:
            merged.append(wanted[kind] if wanted[kind]["status"] != condition.get("status") else condition)
            processed.add(kind)
        elif keep_old:
            merged.append(condition)
    return merged + [c for kind, c in wanted.items() if kind not in processed]


class NodeExpander:
    """Runs node expansion for the mounted volumes of a kubelet."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.claim_sizes: dict[str, Fraction] = {}
        """Unique volume name -> the claim size kubelet last saw or set (the actual state of the world)."""
        self.final_failures: set[str] = set()
        self.in_use_errors: set[str] = set()

    def forget(self, mounted: MountedVolume) -> None:
        unique = unique_volume_name(mounted.driver, mounted.handle)
        self.claim_sizes.pop(unique, None)
        self.in_use_errors.discard(unique)

    async def expand_if_needed(self, pod: Obj, mounted: MountedVolume) -> None:
        claim = self.host.cached(PVCS, mounted.claim_key)
        volume = self.host.cached("persistentvolumes", mounted.pv_name)
        if claim is None or volume is None or mounted.read_only:
            return
        unique = unique_volume_name(mounted.driver, mounted.handle)
        pv_capacity = (volume.get("spec") or {}).get("capacity") or {}
        pv_size = storage(pv_capacity) or Fraction(0)
        old_size = self.claim_sizes.setdefault(
            unique, storage((claim.get("status") or {}).get("capacity")) or Fraction(0)
        )
        if pv_size <= old_size or unique in self.in_use_errors:
            return
        claim = await self.host.store.get(
            PVCS, claim["metadata"]["name"], namespace=claim["metadata"]["namespace"]
        )
        status = claim.get("status") or {}
        if status.get("allocatedResourceStatuses", {}).get("storage") or status.get("allocatedResources"):
            await self._expand_with_recovery(pod, mounted, claim, volume)
        else:
            await self._expand(
                pod, mounted, claim, volume, new_size=str(pv_capacity["storage"]), already_updated=False
            )

    async def _expand_with_recovery(self, pod: Obj, mounted: MountedVolume, claim: Obj, volume: Obj) -> None:
        """`NodeExpander.runPreCheck` + `expandOnPlugin`."""
        status = claim.get("status") or {}
        new_size_text = str((status.get("allocatedResources") or {}).get("storage", "0"))
        new_size = storage({"storage": new_size_text}) or Fraction(0)
        resize_status = (status.get("allocatedResourceStatuses") or {}).get("storage", "")
        unique = unique_volume_name(mounted.driver, mounted.handle)
        requested = storage(((claim.get("spec") or {}).get("resources") or {}).get("requests"))
        infeasible = requested != new_size and unique in self.final_failures
        already_updated = (storage(status.get("capacity")) or 0) >= new_size and not resize_status
        if not already_updated and resize_status not in ("NodeResizePending", "NodeResizeInProgress"):
            return
        if not already_updated:
            claim = await self._patch_status(
                claim, {"allocatedResourceStatuses": {"storage": "NodeResizeInProgress"}}
            )
        await self._expand(
            pod,
            mounted,
            claim,
            volume,
            new_size=new_size_text,
            already_updated=already_updated,
            infeasible=infeasible,
        )

    async def _expand(
        self,
        pod: Obj,
        mounted: MountedVolume,
        claim: Obj,
        volume: Obj,
        *,
        new_size: str,
        already_updated: bool,
        infeasible: bool = False,
    ) -> None:
        unique = unique_volume_name(mounted.driver, mounted.handle)
        size = storage({"storage": new_size}) or Fraction(0)
        driver = self.host.plugins.drivers.get(mounted.driver)
        if driver is None:
            return
        capabilities = await driver.refresh_capabilities(self.host.csi_timeout)
        if "EXPAND_VOLUME" not in capabilities:
            log.info("driver does not support node expansion", driver=mounted.driver, pv=mounted.pv_name)
            return
        request = csi_pb2.NodeExpandVolumeRequest(
            volume_id=mounted.handle,
            volume_path=mounted.target_path,
            staging_target_path=mounted.staging_path,
            capacity_range=csi_pb2.CapacityRange(required_bytes=int(size)),
            volume_capability=volume_capability(volume, multi_writer=False),
            secrets=await fetch_secrets(
                self.host.store, volume["spec"]["csi"].get("nodeExpandSecretRef"), "NodeExpandSecretRef"
            ),
        )
        try:
            await driver.node.NodeExpandVolume(request, timeout=self.host.csi_timeout)
        except grpc.aio.AioRpcError as exc:
            await self._failed(claim, unique, exc, infeasible=infeasible)
            return
        message = (
            f'MountVolume.NodeExpandVolume succeeded for volume "{mounted.pv_name}" {self.host.node_name}'
        )
        await self.host.recorder.event(pod, NORMAL, "FileSystemResizeSuccessful", message)
        await self.host.recorder.event(claim, NORMAL, "FileSystemResizeSuccessful", message)
        log.info("node expansion succeeded", pv=mounted.pv_name, size=new_size)
        if not already_updated:
            await self._finish(claim, new_size)
        self.claim_sizes[unique] = size
        self.final_failures.discard(unique)

    async def _finish(self, claim: Obj, new_size: str) -> None:
        """`MarkFSResizeFinished`."""
        status = claim.get("status") or {}
        statuses = {
            k: v for k, v in (status.get("allocatedResourceStatuses") or {}).items() if k != "storage"
        }
        patch: Obj = {
            "capacity": {**(status.get("capacity") or {}), "storage": new_size},
            "allocatedResourceStatuses": statuses or None,
            "conditions": merge_resize_conditions(status.get("conditions") or [], [], keep_old=False),
        }
        await self._patch_status(claim, patch)

    async def _failed(self, claim: Obj, unique: str, exc: grpc.aio.AioRpcError, *, infeasible: bool) -> None:
        code = exc.code()
        separator = " " if is_infeasible(exc) else " : "
        error = f"Expander.NodeExpand failed to expand the volume{separator}{go_error(exc)}"
        log.info("node expansion failed", pvc=claim["metadata"]["name"], error=error)
        if is_final(exc):
            self.final_failures.add(unique)
            condition = {
                "type": "NodeResizeError",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": go_time(),
                "message": f"failed to expand pvc with {error}",
            }
            status = claim.get("status") or {}
            patch: Obj = {
                "conditions": merge_resize_conditions(
                    status.get("conditions") or [], [condition], keep_old=True
                )
            }
            if is_infeasible(exc) or infeasible:
                patch["allocatedResourceStatuses"] = {"storage": "NodeResizeInfeasible"}
            await self._patch_status(claim, patch, precondition=False)
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            self.in_use_errors.add(unique)
            return
        raise RuntimeError(error)

    async def _patch_status(self, claim: Obj, status: Obj, *, precondition: bool = True) -> Obj:
        meta = claim["metadata"]
        patch: Obj = {"status": copy.deepcopy(status)}
        if precondition:
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        return await self.host.store.patch(
            PVCS, meta["name"], patch, patch_type="merge", namespace=meta["namespace"], subresource="status"
        )
