"""The deleter: Released PVs of this driver with reclaim policy Delete lose their volume, then the PV object.

sig-storage-lib-external-provisioner's volume half with external-provisioner's `Delete`. The work
queue `volumes` is keyed by PV name (per-PV backoff `--retry-interval-start` to `--retry-interval-max`,
forever). For a PV of this driver — `pv.kubernetes.io/provisioned-by` (or `migrated-to`) naming it,
or, without the annotation, `spec.csi.driver`:

* the finalizer `external-provisioner.volume.kubernetes.io/finalizer` is added to a Bound PV with
  reclaim policy Delete and removed from one with Retain or Recycle;
* a PV is deleted when it is Released, its policy is Delete, and (when being deleted already) it
  still has our finalizer: the provisioner secret is taken from the PV's deletion-secret
  annotations (or, without them, resolved from the StorageClass with a name-and-namespace stub of
  the claim; a secret that cannot be read is logged and the delete goes ahead without it); with
  PUBLISH_UNPUBLISH_VOLUME the delete is refused while a VolumeAttachment names the PV; then
  DeleteVolume, deleting the PV object and removing our finalizer.

A failed delete is a `VolumeFailedDelete` Warning event on the PV and a retry; the PV stays.

With `--node-deployment` (`node_topology` set) a PV whose node affinity does not admit this node's
topology is left to the provisioner of its node ("PV was not provisioned on this node", logged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import grpc

from common.backoff import ItemExponential
from common.controller import run_workers
from common.csi.errors import describe
from common.kube.client import ApiError
from common.kube.events import WARNING, EventRecorder
from common.kube.finalizers import add_finalizer, remove_finalizer
from common.kube.informer import FuncHandler, InformerFactory
from common.kube.resources import PERSISTENT_VOLUMES, STORAGE_CLASSES, VOLUME_ATTACHMENTS, object_key
from common.logging import get_logger
from common.metrics import Metrics
from common.workqueue import WorkQueue
from sidecars.provisioner import names, secrets
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.state import ProvisionError
from sidecars.provisioner.topology import volume_accessible

log = get_logger(__name__)

Obj = dict[str, Any]


class DeleteError(Exception):
    """The volume of a PV could not be deleted; the text is the VolumeFailedDelete event message."""


def reclaim_policy(pv: Mapping[str, Any]) -> str:
    return str((pv.get("spec") or {}).get("persistentVolumeReclaimPolicy", ""))


def phase(pv: Mapping[str, Any]) -> str:
    return str((pv.get("status") or {}).get("phase", ""))


def should_delete(pv: Mapping[str, Any]) -> bool:
    """upstream `shouldDelete` with AddFinalizer(true)."""
    if names.deleting(pv) and names.PV_FINALIZER not in names.finalizers(pv):
        return False  # our finalizer is gone: the volume was deleted already
    return phase(pv) == "Released" and reclaim_policy(pv) == "Delete"


class VolumeController:
    """Deletes the volumes of released PVs (see the module docstring). Build it, then `await run()`."""

    name = "volumes"

    def __init__(
        self,
        *,
        config: ProvisionerConfig,
        provisioner: Provisioner,
        factory: InformerFactory,
        recorder: EventRecorder,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.provisioner = provisioner
        self.kube = factory.client
        self.recorder = recorder
        self.metrics = metrics
        self.volumes = factory.informer(PERSISTENT_VOLUMES, transform=names.typed("v1", "PersistentVolume"))
        self.classes = factory.informer(STORAGE_CLASSES)
        self.attachments = (
            factory.informer(VOLUME_ATTACHMENTS) if provisioner.builder.driver.attach_required else None
        )
        self.queue: WorkQueue[str] = WorkQueue(
            "volumes",
            limiter=ItemExponential(config.retry_interval_start, config.retry_interval_max),
            metrics=metrics.workqueue("volumes"),
        )
        self.deleted: set[str] = set()
        """UIDs of PVs whose volume and object this process deleted (the cache may lag behind)."""
        self.node_topology: Mapping[str, str] | None = None
        """`--node-deployment`: this node's NodeGetInfo topology; only PVs it admits are deleted."""
        self.volumes.add_handler(
            FuncHandler(add=self._enqueue, update=lambda _, new: self._enqueue(new), delete=self._forget)
        )

    def _enqueue(self, pv: Obj) -> None:
        self.queue.add(object_key(pv))

    def _forget(self, pv: Obj) -> None:
        self.queue.forget(object_key(pv))
        self.deleted.discard(str(pv["metadata"].get("uid", "")))

    async def run(self) -> None:
        await run_workers(self.queue, self.sync, name=self.name, count=self.config.worker_threads)

    def owns(self, pv: Mapping[str, Any]) -> bool:
        """upstream `isProvisionerForVolume`."""
        driver = self.provisioner.driver
        anns = names.annotations_of(pv)
        if names.ANN_PROVISIONED_BY in anns:
            return driver in (anns[names.ANN_PROVISIONED_BY], anns.get(names.ANN_MIGRATED_TO))
        csi = (pv.get("spec") or {}).get("csi")
        if csi is not None:
            return bool(csi.get("driver") == driver)
        return anns.get(names.ANN_MIGRATED_TO) == driver

    async def sync(self, name: str) -> None:
        pv = self.volumes.get(name)
        if pv is None or not self.owns(pv) or pv["metadata"].get("uid") in self.deleted:
            return
        pv = await self._handle_finalizer(pv)
        if not should_delete(pv):
            return
        if self.node_topology is not None and not volume_accessible(pv, self.node_topology):
            log.info("volume deletion ignored: PV was not provisioned on this node", pv=name, v=4)
            return
        class_name = str((pv.get("spec") or {}).get("storageClassName") or "")
        start = asyncio.get_running_loop().time()
        try:
            await self.delete(pv)
        except Exception:
            self.metrics.record_delete_failed(class_name=class_name)
            raise
        self.metrics.record_deleted(class_name=class_name, seconds=asyncio.get_running_loop().time() - start)

    async def _handle_finalizer(self, pv: Obj) -> Obj:
        policy = reclaim_policy(pv)
        present = names.PV_FINALIZER in names.finalizers(pv)
        if policy == "Delete" and not names.deleting(pv) and phase(pv) == "Bound" and not present:
            return await add_finalizer(self.kube, PERSISTENT_VOLUMES, pv, names.PV_FINALIZER)
        if policy in ("Retain", "Recycle") and present:
            return await remove_finalizer(self.kube, PERSISTENT_VOLUMES, pv, names.PV_FINALIZER)
        return pv

    async def delete(self, pv: Obj) -> None:
        """DeleteVolume, then the PV object, then our finalizer (upstream `deleteVolumeOperation`)."""
        name = pv["metadata"]["name"]
        try:
            await self.delete_volume(pv)
        except DeleteError as err:
            log.error("volume deletion failed", pv=name, error=str(err))
            self.recorder.event(pv, WARNING, "VolumeFailedDelete", str(err))
            raise
        log.info("volume deleted", pv=name, v=4)
        try:
            await self.kube.delete(PERSISTENT_VOLUMES, name)
        except ApiError as err:
            if not err.not_found:
                log.info("failed to delete persistentvolume", pv=name, error=str(err))
                raise
        current = self.volumes.get(name)
        if current is not None:
            await remove_finalizer(self.kube, PERSISTENT_VOLUMES, current, names.PV_FINALIZER)
        self.deleted.add(str(pv["metadata"].get("uid", "")))
        log.info("persistentvolume deleted", pv=name, v=4)

    async def delete_volume(self, pv: Obj) -> None:
        """upstream `csiProvisioner.Delete`; raises DeleteError with the event text."""
        csi = (pv.get("spec") or {}).get("csi")
        if not csi:
            raise DeleteError("invalid CSI PV")
        try:
            self.provisioner.builder.driver.check()
        except ProvisionError as err:
            raise DeleteError(str(err)) from None
        credentials = await self._secrets(pv)
        self._check_not_attached(pv)
        try:
            await self.provisioner.delete_volume(str(csi.get("volumeHandle", "")), credentials or {})
        except grpc.RpcError as err:
            raise DeleteError(describe(err)) from None
        self.provisioner.deleted(pv)

    async def _secrets(self, pv: Obj) -> dict[str, str] | None:
        """upstream `handleSecretsForDeletion`."""
        name = pv["metadata"]["name"]
        anns = names.annotations_of(pv)
        ref: Mapping[str, str] | None = None
        if names.ANN_DELETION_SECRET_NAME in anns and names.ANN_DELETION_SECRET_NAMESPACE in anns:
            secret_name, secret_namespace = (
                anns[names.ANN_DELETION_SECRET_NAME],
                anns[names.ANN_DELETION_SECRET_NAMESPACE],
            )
            if secret_name and secret_namespace:
                ref = {"name": secret_name, "namespace": secret_namespace}
        else:
            ref = self._secret_from_class(pv)
        try:
            return await secrets.credentials(self.kube, ref)
        except secrets.SecretError as err:
            log.error("failed to get credentials for volume, deleting without them", pv=name, error=str(err))
            return None

    def _secret_from_class(self, pv: Obj) -> Mapping[str, str] | None:
        name = pv["metadata"]["name"]
        spec = pv.get("spec") or {}
        sc = self.classes.get(str(spec.get("storageClassName") or ""))
        if sc is None:
            log.warning("storage class not found, deleting without secrets", pv=name)
            return None
        claim_ref = spec.get("claimRef")
        if not claim_ref:
            log.warning("claim reference does not exist in volume, deleting without secrets", pv=name)
            return None
        stub = {"metadata": {"name": claim_ref.get("name", ""), "namespace": claim_ref.get("namespace", "")}}
        try:
            return secrets.secret_reference(secrets.PROVISIONER, sc.get("parameters") or {}, name, stub)
        except secrets.SecretError as err:
            raise DeleteError(f"failed to get secretreference for volume {name}: {err}") from None

    def _check_not_attached(self, pv: Obj) -> None:
        """upstream `canDeleteVolume`: no VolumeAttachment may name the PV."""
        if self.attachments is None:
            return
        name = pv["metadata"]["name"]
        for va in self.attachments.store:
            spec = va.get("spec") or {}
            if (spec.get("source") or {}).get("persistentVolumeName") == name:
                raise DeleteError(
                    f"persistentvolume {name} is still attached to node {spec.get('nodeName', '')}"
                )
