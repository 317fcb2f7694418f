"""The pvc-protection and pv-protection controllers: what lets a deleted PVC or PV finally go.

* pvc-protection (pkg/controller/volume/pvcprotection): a PVC being deleted keeps its
  `kubernetes.io/pvc-protection` finalizer while a *scheduled* pod (`spec.nodeName` set) references
  it — whatever the pod's phase, until the pod object is gone (a generic ephemeral volume's pod
  stops counting once it is shut down: deleting with a zero grace period). Both the cache and a live
  list must agree the PVC is unused before the finalizer is removed;
* pv-protection (pkg/controller/volume/pvprotection): a PV being deleted keeps
  `kubernetes.io/pv-protection` while its phase is Bound;
* both add their finalizer to an object that lacks it and is not being deleted (for objects created
  before the admission plugin was on).

Finalizer changes are PUTs with the object's resourceVersion; a Conflict retries the key.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import structlog

from testbed.apiserver import Store
from testbed.controllers.base import Controller, Key
from testbed.controllers.storage import PV_PROTECTION, PVC_PROTECTION

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PVCS, PVS = "persistentvolumeclaims", "persistentvolumes"


def _finalizers(obj: Obj) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _with_finalizers(obj: Obj, finalizers: list[str]) -> Obj:
    clone = copy.deepcopy(obj)
    if finalizers:
        clone["metadata"]["finalizers"] = finalizers
    else:
        clone["metadata"].pop("finalizers", None)
    return clone


def pod_is_shut_down(pod: Obj) -> bool:
    """`podIsShutDown`: kubelet is done with it (deleting with grace 0) or it was force-deleted."""
    meta = pod.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) and meta.get("deletionGracePeriodSeconds") == 0


def pod_uses_claim(pod: Obj, claim: Obj) -> bool:
    """`podUsesPVC`: only scheduled pods count, kubelet refuses to start one with a deleting PVC."""
    if not (pod.get("spec") or {}).get("nodeName"):
        return False
    meta = claim["metadata"]
    if (pod.get("metadata") or {}).get("namespace") != meta.get("namespace"):
        return False
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        source = volume.get("persistentVolumeClaim")
        if source and source.get("claimName") == meta["name"]:
            return True
        ephemeral_name = f"{pod['metadata']['name']}-{volume.get('name', '')}"
        if (
            volume.get("ephemeral") is not None
            and not pod_is_shut_down(pod)
            and ephemeral_name == meta["name"]
        ):
            owners = (claim.get("metadata") or {}).get("ownerReferences") or []
            if any(o.get("uid") == pod["metadata"].get("uid") and o.get("controller") for o in owners):
                return True
    return False


class PVCProtectionController(Controller):
    """Removes `kubernetes.io/pvc-protection` from a deleting PVC that no scheduled pod uses."""

    name = "pvc-protection"
    resources = (PVCS, "pods")

    def __init__(self, store: Store, *, resync_period: float = 15.0) -> None:
        super().__init__(store, resync_period=resync_period)

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        meta = obj.get("metadata") or {}
        if resource == PVCS:
            yield ("claim", f"{meta.get('namespace')}/{meta.get('name')}")
            return
        for pod in (old, new):
            for volume in ((pod or {}).get("spec") or {}).get("volumes") or []:
                if source := volume.get("persistentVolumeClaim"):
                    yield ("claim", f"{meta.get('namespace')}/{source.get('claimName')}")
                elif volume.get("ephemeral") is not None:
                    yield ("claim", f"{meta.get('namespace')}/{meta.get('name')}-{volume.get('name')}")

    async def sync(self, key: Key) -> None:
        claim = self.cached(PVCS, key[1])
        if claim is None:
            return
        finalizers = _finalizers(claim)
        namespace = claim["metadata"]["namespace"]
        if _deleting(claim) and PVC_PROTECTION in finalizers:
            if await self._in_use(claim):
                log.debug("keeping PVC because it is being used", pvc=key[1])
                return
            remaining = [f for f in finalizers if f != PVC_PROTECTION]
            log.info("removing PVC protection finalizer", pvc=key[1])
            self.remember(
                PVCS, await self.store.update(PVCS, _with_finalizers(claim, remaining), namespace=namespace)
            )
        elif not _deleting(claim) and PVC_PROTECTION not in finalizers:
            updated = _with_finalizers(claim, [*finalizers, PVC_PROTECTION])
            self.remember(PVCS, await self.store.update(PVCS, updated, namespace=namespace))

    async def _in_use(self, claim: Obj) -> bool:
        if any(pod_uses_claim(pod, claim) for pod in self.cache("pods").values()):
            return True
        live = await self.store.list("pods", namespace=claim["metadata"]["namespace"])
        return any(pod_uses_claim(pod, claim) for pod in live["items"])


class PVProtectionController(Controller):
    """Removes `kubernetes.io/pv-protection` from a deleting PV that is not Bound."""

    name = "pv-protection"
    resources = (PVS,)

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        obj = new or old or {}
        yield ("volume", str((obj.get("metadata") or {}).get("name")))

    async def sync(self, key: Key) -> None:
        volume = self.cached(PVS, key[1])
        if volume is None:
            return
        finalizers = _finalizers(volume)
        if _deleting(volume) and PV_PROTECTION in finalizers:
            if (volume.get("status") or {}).get("phase") == "Bound":
                log.debug("keeping PV because it is being used", pv=key[1])
                return
            remaining = [f for f in finalizers if f != PV_PROTECTION]
            log.info("removing PV protection finalizer", pv=key[1])
            self.remember(PVS, await self.store.update(PVS, _with_finalizers(volume, remaining)))
        elif not _deleting(volume) and PV_PROTECTION not in finalizers:
            self.remember(
                PVS, await self.store.update(PVS, _with_finalizers(volume, [*finalizers, PV_PROTECTION]))
            )
