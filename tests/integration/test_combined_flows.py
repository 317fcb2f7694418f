"""csi-controller-sidecars end to end: one process provisions, attaches, resizes, detaches and deletes.

Against the test bed's API server, PV binder, attach/detach controller and kubelet, the real
`python -m sidecars.combined` with leader election on: each controller takes its own usual Lease,
the API server sees one list and one watch per resource, the driver one connection, /metrics serves
every controller's queues and one `leader_election_master_status` per Lease; SIGTERM releases all
three Leases and exits 0.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from combined_fixtures import (
    ELECTION,
    LEASES_BY_CONTROLLER,
    NODE,
    QUEUES,
    claim,
    combined_args,
    driver_connections,
    get,
    holders,
    metrics,
    plane,
    pod,
    sample,
    stop_cleanly,
    storage_class,
    wait_attached,
    wait_bound,
    wait_pv_capacity,
)
from kit import eventually, free_port

from common.kube.client import KubeClient
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS, VOLUME_ATTACHMENTS
from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

AGENT = "csi-controller-sidecars/"
SHARED = {"persistentvolumeclaims", "persistentvolumes", "volumeattachments", "csinodes"}
"""Resources two or three of the controllers read (each would watch them itself as a separate sidecar)."""


async def test_life_of_a_volume_in_one_process(
    apiserver: ApiServer, kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    port = free_port()
    async with plane(apiserver, driver):
        process = sidecar(
            "sidecars.combined",
            *combined_args(kubeconfig, driver, port, "--enable=provisioner,attacher,resizer", *ELECTION),
            env={"POD_NAME": "combined-0"},
        )

        async def all_held() -> bool:
            return set((await holders(kube)).values()) == {"combined-0"}

        await eventually(all_held, timeout=20, message="all three Leases held by combined-0")

        await storage_class(kube)
        await claim(kube, "data")
        pv_name = (await wait_bound(kube, "data"))["spec"]["volumeName"]
        pv = await kube.get(PERSISTENT_VOLUMES, pv_name)
        assert pv["spec"]["csi"]["driver"] == "hostpath.csi.k8s.io"

        await pod(kube, "app", "data")
        va = await wait_attached(kube, pv_name)
        assert va["metadata"]["finalizers"] == ["external-attacher/hostpath-csi-k8s-io"]
        volume_id = pv["spec"]["csi"]["volumeHandle"]
        assert driver.publications == {volume_id: [NODE]}

        async def running() -> bool:
            found = await get(kube, PODS, "app", "default")
            return bool(found and (found.get("status") or {}).get("phase") == "Running")

        await eventually(running, timeout=20, message="pod Running")
        patch = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
        await kube.patch(PERSISTENT_VOLUME_CLAIMS, "data", patch, namespace="default")
        await wait_pv_capacity(kube, pv_name, "2Gi")

        async def node_grown() -> bool:
            found = await get(kube, PERSISTENT_VOLUME_CLAIMS, "data", "default")
            return ((found or {}).get("status") or {}).get("capacity", {}).get("storage") == "2Gi"

        await eventually(node_grown, timeout=20, message="PVC status capacity 2Gi (node expansion)")

        await kube.delete(PODS, "app", namespace="default")

        async def detached() -> bool:
            return await get(kube, VOLUME_ATTACHMENTS, va["metadata"]["name"]) is None

        await eventually(detached, timeout=20, message="VolumeAttachment gone")
        assert not driver.publications.get(volume_id)
        await kube.delete(PERSISTENT_VOLUME_CLAIMS, "data", namespace="default")

        async def deleted() -> bool:
            return await get(kube, PERSISTENT_VOLUMES, pv_name) is None and not driver.volumes

        await eventually(deleted, timeout=20, message="PV and volume deleted")

        # One of everything shared: a list and a watch per resource, one connection to the driver.
        ours = [r for r in apiserver.requests.records() if r.user_agent.startswith(AGENT)]
        watches = Counter(r.resource for r in ours if r.verb == "watch")
        lists = Counter(r.resource for r in ours if r.verb == "list")
        assert set(watches) >= SHARED, watches
        assert set(watches.values()) == {1}, watches
        assert lists == watches, lists
        assert driver_connections(driver, process.pid) == 1

        # One metrics endpoint: every controller's queues, one leader status per Lease.
        text = await metrics(port)
        for queue in QUEUES:
            assert sample(text, f'workqueue_adds_total{{name="{queue}"}}') is not None, queue
        for lease in LEASES_BY_CONTROLLER.values():
            assert sample(text, f'leader_election_master_status{{name="{lease}"}}') == 1.0, lease
        assert "controller_persistentvolumeclaim_provision_total" in text

        log = await stop_cleanly(process)
    assert await holders(kube) == dict.fromkeys(LEASES_BY_CONTROLLER, "")
    assert log.count("released leader lease") == 3
