"""csi-provisioner `--node-deployment` end to end: two per-node provisioners split the claims between them.

Two real `python -m sidecars.provisioner --node-deployment` processes (`NODE_NAME` node-a and node-b),
each next to its own CSI test driver with node-local storage (node-b's holds only 3 GiB), against one
test-bed API server with the PV controller stand-ins. Asserted: every Immediate claim is provisioned
exactly once, by the node that won it (its `selected-node`), node-b never takes more than its capacity
check allows, a WaitForFirstConsumer claim goes to the node the scheduler picked, each PV is deleted
only by its own node, and with `--enable-capacity` each node publishes its own segment's capacity
under its own managed-by label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kit import eventually, remove_tree, short_tempdir
from provisioner_fixtures import (
    ANN_SELECTED_NODE,
    DRIVER,
    TOPOLOGY_KEY,
    Bed,
    provisioner_args,
    provisioner_bed,
    stop_cleanly,
    storage_class,
)

from testbed.apiserver import ApiServer
from testbed.csidriver import DriverConfig, GiB, TestDriver

NODES = ("node-a", "node-b")
CLAIMS = 12
FAST = (
    "--node-deployment-base-delay=50ms",
    "--node-deployment-max-delay=400ms",
    "--retry-interval-start=50ms",
    "--kube-api-qps=100",
    "--kube-api-burst=200",
)


def local(node: str, **kw: Any) -> DriverConfig:
    return DriverConfig(node_id=node, nodes={node: {TOPOLOGY_KEY: node}}, **kw)


@pytest.fixture
def driver_config() -> DriverConfig:
    return local("node-a")


@pytest.fixture
async def driver_b() -> AsyncIterator[TestDriver]:
    directory = short_tempdir()
    driver = TestDriver(local("node-b", capacity=3 * GiB))
    try:
        async with driver.serve(f"unix://{directory}/csi.sock"):
            yield driver
    finally:
        remove_tree(directory)


def start(bed: Bed, driver: TestDriver, node: str, *extra: str) -> Any:
    socket = driver.address.removeprefix("unix://")
    args = provisioner_args(bed.kubeconfig, socket, "--node-deployment", *FAST, *extra)  # type: ignore[arg-type]
    env = {"NODE_NAME": node, "NAMESPACE": "default"}
    return bed.sidecar("sidecars.provisioner", *args, env=env)


async def test_two_node_provisioners_split_immediate_claims(
    apiserver: ApiServer, driver: TestDriver, driver_b: TestDriver, sidecar: Any
) -> None:
    drivers = {"node-a": driver, "node-b": driver_b}
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES) as bed:
        await bed.store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
        capacity = ("--enable-capacity", "--capacity-ownerref-level=-1", "--kube-api-capacity-qps=100")
        processes = [start(bed, drivers[n], n, *capacity) for n in NODES]
        for i in range(CLAIMS):
            await bed.create_claim(f"c{i}")
        bound = [await bed.wait_bound(f"c{i}", timeout=30) for i in range(CLAIMS)]

        # Exactly one volume per claim, on the node its selected-node names, created once.
        winners = Counter(pvc["metadata"]["annotations"][ANN_SELECTED_NODE] for pvc in bound)
        assert sum(winners.values()) == CLAIMS and set(winners) <= set(NODES)
        assert winners["node-b"] <= 3  # node-b's capacity check turns the rest down
        for pvc in bound:
            owner = pvc["metadata"]["annotations"][ANN_SELECTED_NODE]
            names = {v.name for v in drivers[owner].volumes.values()}
            assert pvc["spec"]["volumeName"] in names
            pv = await bed.get("persistentvolumes", pvc["spec"]["volumeName"])
            assert pv is not None
            [term] = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
            assert term["matchExpressions"] == [{"key": TOPOLOGY_KEY, "operator": "In", "values": [owner]}]
            assert pv["spec"]["csi"]["volumeAttributes"][
                "storage.kubernetes.io/csiProvisionerIdentity"
            ].endswith(f"-{DRIVER}-{owner}")
        # No claim was provisioned twice. (node-b may win more races than its capacity allows: its
        # CreateVolume then fails with ResourceExhausted, the claim is rescheduled and node-a takes it.)
        created = Counter(
            c.request.name for d in drivers.values() for c in d.calls.of("CreateVolume") if c.ok
        )
        assert len(created) == CLAIMS and set(created.values()) == {1}
        assert sum(len(d.volumes) for d in drivers.values()) == CLAIMS
        for i in range(CLAIMS):  # one success per claim
            await bed.wait_event(f"c{i}", "ProvisioningSucceeded")
            assert len(await bed.events(f"c{i}", "ProvisioningSucceeded")) == 1

        # A WaitForFirstConsumer claim goes to the node the scheduler selected.
        calls_b = len(driver_b.calls.of("CreateVolume"))
        await bed.create_claim("late-a", sc="late")
        claim = await bed.store.get("persistentvolumeclaims", "late-a", namespace="default")
        claim["metadata"].setdefault("annotations", {})[ANN_SELECTED_NODE] = "node-a"
        await bed.store.update("persistentvolumeclaims", claim, namespace="default")
        late = await bed.wait_bound("late-a")
        assert late["spec"]["volumeName"] in {v.name for v in driver.volumes.values()}
        assert len(driver_b.calls.of("CreateVolume")) == calls_b

        # Each node publishes its own segment's capacity for the WaitForFirstConsumer class.
        async def published() -> dict[str, Any] | None:
            items = (await bed.store.list("csistoragecapacities", namespace="default"))["items"]
            found = {c["metadata"]["labels"]["csi.storage.k8s.io/managed-by"]: c for c in items}
            return found if len(found) == 2 and len(items) == 2 else None

        found = await eventually(published, timeout=15, message="one capacity object per node")
        for name in NODES:
            obj = found[f"external-provisioner-{name}"]
            assert obj["storageClassName"] == "late"
            assert obj["nodeTopology"] == {"matchLabels": {TOPOLOGY_KEY: name}}

        # Deleting: each PV only by its own node; nothing left, no failed deletes.
        volume_ids = {n: set(d.volumes) for n, d in drivers.items()}
        for i in range(CLAIMS):
            await bed.delete_claim(f"c{i}")
        await bed.delete_claim("late-a")
        await eventually(
            lambda: not any(d.volumes for d in drivers.values()), timeout=30, message="all deleted"
        )
        deleted = {n: {c.request.volume_id for c in d.calls.of("DeleteVolume")} for n, d in drivers.items()}
        assert deleted == volume_ids
        assert not [e for e in await bed.events(reason="VolumeFailedDelete")]
        for process in processes:
            await stop_cleanly(process)
