"""Distributed provisioning (`--node-deployment`): one provisioner per node, each for its own node's claims.

external-provisioner's `NodeDeployment`, `checkNode`, `becomeOwner` and `checkCapacity`:

* The process runs next to the driver on node `$NODE_NAME`; NodeGetInfo gives the node's topology.
  Instead of watching Nodes and CSINodes, the topology code sees one static Node (labels = that
  topology) and one CSINode (its keys) — `node_view()`.
* A claim whose `volume.kubernetes.io/selected-node` is this node is provisioned; one selected for
  another node is ignored.
* An unselected claim of an Immediate StorageClass (with `--node-deployment-immediate-binding`,
  default true) is claimed: wait a jittered exponential delay (`--node-deployment-base-delay` 20s
  doubling to `--node-deployment-max-delay` 60s, minus up to one base delay of jitter), give up at
  once if another node selected it meanwhile, check the capacity (GetCapacity for each requisite
  segment of the request this node would send; a failing check does not stop us), then set
  `selected-node` to this node with a PVC update. A Conflict means someone was faster: try again
  after the next, longer delay. Once selected, the update event brings the claim back and it is
  provisioned here. A StorageClass with allowedTopologies that exclude this node is left alone.
* Only PVs whose node affinity admits this node's topology are deleted (sidecars.provisioner.deleter).

Differences from upstream, on purpose: the wait does not hold a worker (the claim is requeued for
when it is due; its informer update ends the wait early, as upstream's 1%-of-base-delay poll does);
a capacity check on this node that finds too little space looks again after the max delay, where
upstream waits for an informer resync; and the capacity check never puts a protection finalizer on
a data source (upstream's prepareProvision does).
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from common.backoff import ItemExponential
from common.controller import Requeue
from common.csi.errors import describe
from common.kube.client import ApiError
from common.kube.informer import FuncHandler, Informer
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS
from common.logging import get_logger
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import requested_bytes
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.topology import (
    NodeView,
    TopologyCache,
    TopologyError,
    TopologyRequest,
    accessibility_requirements,
)

log = get_logger(__name__)

Obj = dict[str, Any]
NO_CHANGE = ProvisioningState.NO_CHANGE


class JitteredBackoff:
    """upstream `rateLimiterWithJitter`: per-claim exponential delay minus up to one base delay."""

    def __init__(self, base: float, cap: float, *, rand: Callable[[], float] = random.random) -> None:
        self.base = base
        self._exponential: ItemExponential[str] = ItemExponential(base, cap)
        self._rand = rand

    def when(self, item: str) -> float:
        delay = self._exponential.when(item)
        jitter = self.base * self._rand()
        return 0.0 if jitter > delay else delay - jitter

    def forget(self, item: str) -> None:
        self._exponential.forget(item)

    def num_requeues(self, item: str) -> int:
        return self._exponential.num_requeues(item)


def node_view(driver: str, node: str, node_id: str, topology: Mapping[str, str]) -> NodeView:
    """The static Node and CSINode upstream fakes for the topology code with `--node-deployment`."""
    csinode = {
        "metadata": {"name": node},
        "spec": {"drivers": [{"name": driver, "nodeID": node_id, "topologyKeys": list(topology)}]},
    }
    fake_node = {"metadata": {"name": node, "labels": dict(topology)}}
    return NodeView({node: csinode}, {node: fake_node})


class NodeDeployment:
    """Decides which claims this node's provisioner takes (see the module docstring)."""

    def __init__(
        self, *, config: ProvisionerConfig, provisioner: Provisioner, claims: Informer, classes: Informer
    ) -> None:
        self.node = config.node_name
        self.kube = claims.client
        self.claims = claims
        self.classes = classes
        self.builder = provisioner.builder
        self.controller = provisioner.controller
        """The csi.v1.Controller stub, for GetCapacity."""
        self.timeout = provisioner.timeout
        self.immediate_binding = config.node_deployment_immediate_binding
        self.max_delay = config.node_deployment_max_delay
        self.backoff = JitteredBackoff(config.node_deployment_base_delay, config.node_deployment_max_delay)
        self._due: dict[str, float] = {}
        """Claim UID → loop time at which to try to become its owner."""
        claims.add_handler(FuncHandler(delete=self._forget))

    def _forget(self, claim: Obj) -> None:
        uid = names.claim_uid(claim)
        self.backoff.forget(uid)
        self._due.pop(uid, None)

    async def check(self, claim: Obj) -> bool:
        """upstream `checkNode`: True when this node provisions `claim` now; may raise Requeue."""
        selected = names.annotations_of(claim).get(names.ANN_SELECTED_NODE, "")
        if selected == self.node:
            return True
        if selected:
            self._forget(claim)
            return False
        sc = self.classes.get(names.claim_class(claim))
        if sc is None or sc.get("volumeBindingMode") != "Immediate" or not self.immediate_binding:
            return False
        if sc.get("allowedTopologies") and self.builder.driver.topology and not self._allowed_here(claim, sc):
            return False
        await self.become_owner(claim, sc)
        return False

    def _allowed_here(self, claim: Obj, sc: Mapping[str, Any]) -> bool:
        meta = claim.get("metadata") or {}
        request = TopologyRequest(
            driver=self.builder.driver.name,
            pvc_uid=str(meta.get("uid", "")),
            pvc_name=str(meta.get("name", "")),
            allowed_topologies=list(sc.get("allowedTopologies") or []),
            selected_node=self.node,
            strict=self.builder.config.strict_topology,
            immediate=self.builder.config.immediate_topology,
        )
        try:
            accessibility_requirements(request, self.builder.nodes or NodeView({}, {}), TopologyCache())
        except TopologyError as err:
            log.info(
                "ignoring PVC, allowed topologies is not compatible",
                pvc=names.claim_key(claim),
                error=str(err),
                v=5,
            )
            return False
        return True

    async def become_owner(self, claim: Obj, sc: Mapping[str, Any]) -> None:
        """upstream `becomeOwner`: wait (Requeue), check capacity, then select this node."""
        uid, key = names.claim_uid(claim), names.claim_key(claim)
        now = asyncio.get_running_loop().time()
        due = self._due.get(uid)
        if due is None:
            attempt = self.backoff.num_requeues(uid)
            delay = self.backoff.when(uid)
            self._due[uid] = due = now + delay
            log.info(
                "will try to become owner of PVC", pvc=key, seconds=round(delay, 3), attempt=attempt, v=5
            )
        if now < due:
            raise Requeue(due - now, "waiting before trying to become the owner of the PVC")
        del self._due[uid]
        meta = claim["metadata"]
        current = self.claims.get(meta["name"], meta.get("namespace"))
        if current is None:
            raise ProvisionError(f"PVC {key}: PVC not found", NO_CHANGE)
        if names.claim_uid(current) != uid:
            raise ProvisionError(f"PVC {key}: PVC was replaced", NO_CHANGE)
        owner = names.annotations_of(current).get(names.ANN_SELECTED_NODE, "")
        if owner and owner != self.node:
            self.backoff.forget(uid)
            log.info("did not become owner of PVC", pvc=key, owner=owner, v=5)
            return
        if owner == self.node:
            return
        if not await self.has_capacity(current, sc):
            log.info("not enough capacity for PVC", pvc=key, v=5)
            raise Requeue(self.max_delay, "not enough capacity on this node")
        updated = copy.deepcopy(current)
        updated["metadata"].setdefault("annotations", {})[names.ANN_SELECTED_NODE] = self.node
        log.info(
            "trying to become owner of PVC now", pvc=key, resource_version=meta.get("resourceVersion"), v=5
        )
        try:
            await self.kube.update(PERSISTENT_VOLUME_CLAIMS, updated)
        except ApiError as err:
            if err.conflict:
                log.info("conflict during PVC update, will try again", pvc=key, v=3)
                delay = self.backoff.when(uid)
                self._due[uid] = asyncio.get_running_loop().time() + delay
                raise Requeue(delay, "lost the race for the PVC") from None
            raise ProvisionError(
                f'PVC {key}: selecting node "{self.node}" for PVC failed: {err}', NO_CHANGE
            ) from None
        self.backoff.forget(uid)
        log.info("became owner of PVC", pvc=key, v=5)

    async def has_capacity(self, claim: Obj, sc: Mapping[str, Any]) -> bool:
        """upstream `checkCapacity`; a check that cannot be made counts as "enough"."""
        size = requested_bytes(claim)
        if size == 0:
            return True
        try:
            prepared = await self.builder.prepare(claim, sc, self.node, protect=False)
        except (ProvisionError, IgnoredClaim) as err:
            log.info("proceeding with becoming owner although the capacity check failed", error=str(err), v=3)
            return True
        request = prepared.request
        topologies: list[Any] = list(request.accessibility_requirements.requisite) or [None]
        for topology in topologies:
            ask = csi_pb2.GetCapacityRequest(
                volume_capabilities=list(request.volume_capabilities), parameters=dict(request.parameters)
            )
            if topology is not None:
                ask.accessible_topology.CopyFrom(topology)
            try:
                answer = await self.controller.GetCapacity(ask, timeout=self.timeout)
            except grpc.RpcError as err:
                log.info(
                    "proceeding with becoming owner although the capacity check failed",
                    error=f"GetCapacity: {describe(err)}",
                    v=3,
                )
                return True
            if size <= answer.available_capacity:
                return True
        return False
