"""csi-attacher with the attach/detach controller stand-in: a scheduled pod gets its volume attached.

The test bed's `AttachDetachController` plays kube-controller-manager: for a pod with `spec.nodeName`
using a bound CSI PVC it creates the VolumeAttachment `csi-<sha256>`, reports SuccessfulAttachVolume
once our attacher marks it attached, and deletes it when the pod goes; our attacher detaches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from attacher_fixtures import (
    FINALIZER,
    PV_NAME,
    add_volume,
    attached,
    create_node,
    create_pv,
    start_attacher,
    stop_cleanly,
    wait_gone,
    wait_va,
)
from kit import eventually

from common.kube.client import KubeClient
from common.kube.resources import (
    EVENTS,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    VOLUME_ATTACHMENTS,
)
from testbed.apiserver import ApiServer
from testbed.csidriver import TestDriver

attachdetach = pytest.importorskip("testbed.controllers.attachdetach")
storage = pytest.importorskip("testbed.controllers.storage")

HANDLE = "vol-1"


@pytest.fixture
async def controller(apiserver: ApiServer) -> AsyncIterator[Any]:
    """The attach/detach controller stand-in, running on the test bed's store."""
    ad = attachdetach.AttachDetachController(apiserver.store, resync_period=1.0)
    task = asyncio.create_task(ad.run(), name="attachdetach stand-in")
    try:
        yield ad
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def bound_claim(kube: KubeClient) -> None:
    """PVC default/data bound to the golden PV, as the PV controller leaves them."""
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "golden",
            "volumeName": PV_NAME,
        },
    }
    created = await kube.create(PERSISTENT_VOLUME_CLAIMS, claim)
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS,
        "data",
        {"status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}},
        namespace="default",
        subresource="status",
    )
    uid = created["metadata"]["uid"]
    await kube.patch(PERSISTENT_VOLUMES, PV_NAME, {"spec": {"claimRef": {"uid": uid}}})


def pod(node: str = "node-1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }


async def test_attach_and_detach_follow_the_pod(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any, controller: Any
) -> None:
    add_volume(driver, HANDLE)
    await create_node(kube)
    managed = {"metadata": {"annotations": {storage.ANN_CONTROLLER_MANAGED_ATTACH: "true"}}}
    await kube.patch(NODES, "node-1", managed)
    await create_pv(kube, handle=HANDLE)
    await bound_claim(kube)
    process = start_attacher(sidecar, kubeconfig, driver)

    await kube.create(PODS, pod())
    name = storage.attachment_name(HANDLE, "hostpath.csi.k8s.io", "node-1")
    va = await wait_va(kube, name, attached, timeout=20)
    assert va["metadata"]["finalizers"] == [FINALIZER]
    assert driver.publications == {HANDLE: ["node-1"]}

    async def reported() -> bool:
        events = await kube.list(EVENTS, namespace="default")
        return any(e.get("reason") == "SuccessfulAttachVolume" for e in events["items"])

    await eventually(reported, timeout=10, message="SuccessfulAttachVolume event")

    await kube.delete(PODS, "app", namespace="default")
    await wait_gone(kube, VOLUME_ATTACHMENTS, name, timeout=20)
    assert not driver.publications.get(HANDLE)
    await stop_cleanly(process)
