"""Capacity tracking with fakes: wanted pairs, create/leave/update/delete, adoption, refreshes, gauges."""

from __future__ import annotations

import copy
from typing import Any

from common.kube.informer import InformerFactory
from common.metrics import Metrics
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner.capacity import CapacityController, Item, Obsolete, capacity_request
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.segments import Callback, Segment

DRIVER = "hostpath.csi.k8s.io"
KEY = "topology.hostpath.csi/node"
Obj = dict[str, Any]
S1: Segment = ((KEY, "n1"),)
S2: Segment = ((KEY, "n2"),)
OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": True}


class Topology:
    def __init__(self, *segments: Segment) -> None:
        self.list = list(segments)
        self.callbacks: list[Callback] = []

    def segments(self) -> list[Segment]:
        return list(self.list)

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def change(self, added: list[Segment], removed: list[Segment]) -> None:
        self.list = [s for s in self.list if s not in removed] + added
        for callback in self.callbacks:
            callback(added, removed)

    async def wait_synced(self) -> None:
        return

    async def run(self) -> None:
        return


class Csi:
    def __init__(self) -> None:
        self.available = 100 * 2**30
        self.requests: list[Any] = []

    async def GetCapacity(self, request: Any, *, timeout: float) -> Any:
        self.requests.append(request)
        response = csi_pb2.GetCapacityResponse(available_capacity=self.available)
        response.maximum_volume_size.value = self.available
        return response


class Kube:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.serial = 0

    async def create(self, resource: Any, obj: Obj) -> Obj:
        self.serial += 1
        created = copy.deepcopy(obj)
        created["metadata"].update(name=f"csisc-{self.serial}", uid=f"uid-{self.serial}")
        self.calls.append(("create", created))
        return created

    async def update(self, resource: Any, obj: Obj, **kw: Any) -> Obj:
        self.calls.append(("update", copy.deepcopy(obj)))
        return obj

    async def delete(self, resource: Any, name: str, *, namespace: str | None = None) -> Obj:
        self.calls.append(("delete", (namespace, name)))
        return {}


def controller(topology: Topology, **config: Any) -> tuple[CapacityController, Csi, Kube]:
    csi, kube = Csi(), Kube()
    cfg = ProvisionerConfig(
        standard=StandardConfig(), enable_capacity=True, namespace="kube-system", **config
    )
    c = CapacityController(
        config=cfg,
        driver=DRIVER,
        csi=csi,
        kube=kube,  # type: ignore[arg-type]
        factory=InformerFactory(kube),  # type: ignore[arg-type]
        topology=topology,
        metrics=Metrics(process_collector=False),
    )
    c.owner = OWNER
    return c, csi, kube


def sc(name: str, binding: str = "WaitForFirstConsumer", provisioner: str = DRIVER) -> Obj:
    return {
        "metadata": {"name": name},
        "provisioner": provisioner,
        "volumeBindingMode": binding,
        "parameters": {"p": name},
    }


def add_class(c: CapacityController, obj: Obj) -> None:
    c.classes.store.put(obj)
    c._class_changed(obj)


async def queued(c: CapacityController) -> list[Any]:
    keys = []
    while c.queue.len():
        key = await c.queue.get()
        c.queue.done(key)
        keys.append(key)
    return keys


async def test_wanted_pairs_are_classes_of_this_driver_times_segments() -> None:
    topology = Topology(S1, S2)
    c, _, _ = controller(topology)
    for obj in (sc("late"), sc("now", "Immediate"), sc("alien", provisioner="other")):
        add_class(c, obj)
    assert set(c.capacities) == {Item(S1, "late"), Item(S2, "late")}
    assert set(await queued(c)) == {Item(S1, "late"), Item(S2, "late")}
    with_immediate, _, _ = controller(Topology(S1), capacity_for_immediate_binding=True)
    add_class(with_immediate, sc("now", "Immediate"))
    assert set(with_immediate.capacities) == {Item(S1, "now")}
    # Segments come and go with the topology.
    S3: Segment = ((KEY, "n3"),)
    c.capacities[Item(S1, "late")] = {"metadata": {"name": "csisc-old", "uid": "u-old"}}
    topology.change([S3], [S1])
    assert set(c.capacities) == {Item(S2, "late"), Item(S3, "late")}
    assert set(await queued(c)) == {Obsolete("csisc-old"), Item(S3, "late")}


async def test_create_then_nothing_then_update_and_the_owner_is_added() -> None:
    c, csi, kube = controller(Topology(S1))
    add_class(c, sc("late"))
    item = Item(S1, "late")
    await c.refresh(item)
    [(verb, created)] = kube.calls
    assert verb == "create"
    assert (
        created["metadata"]["generateName"] == "csisc-" and created["metadata"]["namespace"] == "kube-system"
    )
    assert created["metadata"]["labels"] == {
        "csi.storage.k8s.io/drivername": DRIVER,
        "csi.storage.k8s.io/managed-by": "external-provisioner",
    }
    assert created["metadata"]["ownerReferences"] == [OWNER]
    assert (created["storageClassName"], created["nodeTopology"]) == ("late", {"matchLabels": {KEY: "n1"}})
    assert (created["capacity"], created["maximumVolumeSize"]) == ("100Gi", "100Gi")
    # Not remembered until the informer shows it; then adopted, and an unchanged refresh calls nothing.
    assert c.capacities[item] is None
    c.objects.store.put(created)
    c._object_changed(created)
    assert c.capacities[item] is created
    await c.refresh(item)
    assert len(kube.calls) == 1
    csi.available = 3 * 2**30 + 1
    await c.refresh(item)
    verb, updated = kube.calls[-1]
    assert verb == "update" and (updated["capacity"], updated["maximumVolumeSize"]) == (
        "3221225473",
        "3221225473",
    )
    # Someone removed our owner reference: it is added back.
    stripped = copy.deepcopy(created)
    stripped["metadata"]["ownerReferences"] = []
    c._object_changed(stripped)
    csi.available = 100 * 2**30
    await c.refresh(item)
    assert kube.calls[-1][1]["metadata"]["ownerReferences"] == [OWNER]
    request = csi.requests[-1]
    assert dict(request.parameters) == {"p": "late"} and dict(request.accessible_topology.segments) == {
        KEY: "n1"
    }
    assert request.volume_capabilities[0].HasField("mount")


def capacity_object(name: str, uid: str, segment: Segment, class_name: str, **labels: str) -> Obj:
    return {
        "metadata": {
            "name": name,
            "uid": uid,
            "namespace": "kube-system",
            "labels": labels
            or {
                "csi.storage.k8s.io/drivername": DRIVER,
                "csi.storage.k8s.io/managed-by": "external-provisioner",
            },
        },
        "storageClassName": class_name,
        "nodeTopology": {"matchLabels": dict(segment)},
        "capacity": "100Gi",
    }


async def test_duplicates_and_leftovers_are_deleted_and_deleted_objects_recreated() -> None:
    c, _, kube = controller(Topology(S1))
    add_class(c, sc("late"))
    await queued(c)
    ours = capacity_object("csisc-a", "a", S1, "late")
    twin = capacity_object("csisc-b", "b", S1, "late")
    leftover = capacity_object("csisc-c", "c", S1, "gone")
    for obj in (ours, twin, leftover):
        c.objects.store.put(obj)
        c._object_changed(obj)
    assert c.capacities[Item(S1, "late")] is ours
    assert await queued(c) == [Obsolete("csisc-b"), Obsolete("csisc-c")]
    # Upstream's "obsolete" gauge counts objects no wanted pair matches: the twin does match one.
    assert c.counts() == (1, 1, 1)
    await c.delete("csisc-b")
    assert kube.calls == [("delete", ("kube-system", "csisc-b"))]
    # Someone deletes ours: it is wanted, so it is created again.
    c.objects.store.remove("kube-system/csisc-a")
    c._object_deleted(ours)
    assert c.capacities[Item(S1, "late")] is None
    assert await queued(c) == [Item(S1, "late")]
    # Someone relabels ours: forgotten and replaced.
    c._object_changed(ours)
    relabelled = capacity_object("csisc-a", "a", S1, "late", app="mine")
    c._object_changed(relabelled)
    assert c.capacities[Item(S1, "late")] is None
    # The class goes: its objects go.
    c._object_changed(ours)
    c._class_deleted(sc("late"))
    assert not c.capacities
    assert (await queued(c))[-1] == Obsolete("csisc-a")


async def test_refreshes_after_provisioning_and_deletion() -> None:
    c, _, _ = controller(Topology(S1, S2))
    add_class(c, sc("a"))
    add_class(c, sc("b"))
    await queued(c)
    affinity = {
        "required": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": KEY, "operator": "In", "values": ["n2"]}]}]
        }
    }
    c.refresh_topology(affinity)
    assert set(await queued(c)) == {Item(S2, "a"), Item(S2, "b")}
    c.refresh_class("a")
    assert set(await queued(c)) == {Item(S1, "a"), Item(S2, "a")}
    c.poll()
    assert len(await queued(c)) == 4


async def test_node_deployment_label_and_the_empty_segment() -> None:
    c, _, kube = controller(Topology(()), node_deployment=True, node_name="node-" + "x" * 60)
    # The node name is too long for the label value: upstream's hashed short form.
    assert c.labels["csi.storage.k8s.io/managed-by"] == c.managed_by
    assert (
        c.managed_by.startswith("external-provisioner-")
        and len(c.managed_by) == len("external-provisioner-") + 8
    )
    short, _, _ = controller(Topology(()), node_deployment=True, node_name="node-a")
    assert short.managed_by == "external-provisioner-node-a"
    add_class(c, sc("late"))
    await c.refresh(Item((), "late"))
    [(_, created)] = kube.calls
    assert created["nodeTopology"] == {}
    request = capacity_request(sc("late"), ())
    assert request.HasField("accessible_topology") and not request.accessible_topology.segments
