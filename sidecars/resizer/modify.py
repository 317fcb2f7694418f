"""The modify controller: applies a PVC's VolumeAttributesClass to its volume with ControllerModifyVolume.

external-resizer's `modifyController` (feature gate VolumeAttributesClass, driver capability
MODIFY_VOLUME). Its own work queue, also named `<driver>-pvc`. For a Bound claim of this driver whose
`spec.volumeAttributesClassName` differs from `status.currentVolumeAttributesClassName`:

* target class missing: `modifyVolumeStatus` Pending (and a `VolumeModifyFailed` event); the claim is
  looked at again when the class appears;
* otherwise `modifyVolumeStatus` InProgress + condition `ModifyingVolume`, event `VolumeModify`, then
  ControllerModifyVolume with the class's parameters as `mutable_parameters` (plus the pvc/pv names
  with `--extra-modify-metadata`) and the PV's modify secret;
* success: the PV's `spec.volumeAttributesClassName` first, then the claim's
  `currentVolumeAttributesClassName`, `modifyVolumeStatus` cleared, modify conditions cleared, event
  `VolumeModifySuccessful`;
* failure: conditions `ModifyingVolume` + `ModifyVolumeError` (reason = the gRPC code), event
  `VolumeModifyFailed`, retried with backoff. A non-final error leaves the claim "uncertain": the same
  target is retried even if the spec changes meanwhile (claims found InProgress at start are uncertain
  too). InvalidArgument is Infeasible, retried only every --retry-interval-max; other final errors
  stay InProgress.
* spec reset to "" while not InProgress: a rollback; the `ModifyingVolume` condition is removed and
  `VolumeModifyCanceled` emitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.backoff import ItemExponential
from common.controller import Requeue, run_workers
from common.csi import CSIConnection
from common.csi.errors import code_name, describe, is_final, status_code
from common.kube.client import ApiError
from common.kube.events import NORMAL, WARNING, EventRecorder
from common.kube.informer import FuncHandler, InformerFactory
from common.kube.resources import (
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    VOLUME_ATTRIBUTES_CLASSES,
    object_key,
)
from common.logging import get_logger
from common.metrics import QueueMetrics
from common.workqueue import WorkQueue
from proto import csi_pb2
from sidecars.resizer import vac as v
from sidecars.resizer.cli import ResizerConfig
from sidecars.resizer.resizer import is_our_volume, read_secret
from sidecars.resizer.slowset import SlowSet
from sidecars.resizer.writer import Writer

log = get_logger(__name__)

Obj = dict[str, Any]


class ModifyError(Exception):
    """A failed modify sync; retried with backoff."""


class ModifyController:
    """Modifies volumes for PVCs (see the module docstring). Build it, then `await run()` while leading."""

    name = "modify"

    def __init__(
        self,
        *,
        config: ResizerConfig,
        driver: str,
        csi: CSIConnection,
        factory: InformerFactory,
        recorder: EventRecorder,
        queue_metrics: QueueMetrics | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.csi = csi
        self.kube = factory.client
        self.recorder = recorder
        self.claims = factory.informer(PERSISTENT_VOLUME_CLAIMS)
        self.volumes = factory.informer(PERSISTENT_VOLUMES)
        self.classes = factory.informer(VOLUME_ATTRIBUTES_CLASSES)
        self.writer = Writer(self.kube, claims=self.claims, volumes=self.volumes)
        self.queue: WorkQueue[str] = WorkQueue(
            f"{driver}-pvc",
            limiter=ItemExponential(config.retry_interval_start, config.retry_interval_max),
            metrics=queue_metrics,
        )
        self.slow = SlowSet(config.retry_interval_max)
        self.uncertain: dict[str, Obj] = {}
        """Claims whose last ControllerModifyVolume ended uncertain: keep retrying their target."""
        self.claims.add_handler(
            FuncHandler(add=self._enqueue, update=self._on_update, delete=self._on_delete)
        )
        self.classes.add_handler(FuncHandler(add=self._on_class_added))

    # ------------------------------------------------------------------------ events

    def _enqueue(self, pvc: Obj) -> None:
        self.queue.add(object_key(pvc))

    def _on_update(self, old: Obj, new: Obj) -> None:
        if v.phase(new) != "Bound":
            return
        resync = (old.get("metadata") or {}).get("resourceVersion") == (new.get("metadata") or {}).get(
            "resourceVersion"
        )
        if resync or v.spec_class(old) != v.spec_class(new) or v.modify_status(new) is None:
            self._enqueue(new)

    def _on_delete(self, pvc: Obj) -> None:
        key = object_key(pvc)
        self.queue.forget(key)
        self.slow.remove(key)
        self.uncertain.pop(key, None)

    def _on_class_added(self, vac: Obj) -> None:
        """A class appeared: claims waiting for it (Pending) can go on."""
        name = (vac.get("metadata") or {}).get("name")
        for pvc in self.claims.store:
            status = v.modify_status(pvc)
            if status and status.get("status") == v.PENDING and v.spec_class(pvc) == name:
                self._enqueue(pvc)

    # ------------------------------------------------------------------------ running

    async def run(self) -> None:
        log.info("starting external resizer for modify volume", controller=self.driver)
        self.init_uncertain()
        await run_workers(self.queue, self.sync, name=self.name, count=self.config.workers)

    def init_uncertain(self) -> None:
        """initUncertainPVCs: claims left InProgress/Infeasible by a previous leader keep their target."""
        for pvc in self.claims.store:
            status = v.modify_status(pvc)
            if status and status.get("status") in (v.IN_PROGRESS, v.INFEASIBLE):
                self.uncertain[object_key(pvc)] = pvc

    async def sync(self, key: str) -> None:
        log.info("started PVC processing for modify controller", key=key, v=4)
        pvc = self.claims.store.get(key)
        if pvc is None:
            return
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        if not volume_name:
            log.info("PV bound to PVC is not created yet", pvc=key, v=4)
            return
        pv = self.volumes.get(str(volume_name))
        if pv is None:
            raise ModifyError(f"Get PV {volume_name!r} of pvc {key!r} in PVInformer cache failed: not found")
        if not is_our_volume(pv, self.driver) or v.phase(pvc) != "Bound":
            return
        await self._modify(pvc, pv)

    # ------------------------------------------------------------------------ the operation

    async def _modify(self, pvc: Obj, pv: Obj) -> None:
        key = object_key(pvc)
        self._delay_if_recently_infeasible(pvc, key)
        target, current, status = v.spec_class(pvc), v.current_class(pvc), v.modify_status(pvc)
        if status is None and target == current:
            return
        in_progress = status is not None and status.get("status") == v.IN_PROGRESS
        if target == "" and not in_progress:
            await self._rolled_back(pvc)
            return
        if (in_progress and key in self.uncertain) or target == "":
            name = str((status or {}).get("targetVolumeAttributesClassName", ""))
            vac = self._target_class(pvc, name)
            if vac is None:
                raise ModifyError(f"get VAC with vac name {name} in VACInformer cache failed: not found")
            await self._modify_with_target(pvc, pv, vac)
            return
        vac = self._target_class(pvc, target)
        if vac is None:
            await self._patch(pvc, v.mark_status(pvc, v.PENDING), check_rv=True)
            return
        pvc = await self._patch(pvc, v.mark_status(pvc, v.IN_PROGRESS), check_rv=True)
        self.recorder.event(
            pvc,
            NORMAL,
            v.VOLUME_MODIFY,
            f"external resizer is modifying volume {_name(pvc)} with vac {_name(vac)}",
        )
        await self._modify_with_target(pvc, pv, vac)

    def _delay_if_recently_infeasible(self, pvc: Obj, key: str) -> None:
        status = v.modify_status(pvc)
        if status is None or status.get("targetVolumeAttributesClassName") != v.spec_class(pvc):
            self.slow.remove(key)  # a new target may be feasible
            return
        in_slow_set = self.slow.contains(key)
        if status.get("status") == v.INFEASIBLE:
            self.slow.add(key)
        if in_slow_set:
            raise Requeue(self.slow.time_remaining(key), "infeasible modification, slow retry")

    def _target_class(self, pvc: Obj, name: str) -> Obj | None:
        vac = self.classes.get(name)
        if vac is None:
            self.recorder.event(pvc, WARNING, v.VOLUME_MODIFY_FAILED, f'VAC "{name}" does not exist.')
        return vac

    async def _rolled_back(self, pvc: Obj) -> None:
        if v.has_condition(pvc, v.MODIFYING_VOLUME):
            self.recorder.event(pvc, NORMAL, v.VOLUME_MODIFY_CANCELED, "Cancelled modify.")
            await self._patch(pvc, v.without_modifying_condition(pvc), check_rv=True)

    async def _modify_with_target(self, pvc: Obj, pv: Obj, vac: Obj) -> None:
        key, vac_name = object_key(pvc), _name(vac)
        try:
            await self._call_modify(pvc, pv, vac)
        except Exception as exc:
            if status_code(exc) is None:
                raise ModifyError(f"cannot get error status from modify volume err: {exc}") from exc
            message = describe(exc)
            target_status = v.IN_PROGRESS
            if not is_final(exc):
                self.uncertain[key] = pvc
                message += ". Still modifying to VAC " + vac_name
            else:
                if code_name(exc) == "InvalidArgument":
                    target_status = v.INFEASIBLE
                self.uncertain.pop(key, None)
            pvc = await self._patch(pvc, v.mark_status(pvc, target_status, error=exc), check_rv=True)
            if target_status == v.INFEASIBLE:
                self.slow.add(key)
            self.recorder.event(pvc, WARNING, v.VOLUME_MODIFY_FAILED, message)
            raise ModifyError(message) from exc
        log.info("update volumeAttributesClass of PV succeeded", pv=_name(pv), vac=vac_name, v=4)
        self.recorder.event(
            pvc,
            NORMAL,
            v.VOLUME_MODIFY_SUCCESSFUL,
            f"external resizer modified volume {_name(pvc)} with vac {vac_name} successfully",
        )

    async def _call_modify(self, pvc: Obj, pv: Obj, vac: Obj) -> None:
        """callModifyVolumeOnPlugin, then markControllerModifyVolumeCompleted (PV first, then PVC)."""
        parameters = {str(k): str(val) for k, val in (vac.get("parameters") or {}).items()}
        if self.config.extra_modify_metadata:
            parameters[v.PVC_NAME_KEY] = _name(pvc)
            parameters[v.PVC_NAMESPACE_KEY] = str((pvc.get("metadata") or {}).get("namespace", ""))
            parameters[v.PV_NAME_KEY] = _name(pv)
        source = (pv.get("spec") or {}).get("csi") or {}
        volume_id = str(source.get("volumeHandle") or "")
        if not volume_id:
            raise ModifyError("empty volume handle")
        secrets = await read_secret(self.kube, v.modify_secret_ref(pv))
        request = csi_pb2.ControllerModifyVolumeRequest(
            volume_id=volume_id, secrets=secrets, mutable_parameters=parameters
        )
        await self.csi.controller.ControllerModifyVolume(request, timeout=self.config.standard.timeout)
        target = str((v.modify_status(pvc) or {}).get("targetVolumeAttributesClassName", _name(vac)))
        try:
            new_pv = dict(pv, spec={**(pv.get("spec") or {}), "volumeAttributesClassName": target})
            await self.writer.patch_volume(pv, new_pv)
        except ApiError as exc:
            raise ModifyError(
                f"update pv.Spec.VolumeAttributesClassName for PVC {_name(pvc)!r} failed, errored with: {exc}"
            ) from exc
        await self._patch(pvc, v.mark_completed(pvc, target), check_rv=False)

    async def _patch(self, old: Obj, new: Mapping[str, Any], *, check_rv: bool) -> Obj:
        try:
            return await self.writer.patch_claim(old, new, check_rv=check_rv)
        except ApiError as exc:
            raise ModifyError(
                f"mark PVC {_name(old)!r} as modify volume failed, errored with: {exc}"
            ) from exc


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))
