"""csi-attacher end to end: attach and detach, trivial attacher, errors and recovery, and bad input.

Each test runs the real `python -m sidecars.attacher` against the test-bed API server and the CSI
test driver, drives it through the API (VolumeAttachments created and deleted as the attach/detach
controller does) and asserts on the API objects and the driver's state; then SIGTERM, exit 0.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest
from attacher_fixtures import (
    FINALIZER,
    NODE_ID_ANNOTATION,
    PV_NAME,
    add_volume,
    attached,
    create_node,
    create_pv,
    create_va,
    delete_va,
    get_or_none,
    start_attacher,
    stop_cleanly,
    wait_gone,
    wait_va,
)
from kit import eventually

from common.kube.client import KubeClient
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, SECRETS, VOLUME_ATTACHMENTS
from testbed.csidriver import DEFAULT_CONTROLLER_CAPABILITIES, DriverConfig, TestDriver

HANDLE = "vol-1"


async def setup(kube: KubeClient, driver: TestDriver, **csi: Any) -> None:
    add_volume(driver, HANDLE)
    await create_node(kube)
    await create_pv(kube, handle=HANDLE, **csi)


async def pv_finalizers(kube: KubeClient) -> list[str]:
    pv = await kube.get(PERSISTENT_VOLUMES, PV_NAME)
    return list(pv["metadata"].get("finalizers") or [])


async def test_attach_publishes_with_context_and_detach_unpublishes(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    va = await wait_va(kube, "golden-va", attached)

    assert driver.publications == {HANDLE: ["node-1"]}
    publish_context = driver.volumes[HANDLE].attachments["node-1"].publish_context
    assert va["status"]["attachmentMetadata"] == publish_context  # publish_context reaches status
    assert va["metadata"]["finalizers"] == [FINALIZER]
    assert va["metadata"]["annotations"] == {NODE_ID_ANNOTATION: "node-1"}
    [call] = driver.calls.of("ControllerPublishVolume")
    assert call.request.volume_capability.mount.fs_type == "xfs"
    assert list(call.request.volume_capability.mount.mount_flags) == ["noatime"]
    assert dict(call.request.volume_context)["tier"] == "gold"
    assert FINALIZER in await pv_finalizers(kube)

    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    assert not driver.publications.get(HANDLE)
    assert FINALIZER in await pv_finalizers(kube)  # upstream keeps it until the PV is deleted
    await kube.delete(PERSISTENT_VOLUMES, PV_NAME)
    await eventually(lambda: _without_ours(kube), message="PV finalizer removed")
    await stop_cleanly(process)


async def _without_ours(kube: KubeClient) -> bool:
    return FINALIZER not in await pv_finalizers(kube)


@pytest.mark.parametrize(
    "driver_config",
    [DriverConfig(controller_capabilities=DEFAULT_CONTROLLER_CAPABILITIES - {"PUBLISH_UNPUBLISH_VOLUME"})],
)
async def test_trivial_attacher_marks_attached_without_the_driver(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    process = start_attacher(sidecar, kubeconfig, driver, "--max-grpc-log-length=20")
    await create_va(kube)
    va = await wait_va(kube, "golden-va", attached)
    assert va["status"] == {"attached": True}
    assert "[response body too large, log capped to 20 chars]" in process.log()
    assert "finalizers" not in va["metadata"] and "annotations" not in va["metadata"]
    assert FINALIZER not in await pv_finalizers(kube)
    assert driver.calls.counts["ControllerPublishVolume"] == 0
    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va", timeout=2)  # nothing holds it
    await stop_cleanly(process)


async def test_attach_error_is_recorded_then_recovers(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    driver.faults.add(
        "ControllerPublishVolume",
        "error",
        code=grpc.StatusCode.RESOURCE_EXHAUSTED,
        message="node-1 has too many volumes",
        count=2,
    )
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    failed = await wait_va(kube, "golden-va", lambda obj: "attachError" in obj["status"])
    assert failed["status"]["attachError"]["message"] == (
        "rpc error: code = ResourceExhausted desc = node-1 has too many volumes"
    )
    assert failed["status"]["attachError"]["errorCode"] == 8  # MutableCSINodeAllocatableCount
    assert failed["status"]["attached"] is False
    va = await wait_va(kube, "golden-va", attached)
    assert "attachError" not in va["status"]
    assert driver.calls.counts["ControllerPublishVolume"] == 3
    await stop_cleanly(process)


async def test_a_missing_secret_is_an_attach_error_until_it_exists(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver, controllerPublishSecretRef={"name": "publish-secret", "namespace": "default"})
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    failed = await wait_va(kube, "golden-va", lambda obj: "attachError" in obj["status"])
    assert failed["status"]["attachError"]["message"] == (
        'failed to load secret "default/publish-secret": secrets "publish-secret" not found'
    )
    assert "errorCode" not in failed["status"]["attachError"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "publish-secret", "namespace": "default"},
        "data": {"password": base64.b64encode(b"s3cret").decode()},
    }
    await kube.create(SECRETS, secret)
    await wait_va(kube, "golden-va", attached)
    request = driver.calls.of("ControllerPublishVolume")[-1].request
    assert dict(request.secrets) == {"password": "s3cret"}
    assert "s3cret" not in process.log()  # --v=5 traces the call with secrets stripped
    await stop_cleanly(process)


async def test_bad_input_never_strands_a_volume_attachment(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await create_node(kube)
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube, "no-pv", pv="pv-that-does-not-exist")
    failed = await wait_va(kube, "no-pv", lambda obj: "attachError" in obj["status"])
    assert failed["status"]["attachError"]["message"] == 'persistentvolume "pv-that-does-not-exist" not found'
    assert "finalizers" not in failed["metadata"]
    await delete_va(kube, "no-pv")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "no-pv", timeout=2)
    assert process.running()
    await stop_cleanly(process)


async def test_detach_of_a_volume_the_driver_already_forgot(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    await wait_va(kube, "golden-va", attached)
    del driver.volumes[HANDLE]  # the storage lost it
    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    assert driver.calls.of("ControllerUnpublishVolume")[-1].ok
    await stop_cleanly(process)


async def test_pv_deleted_while_attached_keeps_its_finalizer_until_detached(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    await wait_va(kube, "golden-va", attached)
    await kube.delete(PERSISTENT_VOLUMES, PV_NAME)
    pv = await kube.get(PERSISTENT_VOLUMES, PV_NAME)
    assert pv["metadata"]["deletionTimestamp"] and FINALIZER in pv["metadata"]["finalizers"]

    await create_va(kube, "late-va", node="node-1")  # a new attach of a PV being deleted is refused
    refused = await wait_va(kube, "late-va", lambda obj: "attachError" in obj["status"])
    assert (
        refused["status"]["attachError"]["message"] == f'PersistentVolume "{PV_NAME}" is marked for deletion'
    )
    await delete_va(kube, "late-va")
    assert FINALIZER in await pv_finalizers(kube)  # golden-va still uses it

    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    assert not driver.publications.get(HANDLE)
    await eventually(lambda: _without_ours(kube), message="PV finalizer removed")
    await stop_cleanly(process)


async def test_detach_after_the_node_is_deleted_uses_the_recorded_node_id(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    """Beyond upstream (external-attacher#215 and friends): Node, CSINode and the driver's node all gone."""
    add_volume(driver, HANDLE)
    await create_node(kube, node_id="csi-node-id-1")
    await create_pv(kube, handle=HANDLE)
    driver.config = DriverConfig(nodes={"csi-node-id-1": {"topology.hostpath.csi/node": "node-1"}})
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    va = await wait_va(kube, "golden-va", attached)
    assert va["metadata"]["annotations"][NODE_ID_ANNOTATION] == "csi-node-id-1"

    await kube.delete(NODES, "node-1")
    await kube.delete(CSI_NODES, "node-1")
    driver.config = DriverConfig()  # the driver no longer knows the node: NOT_FOUND
    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    unpublish = driver.calls.of("ControllerUnpublishVolume")[-1]
    assert unpublish.request.node_id == "csi-node-id-1"
    assert unpublish.code == grpc.StatusCode.NOT_FOUND
    await stop_cleanly(process)


async def test_a_va_whose_pv_vanished_is_released(
    kube: KubeClient, kubeconfig: str, driver: TestDriver, sidecar: Any
) -> None:
    await setup(kube, driver)
    process = start_attacher(sidecar, kubeconfig, driver)
    await create_va(kube)
    await wait_va(kube, "golden-va", attached)
    # someone force-deletes the PV: finalizers stripped, then delete
    await kube.patch(PERSISTENT_VOLUMES, PV_NAME, {"metadata": {"finalizers": None}})
    await kube.delete(PERSISTENT_VOLUMES, PV_NAME)
    assert await get_or_none(kube, PERSISTENT_VOLUMES, PV_NAME) is None
    await delete_va(kube, "golden-va")
    await wait_gone(kube, VOLUME_ATTACHMENTS, "golden-va")
    assert "PersistentVolume is gone; releasing the VolumeAttachment" in process.log()
    await stop_cleanly(process)
