"""Distributed provisioning decisions with fakes: which node takes a claim, the jittered wait, the capacity
check, the race for `selected-node`, and which PVs a node may delete."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.controller import Requeue
from common.kube.client import ApiError
from common.kube.informer import Informer
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, STORAGE_CLASSES
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.nodedeployment import JitteredBackoff, NodeDeployment, node_view
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.topology import TopologyCache, volume_accessible
from sidecars.provisioner.volume import PVSettings

DRIVER = "hostpath.csi.k8s.io"
KEY = "topology.hostpath.csi/node"
Obj = dict[str, Any]


def test_jittered_backoff_is_upstreams() -> None:
    backoff = JitteredBackoff(20.0, 60.0, rand=lambda: 0.25)
    assert [backoff.when("a") for _ in range(4)] == [15.0, 35.0, 55.0, 55.0]  # 20, 40, 80->60, minus 5
    assert backoff.num_requeues("a") == 4
    backoff.forget("a")
    assert backoff.when("a") == 15.0
    assert JitteredBackoff(20.0, 60.0, rand=lambda: 0.999).when("b") == pytest.approx(0.02)
    assert JitteredBackoff(1.0, 60.0, rand=lambda: 1.0).when("c") == 0.0  # jitter > delay: no wait


def pv_on(*nodes: str) -> Obj:
    terms = [{"matchExpressions": [{"key": KEY, "operator": "In", "values": [n]}]} for n in nodes]
    return {"spec": {"nodeAffinity": {"required": {"nodeSelectorTerms": terms}}}}


def test_a_node_deletes_only_volumes_its_topology_admits() -> None:
    assert volume_accessible(pv_on("node-a"), {KEY: "node-a"})
    assert not volume_accessible(pv_on("node-b"), {KEY: "node-a"})
    assert volume_accessible(pv_on("node-b", "node-a"), {KEY: "node-a"})  # terms are ORed
    assert volume_accessible({"spec": {}}, {KEY: "node-a"})  # no affinity: anywhere
    assert volume_accessible(pv_on("node-b"), {})  # no topology reported: everything
    exists = {
        "spec": {
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": KEY, "operator": "Exists"}]}]
                }
            }
        }
    }
    assert volume_accessible(exists, {KEY: "x"}) and not volume_accessible(exists, {"other": "x"})
    fields = {
        "spec": {
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        }
    }
    assert not volume_accessible(fields, {KEY: "a"})


class Kube:
    def __init__(self) -> None:
        self.updates: list[Obj] = []
        self.fail: list[ApiError] = []

    async def update(self, resource: Any, obj: Obj, **kw: Any) -> Obj:
        if self.fail:
            raise self.fail.pop(0)
        self.updates.append(copy.deepcopy(obj))
        return obj


class Csi:
    def __init__(self, available: int) -> None:
        self.available = available
        self.requests: list[Any] = []

    async def GetCapacity(self, request: Any, *, timeout: float) -> Any:
        self.requests.append(request)
        return csi_pb2.GetCapacityResponse(available_capacity=self.available)


def claim(name: str = "data", **annotations: str) -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "resourceVersion": "5",
            "annotations": {names.ANN_STORAGE_PROVISIONER: DRIVER, **annotations},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "sc",
        },
    }


def deployment(available: int = 10 * 2**30, **config: Any) -> tuple[NodeDeployment, Kube, Csi]:
    kube, csi = Kube(), Csi(available)
    cfg = ProvisionerConfig(
        standard=StandardConfig(),
        node_deployment=True,
        node_name="node-a",
        node_deployment_base_delay=0.0,
        node_deployment_max_delay=0.0,
        **config,
    )
    plugin = frozenset({"CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS"})
    driver = Driver(name=DRIVER, plugin_capabilities=plugin, node_id="a", node_topology=((KEY, "node-a"),))
    builder = RequestBuilder(
        config=cfg,
        driver=driver,
        kube=kube,  # type: ignore[arg-type]
        nodes=node_view(DRIVER, "node-a", "a", {KEY: "node-a"}),
        topology_cache=TopologyCache(),
    )
    settings = PVSettings(driver=DRIVER, identity="1-2-x", topology=True)
    provisioner = Provisioner(
        controller=csi, builder=builder, settings=settings, timeout=1.0, topology_cache=TopologyCache()
    )
    claims = Informer(kube, PERSISTENT_VOLUME_CLAIMS)  # type: ignore[arg-type]
    classes = Informer(kube, STORAGE_CLASSES)  # type: ignore[arg-type]
    classes.store.put({"metadata": {"name": "sc"}, "provisioner": DRIVER, "volumeBindingMode": "Immediate"})
    nd = NodeDeployment(config=cfg, provisioner=provisioner, claims=claims, classes=classes)
    return nd, kube, csi


async def test_selected_node_decides_and_immediate_claims_are_claimed() -> None:
    nd, kube, csi = deployment()
    assert await nd.check(claim(**{names.ANN_SELECTED_NODE: "node-a"}))
    assert not await nd.check(claim(**{names.ANN_SELECTED_NODE: "node-b"}))
    pvc = claim()
    nd.claims.store.put(pvc)
    assert not await nd.check(pvc)  # it becomes ours through the update; provisioning follows its event
    [updated] = kube.updates
    assert updated["metadata"]["annotations"][names.ANN_SELECTED_NODE] == "node-a"
    assert updated["metadata"]["resourceVersion"] == "5"
    [ask] = csi.requests
    assert dict(ask.accessible_topology.segments) == {KEY: "node-a"} and ask.volume_capabilities


async def test_wait_not_enough_capacity_conflicts_and_a_faster_node() -> None:
    nd, kube, csi = deployment(available=2**29)
    pvc = claim()
    nd.claims.store.put(pvc)
    with pytest.raises(Requeue, match="not enough capacity"):
        await nd.check(pvc)
    assert kube.updates == []
    csi.available = 2**31
    nd.backoff = JitteredBackoff(1.0, 8.0, rand=lambda: 0.0)
    with pytest.raises(Requeue) as wait:
        await nd.check(pvc)  # first the (jittered) delay
    assert wait.value.after == pytest.approx(1.0, abs=0.05)
    nd._due[names.claim_uid(pvc)] = 0.0  # the delay has passed
    kube.fail.append(ApiError(409, "Conflict", "the object has been modified"))
    with pytest.raises(Requeue) as lost:
        await nd.check(pvc)
    assert lost.value.after == 2.0  # the next, longer delay
    # Meanwhile node-b won: no update, the backoff is forgotten.
    nd._due[names.claim_uid(pvc)] = 0.0
    nd.claims.store.put(claim(**{names.ANN_SELECTED_NODE: "node-b"}))
    assert not await nd.check(pvc)
    assert kube.updates == [] and nd.backoff.num_requeues(names.claim_uid(pvc)) == 0


async def test_claims_this_node_does_not_take() -> None:
    nd, kube, _ = deployment(node_deployment_immediate_binding=False)
    assert not await nd.check(claim())  # immediate binding switched off
    nd, kube, _ = deployment()
    nd.classes.store.put(
        {"metadata": {"name": "sc"}, "provisioner": DRIVER, "volumeBindingMode": "WaitForFirstConsumer"}
    )
    assert not await nd.check(claim())  # the scheduler picks the node
    nd.classes.store.put(
        {
            "metadata": {"name": "sc"},
            "provisioner": DRIVER,
            "volumeBindingMode": "Immediate",
            "allowedTopologies": [{"matchLabelExpressions": [{"key": KEY, "values": ["node-b"]}]}],
        }
    )
    assert not await nd.check(claim())  # allowedTopologies exclude this node
    assert kube.updates == []
