"""The attach-detach controller's CSI half: VolumeAttachments for the volumes scheduled pods use.

As kube-controller-manager's attachdetach controller with the CSI attacher
(pkg/controller/volume/attachdetach, pkg/volume/csi/csi_attacher.go):

* desired state: for every pod with `spec.nodeName` on a node that carries the
  `volumes.kubernetes.io/controller-managed-attach-detach` annotation (kubelet sets it when it
  registers the node), not terminated (`IsPodTerminated`), each PVC volume whose claim is Bound to a
  CSI PV (whose claimRef uid is the claim's) needs attaching — unless the driver's CSIDriver says
  `attachRequired: false` (a missing CSIDriver means attach is required);
* attach = create VolumeAttachment `csi-<sha256(volumeHandle + driver + nodeName)>` with spec
  `{attacher, nodeName, source: {persistentVolumeName}}` (AlreadyExists is fine; one being deleted
  is recreated once gone); when the external attacher marks it attached, each pod gets the Normal
  `SuccessfulAttachVolume` event "AttachVolume.Attach succeeded for volume "<pv>" ";
* detach = delete the VolumeAttachment once no pod on that node needs it, but not while the node
  lists the volume in `status.volumesInUse` (kubelet still has it mounted), for at most
  `max_wait_for_unmount` seconds (kube-controller-manager: 6 minutes).

Only VolumeAttachments this controller would have created (the name the formula gives for their PV,
node and attacher) are ever deleted; hand-made ones are left alone, as the real controller does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

from testbed.apiserver import AlreadyExists, NotFound, Store
from testbed.controllers.base import Controller, Key
from testbed.controllers.events import NORMAL, EventRecorder
from testbed.controllers.storage import (
    ANN_CONTROLLER_MANAGED_ATTACH,
    annotations_of,
    attachment_name,
    pod_claim_names,
    pod_is_terminated,
    unique_volume_name,
)

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
VAS = "volumeattachments"
RECONCILE: Key = ("reconcile", "")


class AttachDetachController(Controller):
    """Creates and deletes VolumeAttachments so they follow the pods scheduled to nodes."""

    name = "attachdetach"
    resources = ("pods", "persistentvolumeclaims", "persistentvolumes", "nodes", "csidrivers", VAS)

    def __init__(
        self, store: Store, *, max_wait_for_unmount: float = 360.0, resync_period: float = 15.0
    ) -> None:
        super().__init__(store, resync_period=resync_period)
        self.max_wait_for_unmount = max_wait_for_unmount
        self.recorder = EventRecorder(store, "attachdetach-controller")
        self._created: set[str] = set()
        self._reported: set[str] = set()
        self._waiting_since: dict[str, float] = {}

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        yield RECONCILE

    def attach_required(self, driver: str) -> bool:
        """`CanAttach` of the CSI plugin: false only for a CSIDriver with `attachRequired: false`."""
        csi_driver = self.cached("csidrivers", driver)
        return csi_driver is None or (csi_driver.get("spec") or {}).get("attachRequired") is not False

    def desired(self) -> dict[str, tuple[Obj, list[Obj]]]:
        """VolumeAttachment name -> (its spec, the pods needing it)."""
        wanted: dict[str, tuple[Obj, list[Obj]]] = {}
        for pod in sorted(self.cache("pods").values(), key=lambda p: p["metadata"]["name"]):
            node_name = (pod.get("spec") or {}).get("nodeName")
            node = self.cached("nodes", node_name) if node_name else None
            if (
                node is None
                or ANN_CONTROLLER_MANAGED_ATTACH not in annotations_of(node)
                or pod_is_terminated(pod)
            ):
                continue
            for claim_name, _ in pod_claim_names(pod):
                volume = self._bound_csi_volume(pod["metadata"]["namespace"], claim_name)
                if volume is None:
                    continue
                csi = volume["spec"]["csi"]
                if not self.attach_required(csi["driver"]):
                    continue
                name = attachment_name(csi["volumeHandle"], csi["driver"], str(node_name))
                spec = {
                    "attacher": csi["driver"],
                    "nodeName": node_name,
                    "source": {"persistentVolumeName": volume["metadata"]["name"]},
                }
                wanted.setdefault(name, (spec, []))[1].append(pod)
        return wanted

    def _bound_csi_volume(self, namespace: str, claim_name: str) -> Obj | None:
        claim = self.cached("persistentvolumeclaims", f"{namespace}/{claim_name}")
        if claim is None or (claim.get("status") or {}).get("phase") != "Bound":
            return None
        volume = self.cached("persistentvolumes", (claim.get("spec") or {}).get("volumeName") or "")
        spec = (volume or {}).get("spec") or {}
        if volume is None or not spec.get("csi") or not spec["csi"].get("volumeHandle"):
            return None
        if (spec.get("claimRef") or {}).get("uid") != claim["metadata"].get("uid"):
            return None
        return volume

    async def sync(self, key: Key) -> None:
        wanted = self.desired()
        attachments = self.cache(VAS)
        for name, (spec, pods) in wanted.items():
            self._waiting_since.pop(name, None)
            current = attachments.get(name)
            if current is None:
                await self._attach(name, spec)
            elif (current.get("status") or {}).get("attached") and name not in self._reported:
                self._reported.add(name)
                message = (
                    f'AttachVolume.Attach succeeded for volume "{spec["source"]["persistentVolumeName"]}" '
                )
                for pod in pods:
                    await self.recorder.event(pod, NORMAL, "SuccessfulAttachVolume", message)
        for name, attachment in list(attachments.items()):
            if name in wanted or not self._ours(name, attachment):
                continue
            if (attachment.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if self._still_mounted(name, attachment):
                continue
            await self._detach(name)

    async def _attach(self, name: str, spec: Obj) -> None:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": spec,
        }
        try:
            self.remember(VAS, await self.store.create(VAS, body))
            log.info(
                "volume attachment created",
                va=name,
                pv=spec["source"]["persistentVolumeName"],
                node=spec["nodeName"],
            )
        except AlreadyExists:
            pass
        self._created.add(name)
        self._reported.discard(name)

    async def _detach(self, name: str) -> None:
        try:
            await self.store.delete(VAS, name)
            log.info("volume attachment deleted", va=name)
        except NotFound:
            pass
        self._created.discard(name)
        self._reported.discard(name)
        self._waiting_since.pop(name, None)

    def _ours(self, name: str, attachment: Obj) -> bool:
        if name in self._created:
            return True
        spec = attachment.get("spec") or {}
        volume = self.cached(
            "persistentvolumes", (spec.get("source") or {}).get("persistentVolumeName") or ""
        )
        csi = ((volume or {}).get("spec") or {}).get("csi") or {}
        if not csi.get("volumeHandle") or csi.get("driver") != spec.get("attacher"):
            return False
        return name == attachment_name(csi["volumeHandle"], csi["driver"], str(spec.get("nodeName", "")))

    def _still_mounted(self, name: str, attachment: Obj) -> bool:
        """True while the node reports the volume in use, up to `max_wait_for_unmount`."""
        spec = attachment.get("spec") or {}
        node = self.cached("nodes", str(spec.get("nodeName", "")))
        volume = self.cached(
            "persistentvolumes", (spec.get("source") or {}).get("persistentVolumeName") or ""
        )
        csi = ((volume or {}).get("spec") or {}).get("csi") or {}
        if node is None or not csi:
            return False
        in_use = (node.get("status") or {}).get("volumesInUse") or []
        if unique_volume_name(csi.get("driver", ""), csi.get("volumeHandle", "")) not in in_use:
            return False
        loop_time = asyncio.get_running_loop().time()
        started = self._waiting_since.setdefault(name, loop_time)
        remaining = started + self.max_wait_for_unmount - loop_time
        if remaining <= 0:
            log.info("volume still mounted after the maximum wait, detaching", va=name)
            return False
        self.queue.add_after(RECONCILE, remaining)
        return True
