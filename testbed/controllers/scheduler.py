"""The scheduler's volume binding for WaitForFirstConsumer claims, and optionally pod placement.

What kube-scheduler's VolumeBinding plugin does once a pod that uses an unbound delayed-binding
claim lands on a node (here: once the pod has `spec.nodeName`, or this stand-in assigned it):

* if an Available PV matches the claim and the node (its node affinity against the Node's labels),
  the PV is pre-bound: `spec.claimRef` set to the claim and `pv.kubernetes.io/bound-by-controller:
  "yes"`; the PV controller completes the binding;
* otherwise, if the claim's class has a provisioner, the claim gets
  `volume.kubernetes.io/selected-node: <node>` and the PV controller hands it to the provisioner.

With `default_node` set, pods without `spec.nodeName` are placed on that node (the binding the
scheduler would POST; here a PUT of the pod), after their delayed claims are handled — but not while
a claim is missing or an immediate-binding claim is still unbound (the pod stays unschedulable).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import structlog

from testbed.apiserver import Store
from testbed.controllers.base import Controller, Key
from testbed.controllers.events import object_reference
from testbed.controllers.matching import find_matching_volume, is_delay_binding
from testbed.controllers.storage import (
    ANN_BIND_COMPLETED,
    ANN_BOUND_BY_CONTROLLER,
    ANN_SELECTED_NODE,
    annotations_of,
    claim_class,
    pod_claim_names,
)

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
PVCS, PVS = "persistentvolumeclaims", "persistentvolumes"


class VolumeScheduler(Controller):
    """Sets `volume.kubernetes.io/selected-node` (or pre-binds a PV) for scheduled pods' delayed claims."""

    name = "scheduler"
    resources = ("pods", PVCS, PVS, "storageclasses", "nodes")

    def __init__(self, store: Store, *, default_node: str | None = None, resync_period: float = 15.0) -> None:
        super().__init__(store, resync_period=resync_period)
        self.default_node = default_node

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        if resource == "pods" and new is not None:
            yield ("pod", f"{new['metadata']['namespace']}/{new['metadata']['name']}")
        elif resource in (PVCS, PVS, "nodes", "storageclasses") and new is not None:
            for pod in self.cache("pods").values():
                yield ("pod", f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")

    async def sync(self, key: Key) -> None:
        pod = self.cached("pods", key[1])
        if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
            return
        node_name = (pod.get("spec") or {}).get("nodeName") or self.default_node
        if not node_name or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        node = self.cached("nodes", node_name) or {"metadata": {"name": node_name, "labels": {}}}
        namespace = pod["metadata"]["namespace"]
        claims = [self.cached(PVCS, f"{namespace}/{name}") for name, _ in pod_claim_names(pod)]
        unschedulable = False
        for claim in claims:
            if claim is None:
                unschedulable = True  # `persistentvolumeclaim "x" not found`
            elif self._needs_binding(claim):
                await self._bind_claim(claim, node)
            elif not (claim.get("spec") or {}).get("volumeName"):
                unschedulable = True  # "pod has unbound immediate PersistentVolumeClaims"
        if not (pod.get("spec") or {}).get("nodeName") and not unschedulable:
            placed = copy.deepcopy(pod)
            placed["spec"]["nodeName"] = node_name
            log.info("pod scheduled", pod=key[1], node=node_name)
            self.remember("pods", await self.store.update("pods", placed, namespace=namespace))

    def _needs_binding(self, claim: Obj) -> bool:
        if (claim.get("spec") or {}).get("volumeName") or ANN_BIND_COMPLETED in annotations_of(claim):
            return False
        return is_delay_binding(claim, self.cache("storageclasses"))

    async def _bind_claim(self, claim: Obj, node: Obj) -> None:
        node_name = node["metadata"]["name"]
        meta = claim["metadata"]
        volume = find_matching_volume(claim, self.cache(PVS).values(), delay_binding=True, node=node)
        if volume is not None:
            if (volume.get("spec") or {}).get("claimRef"):
                return  # already pre-bound to this claim; the PV controller finishes
            clone = copy.deepcopy(volume)
            clone["spec"]["claimRef"] = object_reference(claim)
            clone["metadata"].setdefault("annotations", {})[ANN_BOUND_BY_CONTROLLER] = "yes"
            log.info(
                "pre-binding volume", pvc=f"{meta['namespace']}/{meta['name']}", pv=volume["metadata"]["name"]
            )
            self.remember(PVS, await self.store.update(PVS, clone))
            return
        storage_class = self.cached("storageclasses", claim_class(claim)) or {}
        if not storage_class.get("provisioner") or ANN_SELECTED_NODE in annotations_of(claim):
            return  # an existing selected-node is the scheduler's earlier decision
        clone = copy.deepcopy(claim)
        clone["metadata"].setdefault("annotations", {})[ANN_SELECTED_NODE] = node_name
        log.info("selected node for claim", pvc=f"{meta['namespace']}/{meta['name']}", node=node_name)
        self.remember(PVCS, await self.store.update(PVCS, clone, namespace=meta["namespace"]))
