"""csi-provisioner capacity tracking end to end: CSIStorageCapacity objects per StorageClass and segment.

The real `python -m sidecars.provisioner --enable-capacity` against the test bed, three nodes with a
segment each in the CSI test driver (100 GiB per segment), the Pod -> ReplicaSet -> Deployment chain
the owner lookup walks (`NAMESPACE`, `POD_NAME`). Asserted: the objects' shape (generateName, labels,
owner, nodeTopology, capacity, maximumVolumeSize), the refresh after provisioning, on poll and of an
object someone deleted, their removal when the StorageClass goes, every owner-reference level, and
the API calls per poll for 3 StorageClasses x 10 segments.
"""

from __future__ import annotations

from typing import Any

import pytest
from kit import eventually, free_port, scrape
from provisioner_fixtures import (
    ANN_SELECTED_NODE,
    TOPOLOGY_KEY,
    Bed,
    csinode,
    node,
    provisioner_bed,
    stop_cleanly,
    storage_class,
)

from proto import csi_pb2
from testbed.apiserver import ApiServer
from testbed.csidriver import DriverConfig, GiB, TestDriver, connect

Obj = dict[str, Any]
NODES = ("node-1", "node-2", "node-3")
DRIVER_NODES = tuple(f"node-{i}" for i in range(1, 11))
NAMESPACE = "default"
POD = "csi-provisioner-7d4b9-x2x5q"
LABELS = {
    "csi.storage.k8s.io/drivername": "hostpath.csi.k8s.io",
    "csi.storage.k8s.io/managed-by": "external-provisioner",
}


@pytest.fixture
def driver_config() -> DriverConfig:
    return DriverConfig(nodes={n: {TOPOLOGY_KEY: n} for n in DRIVER_NODES})


async def owner_chain(bed: Bed) -> dict[str, Obj]:
    """Deployment -> ReplicaSet -> Pod, as a Deployment of the provisioner leaves them."""
    deploy = await bed.store.create(
        "deployments",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "csi-provisioner", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "csi"}},
                "template": {
                    "metadata": {"labels": {"app": "csi"}},
                    "spec": {"containers": [{"name": "p", "image": "p"}]},
                },
            },
        },
        namespace=NAMESPACE,
    )

    def ref(owner: Obj) -> Obj:
        meta = owner["metadata"]
        return {
            "apiVersion": owner["apiVersion"],
            "kind": owner["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
        }

    rs = await bed.store.create(
        "replicasets",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "csi-provisioner-7d4b9",
                "namespace": NAMESPACE,
                "ownerReferences": [ref(deploy)],
            },
            "spec": deploy["spec"],
        },
        namespace=NAMESPACE,
    )
    pod = await bed.store.create(
        "pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": POD, "namespace": NAMESPACE, "ownerReferences": [ref(rs)]},
            "spec": {"containers": [{"name": "p", "image": "p"}]},
        },
        namespace=NAMESPACE,
    )
    return {"Deployment": deploy, "ReplicaSet": rs, "Pod": pod}


def env(bed: Bed) -> dict[str, str]:
    return {"KUBECONFIG": bed.kubeconfig, "NAMESPACE": NAMESPACE, "POD_NAME": POD}


async def capacities(bed: Bed) -> list[Obj]:
    items: list[Obj] = (await bed.store.list("csistoragecapacities", namespace=NAMESPACE))["items"]
    return items


async def by_pair(bed: Bed) -> dict[tuple[str, str], Obj]:
    """Objects keyed by (StorageClass, node of the segment)."""
    return {
        (c["storageClassName"], c["nodeTopology"]["matchLabels"][TOPOLOGY_KEY]): c
        for c in await capacities(bed)
    }


async def wait_pairs(
    bed: Bed, wanted: set[tuple[str, str]], *, timeout: float = 15.0
) -> dict[tuple[str, str], Obj]:
    async def probe() -> dict[tuple[str, str], Obj] | None:
        found = await by_pair(bed)
        return found if set(found) == wanted and len(await capacities(bed)) == len(wanted) else None

    result: dict[tuple[str, str], Obj] = await eventually(
        probe, timeout=timeout, message=f"capacities {wanted}"
    )
    return result


async def wait_capacity(bed: Bed, pair: tuple[str, str], value: str) -> Obj:
    async def probe() -> Obj | None:
        found = (await by_pair(bed)).get(pair)
        return found if found is not None and found["capacity"] == value else None

    result: Obj = await eventually(probe, timeout=15, message=f"capacity {pair} = {value}")
    return result


async def create_volume_behind_our_back(driver: TestDriver, node_name: str, size: int) -> None:
    """Use capacity in a segment without Kubernetes knowing (another cluster, a manual volume)."""
    request = csi_pb2.CreateVolumeRequest(name=f"manual-{node_name}-{size}")
    request.capacity_range.required_bytes = size
    capability = request.volume_capabilities.add()
    capability.mount.SetInParent()
    capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    request.accessibility_requirements.requisite.add(segments={TOPOLOGY_KEY: node_name})
    async with connect(driver.address) as stubs:
        await stubs.controller.CreateVolume(request)


async def test_capacity_objects_follow_classes_segments_and_provisioning(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES) as bed:
        chain = await owner_chain(bed)
        await bed.store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
        process = bed.start("--enable-capacity", "--capacity-poll-interval=1h", env=env(bed))
        # One object per WaitForFirstConsumer class and segment; `golden` (Immediate) has none.
        found = await wait_pairs(bed, {("late", n) for n in NODES})
        replica_set = chain["ReplicaSet"]["metadata"]
        for obj in found.values():
            meta = obj["metadata"]
            assert meta["name"].startswith("csisc-") and meta["generateName"] == "csisc-"
            assert meta["labels"] == LABELS
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": replica_set["name"],
                    "uid": replica_set["uid"],
                    "controller": True,
                }
            ]
            assert (obj["capacity"], obj["maximumVolumeSize"]) == ("100Gi", "100Gi")
        names = {pair: obj["metadata"]["name"] for pair, obj in found.items()}

        # Provisioning on node-1 refreshes that segment at once (the poll is an hour away).
        await bed.create_claim("data", sc="late", size="10Gi")
        claim = await bed.store.get("persistentvolumeclaims", "data", namespace=NAMESPACE)
        claim["metadata"].setdefault("annotations", {})[ANN_SELECTED_NODE] = "node-1"
        await bed.store.update("persistentvolumeclaims", claim, namespace=NAMESPACE)
        await bed.wait_bound("data")
        await wait_capacity(bed, ("late", "node-1"), "90Gi")
        # ... and so does deleting it.
        await bed.delete_claim("data")
        await wait_capacity(bed, ("late", "node-1"), "100Gi")

        # Someone deletes an object: it is created again. A class going takes its objects along;
        # a new one gets its own.
        await bed.store.delete("csistoragecapacities", names[("late", "node-2")], namespace=NAMESPACE)
        again = await wait_pairs(bed, {("late", n) for n in NODES})
        assert again[("late", "node-2")]["metadata"]["name"] != names[("late", "node-2")]
        await bed.store.create("storageclasses", storage_class("later", binding="WaitForFirstConsumer"))
        await wait_pairs(bed, {(sc, n) for sc in ("late", "later") for n in NODES})
        await bed.store.delete("storageclasses", "late")
        kept = await wait_pairs(bed, {("later", n) for n in NODES})
        await stop_cleanly(process)

        # A restart adopts the objects it finds (same names), and its poll sees capacity used
        # behind Kubernetes' back.
        process = bed.start("--enable-capacity", "--capacity-poll-interval=1s", env=env(bed))
        await create_volume_behind_our_back(driver, "node-3", 30 * GiB)
        polled = await wait_capacity(bed, ("later", "node-3"), "70Gi")
        assert polled["metadata"]["name"] == kept[("later", "node-3")]["metadata"]["name"]
        assert {o["metadata"]["name"] for o in await capacities(bed)} == {
            o["metadata"]["name"] for o in kept.values()
        }
        await stop_cleanly(process)


@pytest.mark.parametrize(
    ("level", "kind"), [(-1, None), (0, "Pod"), (1, "ReplicaSet"), (2, "Deployment"), (3, None)]
)
async def test_capacity_owner_reference_levels(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any, level: int, kind: str | None
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES[:1]) as bed:
        chain = await owner_chain(bed)
        await bed.store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
        process = bed.start("--enable-capacity", f"--capacity-ownerref-level={level}", env=env(bed))
        if level == 3:
            # The Deployment has no controlling owner: the lookup fails and the process exits 1.
            code = await process.wait(timeout=20)
            assert code == 1
            assert (
                'apps/v1/Deployment "csi-provisioner" in namespace "default" has no controlling owner, '
                "cannot unwind the ownership further" in process.log()
            )
            return
        [obj] = (await wait_pairs(bed, {("late", "node-1")})).values()
        if kind is None:
            assert "ownerReferences" not in obj["metadata"]
        else:
            meta = chain[kind]["metadata"]
            [ref] = obj["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                kind,
                meta["name"],
                meta["uid"],
                True,
            )
        await stop_cleanly(process)


async def test_api_calls_per_poll_for_3_classes_and_10_segments(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    nodes = DRIVER_NODES
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES) as bed:
        for name in nodes[3:]:
            await bed.store.create("nodes", node(name))
            await bed.store.create("csinodes", csinode(name))
        await owner_chain(bed)
        classes = ("a", "b", "c")
        for sc in classes:
            await bed.store.create("storageclasses", storage_class(sc, binding="WaitForFirstConsumer"))
        # Upstream's --kube-api-capacity-qps=1 would take half a minute to create the 30 objects.
        port = free_port()
        process = bed.start(
            "--enable-capacity",
            "--capacity-poll-interval=1s",
            "--kube-api-capacity-qps=100",
            f"--http-endpoint=127.0.0.1:{port}",
            env=env(bed),
        )
        await wait_pairs(bed, {(sc, n) for sc in classes for n in nodes}, timeout=30)

        async def gauges() -> bool:
            text = await scrape(port)
            return all(
                f"{name} {value}" in text
                for name, value in (
                    ("csistoragecapacities_desired_goal", 30),
                    ("csistoragecapacities_desired_current", 30),
                    ("csistoragecapacities_obsolete", 0),
                )
            )

        await eventually(gauges, timeout=10, message="csistoragecapacities_* gauges")
        agent = "csi-provisioner"

        def capacity_calls() -> int:
            return sum(
                apiserver.requests.count(verb=verb, resource="csistoragecapacities", user_agent=agent)
                for verb in ("create", "update", "delete", "get", "list", "patch")
            )

        # Quiet polls: 30 GetCapacity each, not one API call.
        before_calls, before_get = capacity_calls(), driver.calls.counts["GetCapacity"]
        await eventually(
            lambda: driver.calls.counts["GetCapacity"] >= before_get + 60, timeout=10, message="two polls"
        )
        assert capacity_calls() == before_calls
        # Every segment's capacity changes: one update per object on the next poll, nothing else.
        for name in nodes:
            await create_volume_behind_our_back(driver, name, GiB)
        before_calls = capacity_calls()

        async def all_updated() -> bool:
            return all(c["capacity"] == "99Gi" for c in await capacities(bed))

        await eventually(all_updated, timeout=10, message="every capacity updated")
        settled = driver.calls.counts["GetCapacity"]
        await eventually(
            lambda: driver.calls.counts["GetCapacity"] >= settled + 60, timeout=10, message="polls"
        )
        assert capacity_calls() - before_calls == 30  # one update per object, then quiet again
        assert (
            apiserver.requests.count(verb="create", resource="csistoragecapacities", user_agent=agent) == 30
        )
        await stop_cleanly(process)
