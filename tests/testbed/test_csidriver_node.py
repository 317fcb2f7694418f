"""The test driver's Node service and its capability switches (csi-sanity's Node cases)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto import csi_pb2
from testbed.csidriver import DEFAULT_CONTROLLER_CAPABILITIES, DriverConfig, GiB, Stubs, TestDriver, connect

Mode = csi_pb2.VolumeCapability.AccessMode
MOUNT = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)
)
STAGING = "/var/lib/kubelet/plugins/staging/pv-1"
TARGET = "/var/lib/kubelet/pods/uid/volumes/pv-1/mount"


@asynccontextmanager
async def running(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[TestDriver, Stubs]]:
    driver = TestDriver(DriverConfig(**config), endpoint=f"unix://{tmp_path}/csi.sock")
    async with driver.serve(), connect(driver.address) as stubs:
        yield driver, stubs


@pytest.fixture
async def csi(tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running(tmp_path) as (_, stubs):
        yield stubs


async def fails(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


async def new_volume(csi: Stubs, name: str = "pvc-1", size: int = GiB) -> str:
    request = csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[MOUNT], capacity_range=csi_pb2.CapacityRange(required_bytes=size)
    )
    return str((await csi.controller.CreateVolume(request)).volume.volume_id)


def stage(vol: str, path: str = STAGING) -> csi_pb2.NodeStageVolumeRequest:
    return csi_pb2.NodeStageVolumeRequest(volume_id=vol, staging_target_path=path, volume_capability=MOUNT)


def publish(vol: str, *, staging: str = STAGING, readonly: bool = False) -> csi_pb2.NodePublishVolumeRequest:
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=vol,
        staging_target_path=staging,
        target_path=TARGET,
        volume_capability=MOUNT,
        readonly=readonly,
    )


async def test_node_get_info_reports_node_limit_and_topology(tmp_path: Path) -> None:
    segments = {"topology.hostpath.csi/node": "node-7", "zone": "z1"}
    async with running(tmp_path, node_id="node-7", nodes={"node-7": segments}, max_volumes_per_node=3) as (
        _,
        csi,
    ):
        info = await csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert (info.node_id, info.max_volumes_per_node) == ("node-7", 3)
        assert dict(info.accessible_topology.segments) == segments


async def test_node_get_info_without_topology(tmp_path: Path) -> None:
    async with running(tmp_path, topology=False) as (_, csi):
        info = await csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert info.node_id == "node-1" and not info.HasField("accessible_topology")


async def test_node_capabilities_follow_the_config(tmp_path: Path) -> None:
    async with running(tmp_path, node_capabilities={"EXPAND_VOLUME", "STAGE_UNSTAGE_VOLUME"}) as (_, csi):
        caps = await csi.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
        rpc = csi_pb2.NodeServiceCapability.RPC
        assert [c.rpc.type for c in caps.capabilities] == [rpc.STAGE_UNSTAGE_VOLUME, rpc.EXPAND_VOLUME]


async def test_stage_publish_unpublish_unstage_bookkeeping(tmp_path: Path) -> None:
    async with running(tmp_path) as (driver, csi):
        vol = await new_volume(csi)
        await csi.node.NodeStageVolume(stage(vol))
        await csi.node.NodeStageVolume(stage(vol))  # idempotent
        await csi.node.NodePublishVolume(publish(vol))
        await csi.node.NodePublishVolume(publish(vol))  # idempotent
        await fails(csi.node.NodePublishVolume(publish(vol, readonly=True)), grpc.StatusCode.ALREADY_EXISTS)
        state = driver.volumes[vol]
        assert (list(state.staged), list(state.published)) == ([STAGING], [TARGET])
        assert state.published[TARGET].staging_path == STAGING

        stats = await csi.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol, volume_path=TARGET)
        )
        assert {(u.unit, u.total) for u in stats.usage} >= {(csi_pb2.VolumeUsage.BYTES, GiB)}
        await fails(
            csi.node.NodeGetVolumeStats(
                csi_pb2.NodeGetVolumeStatsRequest(volume_id=vol, volume_path="/elsewhere")
            ),
            grpc.StatusCode.NOT_FOUND,
        )

        unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id=vol, target_path=TARGET)
        await csi.node.NodeUnpublishVolume(unpublish)
        await csi.node.NodeUnpublishVolume(unpublish)
        unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id=vol, staging_target_path=STAGING)
        await csi.node.NodeUnstageVolume(unstage)
        await csi.node.NodeUnstageVolume(unstage)
        assert (state.staged, state.published) == ({}, {})


async def test_publish_needs_a_staged_volume_when_staging_is_on(csi: Stubs) -> None:
    vol = await new_volume(csi)
    await fails(csi.node.NodePublishVolume(publish(vol, staging="")), grpc.StatusCode.FAILED_PRECONDITION)
    await fails(csi.node.NodePublishVolume(publish(vol)), grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        (
            "NodeStageVolume",
            csi_pb2.NodeStageVolumeRequest(staging_target_path=STAGING, volume_capability=MOUNT),
        ),
        ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id="v", volume_capability=MOUNT)),
        ("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(volume_id="v", staging_target_path=STAGING)),
        ("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(staging_target_path=STAGING)),
        ("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(volume_id="v")),
        ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(target_path=TARGET, volume_capability=MOUNT)),
        ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(volume_id="v", volume_capability=MOUNT)),
        ("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(volume_id="v", target_path=TARGET)),
        ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(target_path=TARGET)),
        ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id="v")),
        ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_path=TARGET)),
        ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id="v")),
        ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_path=TARGET)),
        ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id="v")),
    ],
    ids=lambda v: v if isinstance(v, str) else str(v).replace("\n", " ")[:40],
)
async def test_node_missing_required_fields_are_invalid_argument(
    csi: Stubs, method: str, request_: Any
) -> None:
    details = await fails(getattr(csi.node, method)(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert "missing" in details


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("NodeStageVolume", stage("missing")),
        ("NodePublishVolume", publish("missing")),
        ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id="missing", target_path=TARGET)),
        (
            "NodeUnstageVolume",
            csi_pb2.NodeUnstageVolumeRequest(volume_id="missing", staging_target_path=STAGING),
        ),
        ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id="missing", volume_path=TARGET)),
        ("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id="missing", volume_path=TARGET)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_node_calls_on_a_missing_volume_are_not_found(csi: Stubs, method: str, request_: Any) -> None:
    await fails(getattr(csi.node, method)(request_), grpc.StatusCode.NOT_FOUND)


# --- capability switches ---

ALL_OFF_CASES = [
    (
        "CREATE_DELETE_VOLUME",
        "CreateVolume",
        csi_pb2.CreateVolumeRequest(name="v", volume_capabilities=[MOUNT]),
    ),
    ("CREATE_DELETE_VOLUME", "DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id="v")),
    (
        "PUBLISH_UNPUBLISH_VOLUME",
        "ControllerPublishVolume",
        csi_pb2.ControllerPublishVolumeRequest(volume_id="v", node_id="node-1", volume_capability=MOUNT),
    ),
    (
        "PUBLISH_UNPUBLISH_VOLUME",
        "ControllerUnpublishVolume",
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id="v"),
    ),
    ("LIST_VOLUMES", "ListVolumes", csi_pb2.ListVolumesRequest()),
    ("GET_CAPACITY", "GetCapacity", csi_pb2.GetCapacityRequest()),
    (
        "CREATE_DELETE_SNAPSHOT",
        "CreateSnapshot",
        csi_pb2.CreateSnapshotRequest(name="s", source_volume_id="v"),
    ),
    ("CREATE_DELETE_SNAPSHOT", "DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id="s")),
    ("LIST_SNAPSHOTS", "ListSnapshots", csi_pb2.ListSnapshotsRequest()),
    (
        "EXPAND_VOLUME",
        "ControllerExpandVolume",
        csi_pb2.ControllerExpandVolumeRequest(volume_id="v", capacity_range={"required_bytes": 1}),
    ),
    (
        "MODIFY_VOLUME",
        "ControllerModifyVolume",
        csi_pb2.ControllerModifyVolumeRequest(volume_id="v", mutable_parameters={"a": "b"}),
    ),
    ("GET_VOLUME", "ControllerGetVolume", csi_pb2.ControllerGetVolumeRequest(volume_id="v")),
]


@pytest.mark.parametrize(
    ("capability", "method", "request_"), ALL_OFF_CASES, ids=lambda v: v if isinstance(v, str) else ""
)
async def test_controller_rpc_without_its_capability_is_unimplemented(
    tmp_path: Path, capability: str, method: str, request_: Any
) -> None:
    caps = DEFAULT_CONTROLLER_CAPABILITIES - {capability}
    async with running(tmp_path, controller_capabilities=caps) as (driver, csi):
        details = await fails(getattr(csi.controller, method)(request_), grpc.StatusCode.UNIMPLEMENTED)
        assert capability in details
        assert driver.calls[-1].code == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize(
    ("capability", "method", "request_"),
    [
        ("STAGE_UNSTAGE_VOLUME", "NodeStageVolume", stage("v")),
        (
            "STAGE_UNSTAGE_VOLUME",
            "NodeUnstageVolume",
            csi_pb2.NodeUnstageVolumeRequest(volume_id="v", staging_target_path=STAGING),
        ),
        (
            "EXPAND_VOLUME",
            "NodeExpandVolume",
            csi_pb2.NodeExpandVolumeRequest(volume_id="v", volume_path=TARGET),
        ),
        (
            "GET_VOLUME_STATS",
            "NodeGetVolumeStats",
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="v", volume_path=TARGET),
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_node_rpc_without_its_capability_is_unimplemented(
    tmp_path: Path, capability: str, method: str, request_: Any
) -> None:
    async with running(tmp_path, node_capabilities=frozenset()) as (_, csi):
        details = await fails(getattr(csi.node, method)(request_), grpc.StatusCode.UNIMPLEMENTED)
        assert capability in details


async def test_without_stage_unstage_publish_needs_no_staging_path(tmp_path: Path) -> None:
    async with running(tmp_path, node_capabilities=frozenset()) as (driver, csi):
        vol = await new_volume(csi)
        await csi.node.NodePublishVolume(publish(vol, staging=""))
        assert list(driver.volumes[vol].published) == [TARGET]


async def test_node_only_expansion_grows_the_volume(tmp_path: Path) -> None:
    """No controller EXPAND_VOLUME but node EXPAND_VOLUME: the resizer's "trivial" path."""
    caps = DEFAULT_CONTROLLER_CAPABILITIES - {"EXPAND_VOLUME"}
    async with running(tmp_path, controller_capabilities=caps) as (driver, csi):
        vol = await new_volume(csi)
        await csi.node.NodeStageVolume(stage(vol))
        await csi.node.NodePublishVolume(publish(vol))
        await fails(
            csi.controller.ControllerExpandVolume(
                csi_pb2.ControllerExpandVolumeRequest(
                    volume_id=vol, capacity_range={"required_bytes": 2 * GiB}
                )
            ),
            grpc.StatusCode.UNIMPLEMENTED,
        )
        grown = await csi.node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(
                volume_id=vol, volume_path=TARGET, capacity_range={"required_bytes": 2 * GiB}
            )
        )
        assert grown.capacity_bytes == driver.volumes[vol].capacity == 2 * GiB


async def test_no_controller_service_and_no_node_service(tmp_path: Path) -> None:
    async with running(tmp_path, controller_service=False, node_service=False) as (_, csi):
        await fails(
            csi.controller.CreateVolume(csi_pb2.CreateVolumeRequest(name="v")), grpc.StatusCode.UNIMPLEMENTED
        )
        await fails(csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()), grpc.StatusCode.UNIMPLEMENTED)
        # Identity always answers, like a real plugin.
        assert (await csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())).name


async def test_unimplemented_methods_answer_unimplemented(csi: Stubs) -> None:
    await fails(
        csi.controller.GetSnapshot(csi_pb2.GetSnapshotRequest(snapshot_id="s")), grpc.StatusCode.UNIMPLEMENTED
    )
