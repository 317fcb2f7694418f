"""The PV controller (kube-controller-manager's persistentvolume-binder), for claims and volumes it binds.

Follows pkg/controller/volume/persistentvolume/pv_controller.go:

* an unbound claim with no matching volume and a class whose provisioner is external gets the
  `volume.kubernetes.io/storage-provisioner` and `volume.beta.kubernetes.io/storage-provisioner`
  annotations and the Normal `ExternalProvisioning` event ("Waiting for a volume to be created either
  by the external provisioner '<name>' or manually ..."), once per sync, deduplicated into a count;
  with WaitForFirstConsumer nothing happens until the scheduler sets `volume.kubernetes.io/selected-node`
  (`WaitForFirstConsumer` / `WaitForPodScheduled` events meanwhile);
* a volume whose claimRef names the claim (what the provisioner creates) and an Available volume that
  matches are bound on both sides: PV `spec.claimRef` + phase Bound (the API server stamps
  `lastPhaseTransitionTime`), PVC `spec.volumeName`, `pv.kubernetes.io/bind-completed: "yes"`,
  `pv.kubernetes.io/bound-by-controller: "yes"` where the controller did the binding, and PVC status
  phase Bound with `accessModes` and `capacity` (from `volume.alpha.kubernetes.io/pre-resize-capacity`
  if set);
* a volume whose claim is gone becomes Released; Retain keeps it, Delete of a CSI or externally
  provisioned volume is the provisioner's job (HonorPVReclaimPolicy), Recycle fails (no recycler);
* claims bound to a missing volume become Lost (`ClaimLost`, `ClaimMisbound` events).
Writes are PUTs (spec or /status) with the object's resourceVersion; a Conflict fails the sync, which
is retried with backoff from the newer cached object.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import structlog

from testbed.apiserver import NotFound, Store
from testbed.controllers.base import Controller, Key
from testbed.controllers.events import NORMAL, WARNING, EventRecorder, object_reference
from testbed.controllers.matching import (
    claim_has_class,
    default_class,
    find_matching_volume,
    is_delay_binding,
    unsatisfied_because,
)
from testbed.controllers.storage import (
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_DYNAMICALLY_PROVISIONED,
    ANN_PRE_RESIZE_CAPACITY,
    ANN_SELECTED_NODE,
    ANN_STORAGE_PROVISIONER,
    MIGRATED_PLUGINS,
    annotations_of,
    claim_class,
    is_volume_bound_to_claim,
    storage,
    unscheduled_pods_using,
)

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PVCS, PVS = "persistentvolumeclaims", "persistentvolumes"
COMPONENT = "persistentvolume-controller"


def _set_annotation(obj: Obj, key: str, value: str) -> None:
    obj.setdefault("metadata", {}).setdefault("annotations", {})[key] = value


class PersistentVolumeController(Controller):
    """Binds claims and volumes, hands claims to external provisioners, releases volumes."""

    name = "persistentvolume-binder"
    resources = (PVCS, PVS, "storageclasses", "pods")

    def __init__(self, store: Store, *, resync_period: float = 15.0) -> None:
        super().__init__(store, resync_period=resync_period)
        self.recorder = EventRecorder(store, COMPONENT)

    # ---- triggers -----------------------------------------------------------------------------------

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        meta = obj.get("metadata") or {}
        if resource == PVCS:
            yield ("claim", f"{meta.get('namespace')}/{meta.get('name')}")
            if new is None and (volume := (obj.get("spec") or {}).get("volumeName")):
                yield ("volume", volume)
        elif resource == PVS:
            yield ("volume", str(meta.get("name")))
            ref = (obj.get("spec") or {}).get("claimRef")
            if new is None and ref:
                yield ("claim", f"{ref.get('namespace')}/{ref.get('name')}")

    async def sync(self, key: Key) -> None:
        kind, name = key
        if kind == "claim":
            claim = self.cached(PVCS, name)
            if claim is not None:
                if ANN_BIND_COMPLETED not in annotations_of(claim):
                    await self._sync_unbound_claim(claim)
                else:
                    await self._sync_bound_claim(claim)
        elif (volume := self.cached(PVS, name)) is not None:
            await self._sync_volume(volume)

    # ---- claims -------------------------------------------------------------------------------------

    async def _sync_unbound_claim(self, claim: Obj) -> None:
        volume_name = (claim.get("spec") or {}).get("volumeName") or ""
        if not volume_name:
            classes = self.cache("storageclasses")
            delay = is_delay_binding(claim, classes)
            volume = find_matching_volume(claim, self.cache(PVS).values(), delay_binding=delay)
            if volume is not None:
                await self._bind(volume, claim)
                return
            if await self._assign_default_class(claim):
                return
            if delay and ANN_SELECTED_NODE not in annotations_of(claim):
                await self._emit_unbound_delay_binding(claim)
            elif claim_class(claim):
                await self._provision(claim)
                return
            else:
                await self.recorder.event(
                    claim,
                    NORMAL,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
            await self._update_claim_status(claim, "Pending", None)
            return
        volume = self.cached(PVS, volume_name)
        if volume is None:
            await self._update_claim_status(claim, "Pending", None)
        elif not (volume.get("spec") or {}).get("claimRef"):
            if reason := unsatisfied_because(volume, claim):
                message = f"Cannot bind to requested volume {volume_name!r}: {reason}"
                await self.recorder.event(claim, WARNING, "VolumeMismatch", message)
                await self._update_claim_status(claim, "Pending", None)
            else:
                await self._bind(volume, claim)
        elif is_volume_bound_to_claim(volume, claim):
            await self._bind(volume, claim)
        else:
            message = f'volume "{volume_name}" already bound to a different claim.'
            await self.recorder.event(claim, WARNING, "FailedBinding", message)
            if ANN_BOUND_BY_CONTROLLER in annotations_of(claim):
                raise RuntimeError(f"invalid binding of claim to volume {volume_name}: already claimed")
            await self._update_claim_status(claim, "Pending", None)

    async def _sync_bound_claim(self, claim: Obj) -> None:
        volume_name = (claim.get("spec") or {}).get("volumeName") or ""
        volume = self.cached(PVS, volume_name) if volume_name else None
        if volume is None:
            message = (
                "Bound claim has lost its PersistentVolume. Data on the volume is lost!"
                if volume_name
                else "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!"
            )
            await self._update_claim_status_with_event(claim, "Lost", "ClaimLost", message)
            return
        ref = (volume.get("spec") or {}).get("claimRef")
        if not ref or ref.get("uid") == claim["metadata"].get("uid"):
            await self._bind(volume, claim)
        else:
            message = "Two claims are bound to the same volume, this one is bound incorrectly"
            await self._update_claim_status_with_event(claim, "Lost", "ClaimMisbound", message)

    async def _assign_default_class(self, claim: Obj) -> bool:
        """Retroactive default StorageClass assignment to a claim that names no class."""
        if claim_has_class(claim):
            return False
        chosen = default_class(self.cache("storageclasses").values())
        if chosen is None:
            return False
        clone = copy.deepcopy(claim)
        clone.setdefault("spec", {})["storageClassName"] = chosen["metadata"]["name"]
        self.remember(PVCS, await self.store.update(PVCS, clone, namespace=claim["metadata"]["namespace"]))
        return True

    async def _emit_unbound_delay_binding(self, claim: Obj) -> None:
        waiting = unscheduled_pods_using(self.cache("pods").values(), claim)
        reason, message = "WaitForFirstConsumer", "waiting for first consumer to be created before binding"
        if waiting:
            reason = "WaitForPodScheduled"
            plural = "pods" if len(waiting) > 1 else "pod"
            message = f"waiting for {plural} {','.join(waiting)} to be scheduled"
        await self.recorder.event(claim, NORMAL, reason, message)

    async def _provision(self, claim: Obj) -> None:
        """`provisionClaim` for external provisioners: annotate the claim, tell the user."""
        class_name = claim_class(claim)
        storage_class = self.cached("storageclasses", class_name)
        if storage_class is None:
            message = f'storageclass.storage.k8s.io "{class_name}" not found'
            await self.recorder.event(claim, WARNING, "ProvisioningFailed", message)
            return
        provisioner = str(storage_class.get("provisioner") or "")
        provisioner = MIGRATED_PLUGINS.get(provisioner, provisioner)
        if provisioner.startswith("kubernetes.io/"):
            message = f"no volume plugin matched name: {provisioner}"
            await self.recorder.event(claim, WARNING, "ProvisioningFailed", message)
            return
        if annotations_of(claim).get(ANN_STORAGE_PROVISIONER) != provisioner:
            clone = copy.deepcopy(claim)
            _set_annotation(clone, ANN_BETA_STORAGE_PROVISIONER, provisioner)
            _set_annotation(clone, ANN_STORAGE_PROVISIONER, provisioner)
            namespace = claim["metadata"]["namespace"]
            claim = self.remember(PVCS, await self.store.update(PVCS, clone, namespace=namespace))
        message = (
            f"Waiting for a volume to be created either by the external provisioner '{provisioner}' "
            "or manually by the system administrator. If volume creation is delayed, please verify "
            "that the provisioner is running and correctly registered."
        )
        await self.recorder.event(claim, NORMAL, "ExternalProvisioning", message)

    # ---- binding ------------------------------------------------------------------------------------

    async def _bind(self, volume: Obj, claim: Obj) -> None:
        """`bind`: the volume first (spec, then status), then the claim (spec, then status)."""
        volume = await self._bind_volume_to_claim(volume, claim)
        volume = await self._update_volume_phase(volume, "Bound")
        claim = await self._bind_claim_to_volume(claim, volume)
        await self._update_claim_status(claim, "Bound", volume)

    async def _bind_volume_to_claim(self, volume: Obj, claim: Obj) -> Obj:
        clone, dirty = copy.deepcopy(volume), False
        ref = (volume.get("spec") or {}).get("claimRef") or {}
        meta = claim["metadata"]
        if (ref.get("name"), ref.get("namespace"), ref.get("uid")) != (
            meta["name"],
            meta["namespace"],
            meta.get("uid"),
        ):
            reference = object_reference({"kind": "PersistentVolumeClaim", "apiVersion": "v1", **claim})
            clone.setdefault("spec", {})["claimRef"] = reference
            dirty = True
        if not is_volume_bound_to_claim(volume, claim) and ANN_BOUND_BY_CONTROLLER not in annotations_of(
            clone
        ):
            _set_annotation(clone, ANN_BOUND_BY_CONTROLLER, "yes")
            dirty = True
        if not dirty:
            return volume
        log.info("claim bound to volume", pvc=f"{meta['namespace']}/{meta['name']}", pv=volume_name(volume))
        return self.remember(PVS, await self.store.update(PVS, clone))

    async def _bind_claim_to_volume(self, claim: Obj, volume: Obj) -> Obj:
        clone, dirty = copy.deepcopy(claim), False
        if (claim.get("spec") or {}).get("volumeName") != volume_name(volume):
            clone.setdefault("spec", {})["volumeName"] = volume_name(volume)
            if ANN_BOUND_BY_CONTROLLER not in annotations_of(clone):
                _set_annotation(clone, ANN_BOUND_BY_CONTROLLER, "yes")
            dirty = True
        if ANN_BIND_COMPLETED not in annotations_of(clone):
            _set_annotation(clone, ANN_BIND_COMPLETED, "yes")
            dirty = True
        if not dirty:
            return claim
        return self.remember(
            PVCS, await self.store.update(PVCS, clone, namespace=claim["metadata"]["namespace"])
        )

    async def _update_claim_status(self, claim: Obj, phase: str, volume: Obj | None) -> Obj:
        """`updateClaimStatus`: phase, and accessModes/capacity from the volume (or none)."""
        status = claim.get("status") or {}
        clone, dirty = copy.deepcopy(claim), False
        new_status = clone.setdefault("status", {})
        if status.get("phase") != phase:
            new_status["phase"], dirty = phase, True
        if volume is None:
            for field in ("accessModes", "capacity"):
                if new_status.pop(field, None) is not None:
                    dirty = True
        else:
            spec = volume.get("spec") or {}
            if status.get("accessModes") != spec.get("accessModes"):
                new_status["accessModes"], dirty = copy.deepcopy(spec.get("accessModes")), True
            if status.get("phase") != phase:
                pre_resize = annotations_of(volume).get(ANN_PRE_RESIZE_CAPACITY)
                if pre_resize is not None:
                    new_status.setdefault("capacity", {})["storage"] = pre_resize
                    dirty = True
                elif storage(status.get("capacity")) != storage(spec.get("capacity")):
                    new_status["capacity"], dirty = copy.deepcopy(spec.get("capacity")), True
        if not dirty:
            return claim
        namespace = claim["metadata"]["namespace"]
        return self.remember(PVCS, await self.store.update_status(PVCS, clone, namespace=namespace))

    async def _update_claim_status_with_event(
        self, claim: Obj, phase: str, reason: str, message: str
    ) -> None:
        if (claim.get("status") or {}).get("phase") == phase:
            return
        claim = await self._update_claim_status(claim, phase, None)
        await self.recorder.event(claim, WARNING, reason, message)

    async def _update_volume_phase(self, volume: Obj, phase: str, message: str = "") -> Obj:
        if (volume.get("status") or {}).get("phase") == phase:
            return volume
        clone = copy.deepcopy(volume)
        status = clone.setdefault("status", {})
        status["phase"] = phase
        if message:
            status["message"] = message
        else:
            status.pop("message", None)
        log.info("volume entered phase", pv=volume_name(volume), phase=phase)
        return self.remember(PVS, await self.store.update_status(PVS, clone))

    # ---- volumes ------------------------------------------------------------------------------------

    async def _sync_volume(self, volume: Obj) -> None:
        ref = (volume.get("spec") or {}).get("claimRef")
        if not ref or not ref.get("uid"):
            await self._update_volume_phase(volume, "Available")
            return
        claim = await self._claim_of(volume, ref)
        if claim is None:
            if (volume.get("status") or {}).get("phase") not in ("Released", "Failed"):
                volume = await self._update_volume_phase(volume, "Released")
            await self._reclaim(volume)
            return
        bound_to = (claim.get("spec") or {}).get("volumeName") or ""
        if not bound_to:
            self.queue.add(("claim", f"{ref['namespace']}/{ref['name']}"))
        elif bound_to == volume_name(volume):
            await self._update_volume_phase(volume, "Bound")
        elif ANN_DYNAMICALLY_PROVISIONED in annotations_of(volume) and _policy(volume) == "Delete":
            if (volume.get("status") or {}).get("phase") not in ("Released", "Failed"):
                volume = await self._update_volume_phase(volume, "Released")
            await self._reclaim(volume)
        else:
            await self._unbind_volume(volume)

    async def _claim_of(self, volume: Obj, ref: Obj) -> Obj | None:
        """The claim the volume is bound to (same uid), double-checked with the API server."""
        key = f"{ref.get('namespace')}/{ref.get('name')}"
        claim = self.cached(PVCS, key)
        if claim is None or claim["metadata"].get("uid") != ref.get("uid"):
            try:
                claim = await self.store.get(PVCS, str(ref.get("name")), namespace=str(ref.get("namespace")))
            except NotFound:
                return None
        return claim if claim["metadata"].get("uid") == ref.get("uid") else None

    async def _unbind_volume(self, volume: Obj) -> None:
        clone = copy.deepcopy(volume)
        if ANN_BOUND_BY_CONTROLLER in annotations_of(volume):
            clone["spec"].pop("claimRef", None)
            clone["metadata"]["annotations"].pop(ANN_BOUND_BY_CONTROLLER, None)
            if not clone["metadata"]["annotations"]:
                del clone["metadata"]["annotations"]
        else:
            clone["spec"]["claimRef"].pop("uid", None)
        volume = self.remember(PVS, await self.store.update(PVS, clone))
        await self._update_volume_phase(volume, "Available")

    async def _reclaim(self, volume: Obj) -> None:
        """`reclaimVolume`; deletion of CSI and external volumes is left to their provisioner."""
        policy = _policy(volume)
        if policy == "Retain" or annotations_of(volume).get("pv.kubernetes.io/migrated-to"):
            return
        if policy == "Recycle":
            message = "No recycler plugin found for the volume!"
            await self._update_volume_phase_with_event(volume, "VolumeFailedRecycle", message)
        elif policy == "Delete":
            provisioner = annotations_of(volume).get(ANN_DYNAMICALLY_PROVISIONED, "")
            if (provisioner and not provisioner.startswith("kubernetes.io/")) or (
                volume.get("spec") or {}
            ).get("csi"):
                return
            message = (
                f'error getting deleter volume plugin for volume "{volume_name(volume)}": '
                "no deletable volume plugin matched"
            )
            await self._update_volume_phase_with_event(volume, "VolumeFailedDelete", message)
        else:
            message = "Volume has unrecognized PersistentVolumeReclaimPolicy"
            await self._update_volume_phase_with_event(volume, "VolumeUnknownReclaimPolicy", message)

    async def _update_volume_phase_with_event(self, volume: Obj, reason: str, message: str) -> None:
        if (volume.get("status") or {}).get("phase") == "Failed":
            return
        volume = await self._update_volume_phase(volume, "Failed", message)
        await self.recorder.event(volume, WARNING, reason, message)


def volume_name(volume: Obj) -> str:
    return str(volume["metadata"]["name"])


def _policy(volume: Obj) -> str:
    return str((volume.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "")
