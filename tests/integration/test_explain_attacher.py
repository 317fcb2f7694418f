"""`csi-attacher explain va NAME`: one test per state the attacher can leave a VolumeAttachment in.

Each test builds the state on the test-bed API server (objects as the attach/detach controller and
the provisioner leave them, errors as the attacher records them) with the CSI test driver serving,
asks the attacher's explain for the VolumeAttachment, and asserts on the headline sentence and the
facts. One test runs the real entrypoint (`python -m sidecars.attacher explain va ...`).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from typing import Any

import pytest
from attacher_fixtures import DRIVER, FINALIZER, PV_NAME, create_node, create_pv, create_va, va_body
from kit import ROOT

from common.explain import Report, Session
from common.kube.client import KubeClient
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from sidecars.attacher.cli import PROGRAM, AttacherConfig, build_flagset
from sidecars.attacher.explain import explain_va
from testbed.csidriver import DEFAULT_CONTROLLER_CAPABILITIES, DriverConfig, TestDriver

VA = "va-1"


async def explained(kubeconfig: str, address: str, name: str = VA) -> Report:
    flags = build_flagset().parse([f"--kubeconfig={kubeconfig}", f"--csi-address={address}"])
    config = AttacherConfig.from_flags(flags)
    async with Session.open(PROGRAM, config.standard) as session:
        return await explain_va(session, config, name)


async def ready(kube: KubeClient, **csi: Any) -> None:
    """Node, CSINode and PV as kubelet and the provisioner leave them."""
    await create_node(kube)
    await create_pv(kube, **csi)


async def test_missing_va_is_nothing_to_do(kubeconfig: str, driver: TestDriver) -> None:
    report = await explained(kubeconfig, driver.address, "nope")
    assert report.verdict == "Nothing to do: VolumeAttachment nope does not exist."


async def test_va_of_another_attacher_is_ignored(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await ready(kube)
    body = va_body(VA)
    body["spec"]["attacher"] = "other.csi.example.com"
    await kube.create(VOLUME_ATTACHMENTS, body)
    report = await explained(kubeconfig, driver.address)
    assert "it is for attacher 'other.csi.example.com', not 'hostpath.csi.k8s.io'" in report.verdict
    assert report.verdict.startswith("Nothing to do")


async def test_ready_va_would_be_attached(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube, handle="vol-1")
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Would attach: ControllerPublishVolume(volume 'vol-1', node ID 'node-1'), after adding finalizer "
        f"{FINALIZER}."
    )
    assert f"PersistentVolume {PV_NAME} gets finalizer {FINALIZER} first." in report.facts
    assert "No events about it." in report.facts


async def test_attached_va_needs_nothing(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube)
    await create_va(kube, VA)
    await kube.patch(VOLUME_ATTACHMENTS, VA, {"status": {"attached": True}}, subresource="status")
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith("Nothing to do: it is attached (status.attached is true)")


async def test_missing_pv_blocks_the_attach(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_node(kube)
    await create_va(kube, VA, pv="pv-missing")
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith(
        'Waiting: the attach cannot start: persistentvolume "pv-missing" not found.'
    )
    assert "csi-attacher tries again as soon as the PersistentVolume appears." in report.facts


async def test_pv_marked_for_deletion_blocks_the_attach(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await ready(kube)
    await kube.patch(PERSISTENT_VOLUMES, PV_NAME, {"metadata": {"finalizers": ["example.com/hold"]}})
    await kube.delete(PERSISTENT_VOLUMES, PV_NAME)
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert f'PersistentVolume "{PV_NAME}" is marked for deletion' in report.verdict


async def test_in_tree_pv_cannot_be_attached(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_node(kube)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "in-tree"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/tmp/x"},
        },
    }
    await kube.create(PERSISTENT_VOLUMES, pv)
    await create_va(kube, VA, pv="in-tree")
    report = await explained(kubeconfig, driver.address)
    assert "pv spec contained non-csi source that was not migrated" in report.verdict


async def test_access_modes_csi_cannot_express(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube)
    await kube.patch(
        PERSISTENT_VOLUMES, PV_NAME, {"spec": {"accessModes": ["ReadOnlyMany", "ReadWriteOnce"]}}
    )
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert (
        "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume" in report.verdict
    )


async def test_missing_publish_secret(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_node(kube)
    await create_pv(kube, controllerPublishSecretRef={"name": "publish-secret", "namespace": "default"})
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert (
        'failed to load secret "default/publish-secret": secrets "publish-secret" not found' in report.verdict
    )


async def test_node_without_csinode(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_pv(kube)
    await kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert 'Waiting: the attach cannot start: csinode.storage.k8s.io "node-1" not found.' in report.verdict
    assert any("is csi-node-driver-registrar running there" in fact for fact in report.facts)


async def test_missing_node(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_pv(kube)
    await create_va(kube, VA, node="node-gone")
    report = await explained(kubeconfig, driver.address)
    assert 'csinode.storage.k8s.io "node-gone" not found' in report.verdict
    assert "Node node-gone does not exist: a VolumeAttachment for it cannot be attached." in report.facts


async def test_csinode_without_the_driver(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube)
    await kube.patch(CSI_NODES, "node-1", {"spec": {"drivers": []}})
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert f"CSINode node-1 does not contain driver {DRIVER}" in report.verdict


async def test_failed_attach_is_retried(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube, handle="vol-1")
    await create_va(kube, VA)
    error = {
        "message": "rpc error: code = ResourceExhausted desc = too many volumes",
        "time": "2024-01-01T00:00:00Z",
    }
    await kube.patch(VOLUME_ATTACHMENTS, VA, {"status": {"attachError": error}}, subresource="status")
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Retrying with backoff: would call ControllerPublishVolume(volume 'vol-1', node ID 'node-1') again; "
        "the last attempt failed: rpc error: code = ResourceExhausted desc = too many volumes"
    )
    assert any(f.startswith("status.attachError (") for f in report.facts)


async def test_deleted_va_would_be_detached(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await ready(kube, handle="vol-1")
    body = va_body(VA)
    body["metadata"]["finalizers"] = [FINALIZER]
    await kube.create(VOLUME_ATTACHMENTS, body)
    await kube.delete(VOLUME_ATTACHMENTS, VA)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Would detach: ControllerUnpublishVolume(volume 'vol-1', node ID 'node-1'), then remove finalizer "
        f"{FINALIZER}."
    )
    assert any(f.startswith("It is being deleted (since") for f in report.facts)
    assert (
        f"Finalizer {FINALIZER}: held by csi-attacher of hostpath-csi-k8s-io, removed once the volume is "
        "detached." in report.facts
    )


async def test_detached_va_waits_for_other_finalizers(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await ready(kube)
    body = va_body(VA)
    body["metadata"]["finalizers"] = ["example.com/audit"]
    await kube.create(VOLUME_ATTACHMENTS, body)
    await kube.delete(VOLUME_ATTACHMENTS, VA)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == f"Nothing to do: it is detached (finalizer {FINALIZER} is gone)."
    assert (
        "Finalizer example.com/audit: not one the Kubernetes storage controllers or CSI sidecars set: "
        "whoever added it removes it." in report.facts
    )


async def test_va_whose_pv_is_gone_is_released(kube: KubeClient, kubeconfig: str, driver: TestDriver) -> None:
    await create_node(kube)
    body = va_body(VA, pv="pv-gone")
    body["metadata"]["finalizers"] = [FINALIZER]
    await kube.create(VOLUME_ATTACHMENTS, body)
    await kube.delete(VOLUME_ATTACHMENTS, VA)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict.startswith("Would release it: PersistentVolume pv-gone is gone")


@pytest.mark.parametrize(
    "driver_config",
    [
        replace(
            DriverConfig(),
            controller_capabilities=DEFAULT_CONTROLLER_CAPABILITIES - {"PUBLISH_UNPUBLISH_VOLUME"},
        )
    ],
)
async def test_driver_without_controller_publish(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await ready(kube)
    await create_va(kube, VA)
    report = await explained(kubeconfig, driver.address)
    assert report.verdict == (
        "Would mark it attached at once (the driver lacks the controller service or "
        "PUBLISH_UNPUBLISH_VOLUME, so csi-attacher never calls it)."
    )


async def test_unreachable_driver(kube: KubeClient, kubeconfig: str, socket_dir: object) -> None:
    await create_node(kube)
    await create_va(kube, VA)
    report = await explained(kubeconfig, f"unix://{socket_dir}/absent.sock")
    assert report.verdict.startswith(
        f"Waiting: csi-attacher cannot reach its CSI driver at unix://{socket_dir}/absent.sock"
    )


async def test_the_real_entrypoint_prints_the_explanation(
    kube: KubeClient, kubeconfig: str, driver: TestDriver
) -> None:
    await ready(kube, handle="vol-1")
    await create_va(kube, VA)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecars.attacher",
        "explain",
        "va",
        VA,
        f"--kubeconfig={kubeconfig}",
        "--csi-address",
        driver.address,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == f"VolumeAttachment {VA} (csi-attacher for {DRIVER})"
    assert lines[1].startswith("  Would attach: ControllerPublishVolume(volume 'vol-1', node ID 'node-1')")
