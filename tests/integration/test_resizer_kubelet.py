"""csi-resizer with the test bed's kubelet doing the node half: the expansion finishes like in a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kit import SidecarProcess, eventually
from resizer_fixtures import bound_claim, capacity, claim, request, resizer_args, storage_status

from common.kube.client import KubeClient
from common.kube.resources import CSI_DRIVERS, PERSISTENT_VOLUMES, PODS
from common.quantity import to_bytes
from testbed.apiserver import ApiServer
from testbed.controllers import ControlPlane, KubeletConfig
from testbed.csidriver import TestDriver

Sidecar = Callable[..., SidecarProcess]
RESIZER = "sidecars.resizer"


async def test_kubelet_finishes_the_node_expansion_of_a_mounted_volume(
    apiserver: ApiServer, kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    # No attacher in this test: the CSIDriver says attach is not required, as for many drivers.
    await kube.create(
        CSI_DRIVERS,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": {"name": "hostpath.csi.k8s.io"},
            "spec": {"attachRequired": False},
        },
    )
    kubelet = KubeletConfig(node_name="node-1", csi_endpoint=driver.address)
    async with ControlPlane(apiserver.store, ["kubelet"], kubelet=kubelet, resync_period=1.0) as plane:
        await plane.wait_synced()
        _, pv = await bound_claim(kube, driver)
        await kube.create(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app", "namespace": "default"},
                "spec": {
                    "nodeName": "node-1",
                    "containers": [{"name": "app", "image": "busybox"}],
                    "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "data"}}],
                },
            },
        )

        async def running() -> dict[str, Any] | None:
            pod = await kube.get(PODS, "app", namespace="default")
            return pod if pod["status"].get("phase") == "Running" else None

        await eventually(running, timeout=15, message="pod Running with the volume published")
        process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
        await request(kube, "2Gi")

        async def finished() -> dict[str, Any] | None:
            pvc = await claim(kube)
            return pvc if capacity(pvc) == "2Gi" and not storage_status(pvc) else None

        done = await eventually(finished, timeout=30, message="controller and node expansion finished")
        assert not [c for c in done["status"].get("conditions", []) if c["type"] != "ModifyingVolume"]
        grown = await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"])
        assert grown["spec"]["capacity"]["storage"] == "2Gi"
        handle = pv["spec"]["csi"]["volumeHandle"]
        assert driver.volumes[handle].capacity == to_bytes("2Gi")
        assert [c.request.volume_id for c in driver.calls.of("ControllerExpandVolume")] == [handle]
        assert [c.request.volume_id for c in driver.calls.of("NodeExpandVolume")] == [handle]
        assert await process.stop() == 0
