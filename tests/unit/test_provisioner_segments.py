"""Capacity topology segments, the owner lookup and the managed-by name: pure pieces of capacity tracking."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.kube.client import ApiError
from common.kube.informer import Informer
from common.kube.resources import CSI_NODES, NODES
from common.metrics import Metrics
from sidecars.provisioner import owner
from sidecars.provisioner.names import name_with_max_length
from sidecars.provisioner.segments import NodeTopology, Segment, segment_of, selector, term_segment

DRIVER = "hostpath.csi.k8s.io"
Obj = dict[str, Any]


def csinode(name: str, *keys: str, driver: str = DRIVER) -> Obj:
    return {"metadata": {"name": name}, "spec": {"drivers": [{"name": driver, "topologyKeys": list(keys)}]}}


def node(name: str, **labels: str) -> Obj:
    return {"metadata": {"name": name, "labels": labels}}


def topology() -> NodeTopology:
    client: Any = None
    return NodeTopology(
        driver=DRIVER,
        csinodes=Informer(client, CSI_NODES),
        nodes=Informer(client, NODES),
        metrics=Metrics(process_collector=False),
    )


def test_segments_of_the_driver_nodes_and_their_changes() -> None:
    t = topology()
    changes: list[tuple[list[Segment], list[Segment]]] = []
    t.add_callback(lambda added, removed: changes.append((added, removed)))
    t.csinodes.store.put(csinode("n1", "zone", "rack"))
    t.csinodes.store.put(csinode("n2", "zone", "rack"))
    t.csinodes.store.put(csinode("n3", "zone", "rack"))  # no Node object: skipped
    t.csinodes.store.put(csinode("n4", "zone", driver="other"))  # not our driver: skipped
    t.csinodes.store.put(csinode("n5", "zone", "rack"))
    t.nodes.store.put(node("n1", zone="a", rack="1"))
    t.nodes.store.put(node("n2", zone="a", rack="1"))  # the same segment again
    t.nodes.store.put(node("n4", zone="b"))
    t.nodes.store.put(node("n5", zone="c"))  # label missing: skipped for now
    t.sync()
    a1: Segment = (("rack", "1"), ("zone", "a"))
    assert t.segments() == [a1] and changes == [([a1], [])]
    t.nodes.store.put(node("n5", zone="c", rack="9"))
    t.nodes.store.put(node("n1", zone="a", rack="2"))
    t.nodes.store.remove("n2")
    t.sync()
    a2: Segment = (("rack", "2"), ("zone", "a"))
    c9: Segment = (("rack", "9"), ("zone", "c"))
    assert set(t.segments()) == {a2, c9} and set(changes[-1][0]) == {a2, c9} and changes[-1][1] == [a1]
    t.sync()
    assert len(changes) == 2  # unchanged: no callback
    # A driver without topology keys on its nodes: one empty segment, matching every node.
    bare = topology()
    bare.csinodes.store.put(csinode("n1"))
    bare.nodes.store.put(node("n1", zone="a"))
    bare.sync()
    assert bare.segments() == [()]


async def test_event_filters_only_queue_real_changes() -> None:
    t = topology()
    t._node_updated(node("n1", zone="a"), node("n1", zone="a"))
    t._csinode_updated(csinode("n1", "zone"), copy.deepcopy(csinode("n1", "zone")))
    assert t.queue.len() == 0
    t._node_updated(node("n1", zone="a"), node("n1", zone="b"))
    t._csinode_updated(csinode("n1", "zone"), csinode("n1", "zone", "rack"))
    assert t.queue.len() == 1  # both collapse into one recomputation


def test_selector_round_trip_and_node_affinity_terms() -> None:
    segment: Segment = (("rack", "1"), ("zone", "a"))
    assert selector(segment) == {"matchLabels": {"rack": "1", "zone": "a"}}
    assert selector(()) == {}
    assert segment_of(selector(segment)) == segment and segment_of({}) == () and segment_of(None) == ()
    assert segment_of({"matchExpressions": [{"key": "zone", "operator": "Exists"}]}) is None
    term = {
        "matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a"]},
            {"key": "rack", "operator": "In", "values": ["1"]},
        ]
    }
    assert term_segment(term) == segment
    assert (
        term_segment({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}) is None
    )
    assert term_segment({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}) is None


@pytest.mark.parametrize(
    ("suffix", "expected"),
    [  # upstream cmd/csi-provisioner util_test.go
        ("node01", "external-provisioner-node01"),
        ("node" + "a" * 38, "external-provisioner-node" + "a" * 38),
        ("node" + "a" * 39, "external-p-53f40b57-node" + "a" * 39),
        ("node" + "a" * 63, "external-provisioner-df38e37f"),
    ],
)
def test_managed_by_name_with_max_length(suffix: str, expected: str) -> None:
    assert name_with_max_length("external-provisioner", suffix, 63) == expected


class Kube:
    def __init__(self, *objects: Obj) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.gets: list[str] = []

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> Obj:
        self.gets.append(f"{resource.plural}/{namespace}/{name}")
        found = self.objects.get((resource.kind, name))
        if found is None:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return found


def obj(kind: str, name: str, uid: str, owner_ref: Obj | None = None) -> Obj:
    meta: Obj = {"name": name, "uid": uid}
    if owner_ref is not None:
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Other", "name": "x", "uid": "x"}, owner_ref]
    return {"kind": kind, "metadata": meta}


def controller_ref(api_version: str, kind: str, name: str, uid: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


async def test_owner_lookup_levels() -> None:
    kube = Kube(
        obj("Pod", "pod", "p-uid", controller_ref("apps/v1", "ReplicaSet", "rs", "rs-uid")),
        obj("ReplicaSet", "rs", "rs-uid", controller_ref("apps/v1", "Deployment", "deploy", "d-uid")),
        obj("Deployment", "deploy", "d-uid"),
    )
    assert await owner.lookup(kube, "ns", "pod", 0) == controller_ref("v1", "Pod", "pod", "p-uid")  # type: ignore[arg-type]
    assert await owner.lookup(kube, "ns", "pod", 1) == controller_ref("apps/v1", "ReplicaSet", "rs", "rs-uid")  # type: ignore[arg-type]
    assert kube.gets == ["pods/ns/pod", "pods/ns/pod"]  # level 1 needs only the Pod
    assert await owner.lookup(kube, "ns", "pod", 2) == controller_ref(
        "apps/v1", "Deployment", "deploy", "d-uid"
    )  # type: ignore[arg-type]
    assert kube.gets[-1] == "replicasets/ns/rs"
    with pytest.raises(
        owner.OwnerError, match='apps/v1/Deployment "deploy" in namespace "ns" has no controlling owner'
    ):
        await owner.lookup(kube, "ns", "pod", 3)  # type: ignore[arg-type]
    with pytest.raises(owner.OwnerError, match='get object: pods "nope" not found'):
        await owner.lookup(kube, "ns", "nope", 1)  # type: ignore[arg-type]
    assert (
        owner.resource_for("example.com/v2", "Widget").path(namespace="ns", name="w")
        == "/apis/example.com/v2/namespaces/ns/widgets/w"
    )
