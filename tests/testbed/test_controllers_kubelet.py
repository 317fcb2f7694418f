"""The kubelet stand-in: plugin registration, CSINode and Node, stage/publish, node expansion, pod exit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_controllers_kit import (
    DRIVER,
    NODE,
    TOPOLOGY_KEY,
    claim,
    events,
    eventually,
    gone,
    pod,
    storage_class,
)

from proto import csi_pb2, pluginregistration_pb2, pluginregistration_pb2_grpc
from testbed.apiserver import Store
from testbed.controllers import ControlPlane, KubeletConfig, attachment_name
from testbed.csidriver import DriverConfig, GiB, TestDriver, connect

Obj = dict[str, Any]
PVCS, PVS = "persistentvolumeclaims", "persistentvolumes"
ROOT = "/var/lib/kubelet"


class FakeRegistrar(pluginregistration_pb2_grpc.RegistrationServicer):
    """What node-driver-registrar serves on its registration socket, recording kubelet's verdicts."""

    def __init__(self, info: pluginregistration_pb2.PluginInfo) -> None:
        self.info = info
        self.statuses: list[pluginregistration_pb2.RegistrationStatus] = []

    async def GetInfo(self, request: Any, context: Any) -> pluginregistration_pb2.PluginInfo:
        return self.info

    async def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.statuses.append(request)
        return pluginregistration_pb2.RegistrationStatusResponse()


@asynccontextmanager
async def registrar(socket: Path, endpoint: str, **info: Any) -> AsyncIterator[FakeRegistrar]:
    fields = {"type": "CSIPlugin", "name": DRIVER, "endpoint": endpoint, "supported_versions": ["1.0.0"]}
    fake = FakeRegistrar(pluginregistration_pb2.PluginInfo(**(fields | info)))
    server = grpc.aio.server()
    pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    try:
        yield fake
    finally:
        await server.stop(None)
        socket.unlink(missing_ok=True)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short private directory: unix socket paths must stay under 108 bytes (pytest's are long)."""
    path = Path(tempfile.mkdtemp(prefix="kubelet-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def driver(short_dir: Path) -> AsyncIterator[TestDriver]:
    test_driver = TestDriver(DriverConfig(max_volumes_per_node=5), endpoint=f"unix://{short_dir}/csi.sock")
    async with test_driver.serve():
        yield test_driver


def registry(short_dir: Path) -> Path:
    path = short_dir / "plugins_registry"
    path.mkdir(exist_ok=True)
    return path


async def test_a_registrar_socket_is_registered_into_csinode_and_node(
    store: Store, driver: TestDriver, short_dir: Path
) -> None:
    config = KubeletConfig(node_name=NODE, registration_dir=registry(short_dir))
    async with ControlPlane(store, ["kubelet"], kubelet=config) as plane:
        await plane.wait_synced()
        node = await store.get("nodes", NODE)  # kubelet registered its node first
        assert node["metadata"]["annotations"] == {
            "volumes.kubernetes.io/controller-managed-attach-detach": "true"
        }
        csinode = await store.get("csinodes", NODE)
        assert csinode["spec"]["drivers"] == []
        assert csinode["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"]}
        ]

        socket = registry(short_dir) / f"{DRIVER}-reg.sock"
        async with registrar(socket, endpoint=f"{short_dir}/csi.sock") as fake:
            await eventually(lambda: _statuses(fake), what="NotifyRegistrationStatus")
            assert fake.statuses == [pluginregistration_pb2.RegistrationStatus(plugin_registered=True)]
            assert driver.calls.counts["NodeGetInfo"] == 1
            csinode = await store.get("csinodes", NODE)
            assert csinode["spec"]["drivers"] == [
                {"name": DRIVER, "nodeID": NODE, "topologyKeys": [TOPOLOGY_KEY], "allocatable": {"count": 5}}
            ]
            node = await store.get("nodes", NODE)
            assert (
                node["metadata"]["annotations"]["csi.volume.kubernetes.io/nodeid"]
                == '{"hostpath.csi.k8s.io":"node-1"}'
            )
            assert json.loads(node["metadata"]["annotations"]["csi.volume.kubernetes.io/nodeid"]) == {
                DRIVER: NODE
            }
            assert node["metadata"]["labels"][TOPOLOGY_KEY] == NODE
            assert DRIVER in plane.kubelet.plugins.drivers

        # the socket is gone: kubelet de-registers the driver (the topology label stays, as upstream)
        await eventually(lambda: _no_drivers(store), what="the CSINode entry to go")
        node = await store.get("nodes", NODE)
        assert "csi.volume.kubernetes.io/nodeid" not in node["metadata"]["annotations"]
        assert node["metadata"]["labels"][TOPOLOGY_KEY] == NODE
        assert plane.kubelet.plugins.drivers == {}


async def _statuses(fake: FakeRegistrar) -> list[Any]:
    return fake.statuses


async def _no_drivers(store: Store) -> bool:
    return (await store.get("csinodes", NODE))["spec"]["drivers"] == []


@pytest.mark.parametrize(
    ("info", "error"),
    [
        (
            {"supported_versions": ["2.0.0"]},
            "RegisterPlugin error -- plugin validation failed with err: validation failed for CSI Driver "
            f'{DRIVER} at endpoint ENDPOINT: kubernetes.io/csi: ValidatePlugin for CSI driver "{DRIVER}" '
            'failed. None of the versions specified ["2.0.0"] are supported.',
        ),
        (
            {"supported_versions": []},
            "RegisterPlugin error -- plugin validation failed with err: validation failed for CSI Driver "
            f'{DRIVER} at endpoint ENDPOINT: kubernetes.io/csi: ValidatePlugin for CSI driver "{DRIVER}" '
            "failed. Plugin returned an empty list for supported versions",
        ),
        (
            {"type": "DRAPlugin"},
            "RegisterPlugin error -- no handler registered for plugin type: DRAPlugin at socket",
        ),
    ],
)
async def test_an_invalid_plugin_is_told_why_and_not_registered(
    store: Store, driver: TestDriver, short_dir: Path, info: Obj, error: str
) -> None:
    endpoint = f"{short_dir}/csi.sock"
    config = KubeletConfig(node_name=NODE, registration_dir=registry(short_dir))
    async with ControlPlane(store, ["kubelet"], kubelet=config) as plane:
        await plane.wait_synced()
        async with registrar(registry(short_dir) / "bad-reg.sock", endpoint=endpoint, **info) as fake:
            await eventually(lambda: _statuses(fake), what="NotifyRegistrationStatus")
            [status] = fake.statuses[:1]
            assert not status.plugin_registered
            assert status.error.startswith(error.replace("ENDPOINT", endpoint))
            assert (await store.get("csinodes", NODE))["spec"]["drivers"] == []
            assert driver.calls.counts["NodeGetInfo"] == 0


@dataclass
class Mounted:
    store: Store
    driver: TestDriver
    plane: ControlPlane
    volume_id: str
    pod_uid: str


async def attached_by_attacher(store: Store, name: str) -> None:
    """What the external attacher does once ControllerPublish succeeded."""
    attachment = await eventually(lambda: store.get("volumeattachments", name), what="the VolumeAttachment")
    attachment["status"] = {"attached": True, "attachmentMetadata": {"device": "/dev/testbed"}}
    await store.update_status("volumeattachments", attachment)


@pytest.fixture
async def mounted(store: Store, driver: TestDriver, short_dir: Path) -> AsyncIterator[Mounted]:
    """A pod on node-1 using a 1Gi CSI volume, attached, staged and published by the stand-ins."""
    async with connect(driver.address) as csi:
        capability = csi_pb2.VolumeCapability(mount={}, access_mode={"mode": "SINGLE_NODE_WRITER"})
        request = csi_pb2.CreateVolumeRequest(
            name="pvc-data", volume_capabilities=[capability], capacity_range={"required_bytes": GiB}
        )
        volume_id = (await csi.controller.CreateVolume(request)).volume.volume_id
    await store.create("storageclasses", storage_class())
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "pv-data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "csi": {"driver": DRIVER, "volumeHandle": volume_id, "fsType": "xfs"},
            "mountOptions": ["noatime"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "golden",
        },
    }
    await store.create(PVS, volume)
    config = KubeletConfig(node_name=NODE, registration_dir=registry(short_dir), root_dir=ROOT)
    async with (
        ControlPlane(store, ["pv", "attachdetach", "kubelet"], kubelet=config, resync_period=0.2) as plane,
        registrar(registry(short_dir) / f"{DRIVER}-reg.sock", endpoint=f"{short_dir}/csi.sock"),
    ):
        await plane.wait_synced()
        await eventually(lambda: _available(store), what="the PV Available")
        await store.create(PVCS, claim(), namespace="default")
        created = await store.create("pods", pod("app", "data"), namespace="default")
        await attached_by_attacher(store, attachment_name(volume_id, DRIVER, NODE))
        await eventually(lambda: _running(store), what="the pod Running")
        yield Mounted(store, driver, plane, volume_id, created["metadata"]["uid"])


async def _available(store: Store) -> bool:
    return (await store.get(PVS, "pv-data"))["status"]["phase"] == "Available"


async def _running(store: Store) -> bool:
    return (await store.get("pods", "app", namespace="default"))["status"]["phase"] == "Running"


def target_path(uid: str) -> str:
    return f"{ROOT}/pods/{uid}/volumes/kubernetes.io~csi/pv-data/mount"


async def test_a_pod_volume_is_staged_and_published_after_attach(mounted: Mounted) -> None:
    driver, uid = mounted.driver, mounted.pod_uid
    digest = hashlib.sha256(mounted.volume_id.encode()).hexdigest()
    staging = f"{ROOT}/plugins/kubernetes.io/csi/{DRIVER}/{digest}/globalmount"
    [stage] = driver.calls.of("NodeStageVolume")
    assert stage.request.volume_id == mounted.volume_id
    assert stage.request.staging_target_path == staging
    assert dict(stage.request.publish_context) == {"device": "/dev/testbed"}
    capability = stage.request.volume_capability
    assert capability.mount.fs_type == "xfs" and list(capability.mount.mount_flags) == ["noatime"]
    assert capability.access_mode.mode == csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
    [publish] = driver.calls.of("NodePublishVolume")
    assert publish.request.target_path == target_path(uid)
    assert publish.request.staging_target_path == staging
    assert not publish.request.readonly
    assert sorted(driver.volumes[mounted.volume_id].published) == [target_path(uid)]

    node = await mounted.store.get("nodes", NODE)
    assert node["status"]["volumesInUse"] == [f"kubernetes.io/csi/{DRIVER}^{mounted.volume_id}"]
    app = await mounted.store.get("pods", "app", namespace="default")
    assert [c["type"] for c in app["status"]["conditions"] if c["status"] == "True"] == [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]


async def test_deleting_the_pod_unpublishes_unstages_and_detaches(mounted: Mounted) -> None:
    store, driver = mounted.store, mounted.driver
    await store.delete("pods", "app", namespace="default")  # graceful: kubelet finishes it

    await eventually(lambda: gone(store, "pods", "app", namespace="default"), what="the pod to go")
    assert [c.request.target_path for c in driver.calls.of("NodeUnpublishVolume")] == [
        target_path(mounted.pod_uid)
    ]
    assert len(driver.calls.of("NodeUnstageVolume")) == 1
    assert driver.volumes[mounted.volume_id].staged == {}
    assert "volumesInUse" not in (await store.get("nodes", NODE))["status"]
    name = attachment_name(mounted.volume_id, DRIVER, NODE)
    await eventually(lambda: gone(store, "volumeattachments", name), what="the VolumeAttachment deleted")


async def grow(store: Store, size: str, *, status: str = "NodeResizePending") -> None:
    """What external-resizer leaves after ControllerExpandVolume (06-pvc-after-controller-expand.json)."""
    pvc = await store.get(PVCS, "data", namespace="default")
    pvc["spec"]["resources"]["requests"]["storage"] = size
    pvc = await store.update(PVCS, pvc, namespace="default")
    volume = await store.get(PVS, "pv-data")
    volume["spec"]["capacity"]["storage"] = size
    await store.update(PVS, volume)
    golden_status = json.loads(
        Path("/work/shared/upstream-golden/06-pvc-after-controller-expand.json").read_text()
    )
    pvc["status"] = golden_status["status"] | {"allocatedResources": {"storage": size}}
    pvc["status"]["allocatedResourceStatuses"] = {"storage": status}
    await store.update_status(PVCS, pvc, namespace="default")


async def test_node_expansion_finishes_the_claim_like_kubelet(mounted: Mounted) -> None:
    store, driver = mounted.store, mounted.driver
    await grow(store, "2Gi")

    async def finished() -> Obj | None:
        pvc = await store.get(PVCS, "data", namespace="default")
        return pvc if pvc["status"]["capacity"] == {"storage": "2Gi"} else None

    pvc = await eventually(finished, what="the claim's capacity to grow")
    assert "allocatedResourceStatuses" not in pvc["status"]
    assert pvc["status"].get("conditions", []) == []
    assert pvc["status"]["allocatedResources"] == {"storage": "2Gi"}
    [expand] = driver.calls.of("NodeExpandVolume")
    assert expand.request.volume_id == mounted.volume_id
    assert expand.request.volume_path == target_path(mounted.pod_uid)
    assert expand.request.capacity_range.required_bytes == 2 * GiB
    assert expand.request.staging_target_path.endswith("/globalmount")
    assert driver.volumes[mounted.volume_id].capacity == 2 * GiB
    resized = await events(store, reason="FileSystemResizeSuccessful")
    assert sorted(e["involvedObject"]["kind"] for e in resized) == ["PersistentVolumeClaim", "Pod"]
    assert {e["message"] for e in resized} == {
        f'MountVolume.NodeExpandVolume succeeded for volume "pv-data" {NODE}'
    }
    assert {e["source"]["component"] for e in resized} == {"kubelet"}


async def test_infeasible_node_expansion_is_marked_on_the_claim(mounted: Mounted) -> None:
    store, driver = mounted.store, mounted.driver
    driver.config = DriverConfig(max_volume_size=GiB + GiB // 2)
    await grow(store, "2Gi")

    async def infeasible() -> Obj | None:
        pvc = await store.get(PVCS, "data", namespace="default")
        statuses = pvc["status"].get("allocatedResourceStatuses") or {}
        return pvc if statuses.get("storage") == "NodeResizeInfeasible" else None

    pvc = await eventually(infeasible, what="NodeResizeInfeasible")
    conditions = {c["type"]: c for c in pvc["status"]["conditions"]}
    assert set(conditions) == {"Resizing", "FileSystemResizePending", "NodeResizeError"}
    assert conditions["NodeResizeError"]["message"] == (
        "failed to expand pvc with Expander.NodeExpand failed to expand the volume rpc error: "
        f"code = OutOfRange desc = cannot expand volume {mounted.volume_id} to {2 * GiB} bytes"
    )
    assert pvc["status"]["capacity"] == {"storage": "1Gi"}
    await asyncio.sleep(0.3)
    assert len(driver.calls.of("NodeExpandVolume")) == 1  # infeasible: not retried


def test_socket_paths_fit_a_unix_socket(short_dir: Path) -> None:
    """The tests' sockets stay under the 108-byte sun_path limit (else registration could not work)."""
    assert len(os.fsencode(registry(short_dir) / f"{DRIVER}-reg.sock")) < 108
