"""RBAC in use: the real provisioner, attacher and resizer on the test bed make no ungranted request.

Each test runs the real entrypoint (`python -m sidecars.<name>`, leader election on, as deployed)
briefly against an in-process API server and CSI test driver, through a representative scenario, then
hands the API server's request log to `test_rbac.check` (see there for what fails and what is only
reported). Running the sidecars here, rather than reusing logs recorded by the integration tests, keeps
the check on the code as it is now and independent of other test files. Requests upstream also makes
without a grant (`FORBIDDEN_UPSTREAM_TOO`) are answered 403 during the scenario, as RBAC would.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kit import SidecarProcess, eventually, remove_tree, short_tempdir
from test_rbac import DRIVER, FORBIDDEN_UPSTREAM_TOO, NAMESPACE, check

from common.backoff import TokenBucket
from common.kube.client import ApiError, KubeClient
from common.kube.config import load_cluster_config
from common.kube.resources import (
    CSI_NODES,
    NODES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    STORAGE_CLASSES,
    VOLUME_ATTACHMENTS,
)
from proto import csi_pb2
from testbed.apiserver import ApiServer
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, DriverConfig, GiB, TestDriver, connect


@pytest.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    async with ApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def kube(apiserver: ApiServer) -> AsyncIterator[KubeClient]:
    assert apiserver.kubeconfig is not None
    client = KubeClient(
        await load_cluster_config(kubeconfig=str(apiserver.kubeconfig)),
        limiter=TokenBucket(math.inf, 1),
        user_agent="rbac-test",
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def driver() -> AsyncIterator[TestDriver]:
    directory = short_tempdir()
    test_driver = TestDriver(DriverConfig(node_expansion_required=False))
    try:
        async with test_driver.serve(f"unix://{directory}/csi.sock"):
            yield test_driver
    finally:
        remove_tree(directory)


@pytest.fixture
async def run(
    apiserver: ApiServer, driver: TestDriver, tmp_path: Path
) -> AsyncIterator[Callable[..., SidecarProcess]]:
    """Start `python -m sidecars.<package>` with leader election on, as deployed."""
    started: list[SidecarProcess] = []

    def start(package: str, *extra: str) -> SidecarProcess:
        program = importlib.import_module(f"sidecars.{package}.cli").PROGRAM
        for group, resource, verb in FORBIDDEN_UPSTREAM_TOO.get(program, ()):
            assert not group and "/" not in resource
            apiserver.faults.fail(1_000_000, status=403, verb=verb, resource=resource, message="RBAC")
        args = [
            f"--kubeconfig={apiserver.kubeconfig}",
            f"--csi-address={driver.address}",
            "--v=4",
            "--leader-election",
            f"--leader-election-namespace={NAMESPACE}",
            "--retry-interval-start=50ms",
            "--retry-interval-max=1s",
            *extra,
        ]
        process = SidecarProcess(f"sidecars.{package}", args, log_dir=tmp_path).start()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.running():
            await process.stop()


async def stop(process: SidecarProcess) -> None:
    code = await process.stop(timeout=20)
    assert code == 0, process.log()[-3000:]


async def gone(kube: KubeClient, resource: Any, name: str, namespace: str | None = None) -> bool:
    try:
        await kube.get(resource, name, namespace=namespace)
    except ApiError as err:
        return err.not_found
    return False


async def create_node(kube: KubeClient, name: str = "node-1") -> None:
    labels = {DEFAULT_TOPOLOGY_KEY: name}
    await kube.create(
        NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
    )
    driver = {"name": DRIVER, "nodeID": name, "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}
    await kube.create(
        CSI_NODES,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": name},
            "spec": {"drivers": [driver]},
        },
    )


async def create_storage_class(kube: KubeClient) -> None:
    await kube.create(
        STORAGE_CLASSES,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "hostpath"},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
        },
    )


def capability() -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability()
    cap.mount.fs_type = "ext4"
    cap.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    return cap


async def backend_volume(driver: TestDriver, name: str) -> str:
    """A volume in the driver, as the provisioner would have created it."""
    async with connect(driver.address) as stubs:
        rsp = await stubs.controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=name,
                capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                volume_capabilities=[capability()],
            )
        )
    return str(rsp.volume.volume_id)


def claim_body(name: str, size: str = "1Gi") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "hostpath",
        },
    }


def volume_body(name: str, handle: str, claim: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "capacity": {"storage": "1Gi"},
        "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"},
        "persistentVolumeReclaimPolicy": "Delete",
        "storageClassName": "hostpath",
        "volumeMode": "Filesystem",
    }
    if claim is not None:
        meta = claim["metadata"]
        spec["claimRef"] = {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "uid": meta["uid"],
                            "namespace": meta["namespace"], "name": meta["name"]}  # fmt: skip
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec}


async def test_attacher_calls_are_granted(
    apiserver: ApiServer, kube: KubeClient, driver: TestDriver, run: Callable[..., SidecarProcess]
) -> None:
    """Attach a volume, detach it, delete its PV (the attacher's PV finalizer comes off)."""
    await create_node(kube)
    handle = await backend_volume(driver, "pv-attach")
    await kube.create(PERSISTENT_VOLUMES, volume_body("pv-attach", handle))
    process = run("attacher")
    va = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": "va-1"},
        "spec": {"attacher": DRIVER, "nodeName": "node-1", "source": {"persistentVolumeName": "pv-attach"}},
    }
    await kube.create(VOLUME_ATTACHMENTS, va)

    async def attached() -> bool:
        obj = await kube.get(VOLUME_ATTACHMENTS, "va-1")
        return bool((obj.get("status") or {}).get("attached"))

    await eventually(attached, timeout=20, message="VolumeAttachment attached")
    await kube.delete(PERSISTENT_VOLUMES, "pv-attach")  # blocked by the attacher's finalizer while attached
    await kube.delete(VOLUME_ATTACHMENTS, "va-1")
    await eventually(
        lambda: gone(kube, VOLUME_ATTACHMENTS, "va-1"), timeout=20, message="VA detached and gone"
    )

    async def released() -> bool:  # kubernetes.io/pv-protection stays: the test bed runs no PV controller
        pv = await kube.get(PERSISTENT_VOLUMES, "pv-attach")
        return not [f for f in pv["metadata"].get("finalizers", ()) if f.startswith("external-attacher/")]

    await eventually(released, timeout=20, message="the attacher's PV finalizer removed")
    await stop(process)
    check(apiserver.requests.records(), "csi-attacher")


async def test_resizer_calls_are_granted(
    apiserver: ApiServer, kube: KubeClient, driver: TestDriver, run: Callable[..., SidecarProcess]
) -> None:
    """Expand a bound claim (controller-only expansion: the driver needs no node step)."""
    await create_storage_class(kube)
    claim = await kube.create(PERSISTENT_VOLUME_CLAIMS, claim_body("data"))
    handle = await backend_volume(driver, "pv-resize")
    await kube.create(PERSISTENT_VOLUMES, volume_body("pv-resize", handle, claim))
    await kube.patch(PERSISTENT_VOLUMES, "pv-resize", {"status": {"phase": "Bound"}}, subresource="status")
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, "data", {"spec": {"volumeName": "pv-resize"}}, namespace=NAMESPACE
    )
    status = {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, "data", {"status": status}, namespace=NAMESPACE, subresource="status"
    )
    process = run("resizer")
    patch = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    await kube.patch(PERSISTENT_VOLUME_CLAIMS, "data", patch, namespace=NAMESPACE)

    async def expanded() -> bool:
        pvc = await kube.get(PERSISTENT_VOLUME_CLAIMS, "data", namespace=NAMESPACE)
        return ((pvc.get("status") or {}).get("capacity") or {}).get("storage") == "2Gi"

    await eventually(expanded, timeout=20, message="claim expanded to 2Gi")
    await stop(process)
    check(apiserver.requests.records(), "csi-resizer")


async def test_provisioner_calls_are_granted(
    apiserver: ApiServer, kube: KubeClient, driver: TestDriver, run: Callable[..., SidecarProcess]
) -> None:
    """Provision a claim, then delete the released volume (reclaim policy Delete)."""
    await create_node(kube)
    await create_storage_class(kube)
    body = claim_body("claim-1")
    body["metadata"]["annotations"] = {"volume.kubernetes.io/storage-provisioner": DRIVER}
    claim = await kube.create(PERSISTENT_VOLUME_CLAIMS, body)
    process = run("provisioner", "--feature-gates=Topology=true")
    pv_name = f"pvc-{claim['metadata']['uid']}"

    async def provisioned() -> bool:
        return not await gone(kube, PERSISTENT_VOLUMES, pv_name)

    await eventually(provisioned, timeout=30, message="PV provisioned")
    await kube.delete(PERSISTENT_VOLUME_CLAIMS, "claim-1", namespace=NAMESPACE)
    # The PV controller's part: the claim is gone, so the volume is Released.
    await kube.patch(PERSISTENT_VOLUMES, pv_name, {"status": {"phase": "Released"}}, subresource="status")

    async def deleted() -> bool:  # kubernetes.io/pv-protection may keep the object: no PV controller here
        try:
            pv = await kube.get(PERSISTENT_VOLUMES, pv_name)
        except ApiError as err:
            return err.not_found
        return bool(pv["metadata"].get("deletionTimestamp")) and not driver.state.volumes

    await eventually(deleted, timeout=30, message="volume and PV deleted")
    await stop(process)
    check(apiserver.requests.records(), "csi-provisioner")
