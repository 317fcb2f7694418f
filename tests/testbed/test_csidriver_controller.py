"""The test driver's Identity and Controller services, modelled on csi-sanity's cases, over a real socket."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto import csi_pb2
from testbed.csidriver import DriverConfig, GiB, Stubs, TestDriver, connect

Mode = csi_pb2.VolumeCapability.AccessMode
MOUNT = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)
)
BLOCK = csi_pb2.VolumeCapability(
    block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)
)
KEY = "topology.hostpath.csi/node"


@asynccontextmanager
async def running(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[TestDriver, Stubs]]:
    driver = TestDriver(DriverConfig(**config), endpoint=f"unix://{tmp_path}/csi.sock")
    async with driver.serve(), connect(driver.address) as stubs:
        yield driver, stubs


@pytest.fixture
async def csi(tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running(tmp_path) as (_, stubs):
        yield stubs


def create(name: str, size: int = 0, **fields: Any) -> csi_pb2.CreateVolumeRequest:
    fields.setdefault("volume_capabilities", [MOUNT])
    return csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size), **fields
    )


async def fails(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return str(err.value.details())


def topology(*nodes: str) -> list[csi_pb2.Topology]:
    return [csi_pb2.Topology(segments={KEY: n}) for n in nodes]


# --- Identity ---


async def test_get_plugin_info_names_the_driver(csi: Stubs) -> None:
    info = await csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "hostpath.csi.k8s.io"
    assert info.vendor_version


async def test_plugin_capabilities_default_and_switched_off(tmp_path: Path) -> None:
    async with running(tmp_path) as (driver, csi):
        caps = (await csi.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())).capabilities
        services = {c.service.type for c in caps if c.HasField("service")}
        assert services == {
            csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE,
            csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS,
        }
        assert [c.volume_expansion.type for c in caps if c.HasField("volume_expansion")] == [
            csi_pb2.PluginCapability.VolumeExpansion.ONLINE
        ]
        driver.config = DriverConfig(controller_service=False, topology=False, volume_expansion=None)
        caps = (await csi.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())).capabilities
        assert list(caps) == []
        await fails(
            csi.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest()),
            grpc.StatusCode.UNIMPLEMENTED,
        )


@pytest.mark.parametrize("ready", [True, False, None])
async def test_probe_answers_the_readiness_switch(tmp_path: Path, ready: bool | None) -> None:
    async with running(tmp_path, ready=ready) as (_, csi):
        answer = await csi.identity.Probe(csi_pb2.ProbeRequest())
        assert answer.HasField("ready") == (ready is not None)
        assert answer.ready.value == bool(ready)


# --- Controller: volumes ---


async def test_controller_capabilities_follow_the_config(tmp_path: Path) -> None:
    async with running(tmp_path, controller_capabilities={"CREATE_DELETE_VOLUME", "GET_CAPACITY"}) as (
        _,
        csi,
    ):
        caps = await csi.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
        rpc = csi_pb2.ControllerServiceCapability.RPC
        assert [c.rpc.type for c in caps.capabilities] == [rpc.CREATE_DELETE_VOLUME, rpc.GET_CAPACITY]


async def test_create_volume_twice_with_the_same_name_is_idempotent(tmp_path: Path) -> None:
    async with running(tmp_path) as (driver, csi):
        first = await csi.controller.CreateVolume(create("pvc-1", GiB, parameters={"kind": "fast"}))
        again = await csi.controller.CreateVolume(create("pvc-1", GiB, parameters={"kind": "fast"}))
        assert first.volume == again.volume
        assert first.volume.volume_context == {"kind": "fast"}
        assert [v.name for v in driver.volumes.values()] == ["pvc-1"]


async def test_create_volume_same_name_incompatible_is_already_exists(csi: Stubs) -> None:
    await csi.controller.CreateVolume(create("pvc-1", GiB, parameters={"kind": "fast"}))
    await fails(
        csi.controller.CreateVolume(create("pvc-1", GiB, parameters={"kind": "slow"})),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await fails(
        csi.controller.CreateVolume(create("pvc-1", 2 * GiB, parameters={"kind": "fast"})),
        grpc.StatusCode.ALREADY_EXISTS,
    )


@pytest.mark.parametrize(
    ("required", "limit", "expected"),
    [
        (0, 0, 1 * GiB),  # no range: the default size
        (3 * GiB, 0, 3 * GiB),
        (0, GiB // 2, GiB // 2),  # only a limit: default size capped by it
        (GiB, 2 * GiB, GiB),
        (2 * GiB, GiB, grpc.StatusCode.INVALID_ARGUMENT),
        (-1, 0, grpc.StatusCode.INVALID_ARGUMENT),
        (200 * GiB, 0, grpc.StatusCode.OUT_OF_RANGE),  # over the max volume size
    ],
)
async def test_create_volume_capacity_range(
    csi: Stubs, required: int, limit: int, expected: int | grpc.StatusCode
) -> None:
    request = create("pvc-1", required)
    request.capacity_range.limit_bytes = limit
    if isinstance(expected, grpc.StatusCode):
        await fails(csi.controller.CreateVolume(request), expected)
    else:
        assert (await csi.controller.CreateVolume(request)).volume.capacity_bytes == expected


async def test_capacity_is_accounted_per_segment(tmp_path: Path) -> None:
    nodes = {"node-1": {KEY: "node-1"}, "node-2": {KEY: "node-2"}}
    async with running(tmp_path, capacity=3 * GiB, nodes=nodes) as (_, csi):
        await csi.controller.CreateVolume(create("a", 2 * GiB))
        cap = await csi.controller.GetCapacity(
            csi_pb2.GetCapacityRequest(accessible_topology=topology("node-1")[0])
        )
        assert cap.available_capacity == GiB
        assert cap.maximum_volume_size.value == GiB
        everywhere = await csi.controller.GetCapacity(csi_pb2.GetCapacityRequest())
        assert everywhere.available_capacity == 4 * GiB
        pinned = create("b", 2 * GiB)
        pinned.accessibility_requirements.requisite.extend(topology("node-1"))
        await fails(csi.controller.CreateVolume(pinned), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_topology_picks_preferred_then_requisite_among_known_segments(tmp_path: Path) -> None:
    nodes = {"node-1": {KEY: "node-1"}, "node-2": {KEY: "node-2"}}
    async with running(tmp_path, capacity=GiB, nodes=nodes) as (driver, csi):
        first = create("a", GiB)
        first.accessibility_requirements.preferred.extend(topology("node-2"))
        vol = (await csi.controller.CreateVolume(first)).volume
        assert [dict(t.segments) for t in vol.accessible_topology] == [{KEY: "node-2"}]
        second = create("b", GiB)  # node-2 is now full: the requisite node-1 is used
        second.accessibility_requirements.preferred.extend(topology("node-2"))
        second.accessibility_requirements.requisite.extend(topology("node-2", "node-1"))
        vol = (await csi.controller.CreateVolume(second)).volume
        assert driver.volumes[vol.volume_id].segments == {KEY: "node-1"}
        unknown = create("c", GiB)
        unknown.accessibility_requirements.requisite.extend(topology("node-9"))
        await fails(csi.controller.CreateVolume(unknown), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_delete_volume_of_a_missing_volume_succeeds(tmp_path: Path) -> None:
    async with running(tmp_path) as (driver, csi):
        vol = (await csi.controller.CreateVolume(create("pvc-1"))).volume
        await csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id))
        await csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol.volume_id))
        await csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="never-existed"))
        assert driver.volumes == {}


async def test_controller_publish_and_unpublish(tmp_path: Path) -> None:
    nodes = {"node-1": {KEY: "node-1"}, "node-2": {KEY: "node-2"}}
    async with running(tmp_path, nodes=nodes, max_volumes_per_node=1) as (driver, csi):
        a = (await csi.controller.CreateVolume(create("a"))).volume.volume_id
        b = (await csi.controller.CreateVolume(create("b"))).volume.volume_id

        def publish(vol: str, node: str, *, readonly: bool = False) -> Any:
            return csi.controller.ControllerPublishVolume(
                csi_pb2.ControllerPublishVolumeRequest(
                    volume_id=vol, node_id=node, volume_capability=MOUNT, readonly=readonly
                )
            )

        first = await publish(a, "node-1")
        assert first.publish_context["device"].startswith("/dev/fake-")
        assert (await publish(a, "node-1")).publish_context == first.publish_context
        await fails(publish(a, "node-1", readonly=True), grpc.StatusCode.ALREADY_EXISTS)
        await fails(publish(a, "node-2"), grpc.StatusCode.FAILED_PRECONDITION)  # single-node mode
        await fails(publish(b, "node-1"), grpc.StatusCode.RESOURCE_EXHAUSTED)  # max volumes per node
        await fails(publish(a, "node-9"), grpc.StatusCode.NOT_FOUND)
        await fails(publish("missing", "node-1"), grpc.StatusCode.NOT_FOUND)
        assert driver.publications == {a: ["node-1"]}

        listed = await csi.controller.ListVolumes(csi_pb2.ListVolumesRequest())
        assert {e.volume.volume_id: list(e.status.published_node_ids) for e in listed.entries} == {
            a: ["node-1"],
            b: [],
        }
        unpublish = csi_pb2.ControllerUnpublishVolumeRequest(volume_id=a, node_id="node-1")
        await csi.controller.ControllerUnpublishVolume(unpublish)
        await csi.controller.ControllerUnpublishVolume(unpublish)
        await csi.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id="missing", node_id="node-1")
        )
        await fails(
            csi.controller.ControllerUnpublishVolume(
                csi_pb2.ControllerUnpublishVolumeRequest(volume_id=a, node_id="node-9")
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        assert driver.publications == {}


Req = csi_pb2


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("CreateVolume", Req.CreateVolumeRequest(volume_capabilities=[MOUNT])),
        ("CreateVolume", Req.CreateVolumeRequest(name="no-caps")),
        (
            "CreateVolume",
            Req.CreateVolumeRequest(name="no-mode", volume_capabilities=[csi_pb2.VolumeCapability(mount={})]),
        ),
        ("CreateVolume", Req.CreateVolumeRequest(name="both", volume_capabilities=[MOUNT, BLOCK])),
        ("DeleteVolume", Req.DeleteVolumeRequest()),
        (
            "ControllerPublishVolume",
            Req.ControllerPublishVolumeRequest(node_id="node-1", volume_capability=MOUNT),
        ),
        (
            "ControllerPublishVolume",
            Req.ControllerPublishVolumeRequest(volume_id="v", volume_capability=MOUNT),
        ),
        ("ControllerPublishVolume", Req.ControllerPublishVolumeRequest(volume_id="v", node_id="node-1")),
        ("ControllerUnpublishVolume", Req.ControllerUnpublishVolumeRequest(node_id="node-1")),
        ("ValidateVolumeCapabilities", Req.ValidateVolumeCapabilitiesRequest(volume_capabilities=[MOUNT])),
        ("ValidateVolumeCapabilities", Req.ValidateVolumeCapabilitiesRequest(volume_id="v")),
        ("ControllerExpandVolume", Req.ControllerExpandVolumeRequest(capacity_range={"required_bytes": GiB})),
        ("ControllerExpandVolume", Req.ControllerExpandVolumeRequest(volume_id="v")),
        ("ControllerModifyVolume", Req.ControllerModifyVolumeRequest(mutable_parameters={"iops": "10"})),
        ("ControllerModifyVolume", Req.ControllerModifyVolumeRequest(volume_id="v")),
        ("ControllerGetVolume", Req.ControllerGetVolumeRequest()),
        ("CreateSnapshot", Req.CreateSnapshotRequest(source_volume_id="v")),
        ("CreateSnapshot", Req.CreateSnapshotRequest(name="snap")),
        ("DeleteSnapshot", Req.DeleteSnapshotRequest()),
        ("ListVolumes", Req.ListVolumesRequest(max_entries=-1)),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__ + ":" + str(v).replace("\n", " ")[:40],
)
async def test_missing_required_fields_are_invalid_argument(csi: Stubs, method: str, request_: Any) -> None:
    details = await fails(getattr(csi.controller, method)(request_), grpc.StatusCode.INVALID_ARGUMENT)
    assert "missing" in details or "cannot" in details or "negative" in details


async def test_expand_volume(tmp_path: Path) -> None:
    async with running(tmp_path, capacity=10 * GiB) as (driver, csi):
        vol = (await csi.controller.CreateVolume(create("pvc-1", GiB))).volume

        def expand(size: int, volume_id: str = vol.volume_id) -> Any:
            return csi.controller.ControllerExpandVolume(
                csi_pb2.ControllerExpandVolumeRequest(
                    volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=size)
                )
            )

        grown = await expand(3 * GiB)
        assert (grown.capacity_bytes, grown.node_expansion_required) == (3 * GiB, True)
        assert driver.volumes[vol.volume_id].capacity == 3 * GiB
        assert (await expand(2 * GiB)).capacity_bytes == 3 * GiB  # never shrinks
        await fails(expand(11 * GiB), grpc.StatusCode.OUT_OF_RANGE)
        await fails(expand(2 * GiB, "missing"), grpc.StatusCode.NOT_FOUND)
        driver.config = DriverConfig(capacity=10 * GiB, node_expansion_required=False)
        assert not (await expand(4 * GiB)).node_expansion_required


async def test_snapshots_create_list_delete_and_restore(tmp_path: Path) -> None:
    async with running(tmp_path) as (driver, csi):
        src = (await csi.controller.CreateVolume(create("src", 2 * GiB))).volume.volume_id
        other = (await csi.controller.CreateVolume(create("other"))).volume.volume_id
        request = csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=src)
        snap = (await csi.controller.CreateSnapshot(request)).snapshot
        assert (snap.source_volume_id, snap.size_bytes, snap.ready_to_use) == (src, 2 * GiB, True)
        assert (await csi.controller.CreateSnapshot(request)).snapshot == snap
        await fails(
            csi.controller.CreateSnapshot(
                csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=other)
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        await fails(
            csi.controller.CreateSnapshot(
                csi_pb2.CreateSnapshotRequest(name="x", source_volume_id="missing")
            ),
            grpc.StatusCode.NOT_FOUND,
        )
        await csi.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="snap-2", source_volume_id=other)
        )

        listed = await csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest())
        assert len(listed.entries) == 2
        by_id = await csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id=snap.snapshot_id))
        assert [e.snapshot for e in by_id.entries] == [snap]
        by_src = await csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=src))
        assert [e.snapshot.snapshot_id for e in by_src.entries] == [snap.snapshot_id]
        none = await csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id="missing"))
        assert list(none.entries) == []

        restore = create("restored")
        restore.volume_content_source.snapshot.snapshot_id = snap.snapshot_id
        restored = (await csi.controller.CreateVolume(restore)).volume
        assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
        assert restored.capacity_bytes == 2 * GiB  # at least the snapshot's size
        assert driver.volumes[restored.volume_id].source_snapshot == snap.snapshot_id
        missing = create("from-nothing")
        missing.volume_content_source.snapshot.snapshot_id = "missing"
        await fails(csi.controller.CreateVolume(missing), grpc.StatusCode.NOT_FOUND)

        await csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        await csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id))
        assert snap.snapshot_id not in driver.snapshots


async def test_clone_from_volume(csi: Stubs) -> None:
    src = (await csi.controller.CreateVolume(create("src", 2 * GiB))).volume.volume_id
    clone = create("clone")
    clone.volume_content_source.volume.volume_id = src
    vol = (await csi.controller.CreateVolume(clone)).volume
    assert (vol.content_source.volume.volume_id, vol.capacity_bytes) == (src, 2 * GiB)
    assert (await csi.controller.CreateVolume(clone)).volume == vol
    too_small = create("small", GiB)
    too_small.volume_content_source.volume.volume_id = src
    await fails(csi.controller.CreateVolume(too_small), grpc.StatusCode.OUT_OF_RANGE)
    missing = create("clone-of-nothing")
    missing.volume_content_source.volume.volume_id = "missing"
    await fails(csi.controller.CreateVolume(missing), grpc.StatusCode.NOT_FOUND)


async def test_list_volumes_pages_and_rejects_bad_tokens(csi: Stubs) -> None:
    created = [(await csi.controller.CreateVolume(create(f"pvc-{i}"))).volume.volume_id for i in range(5)]
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await csi.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token)
        )
        seen += [e.volume.volume_id for e in page.entries]
        pages += 1
        token = page.next_token
        if not token:
            break
    assert (seen, pages) == (sorted(created), 3)
    for bad in ("not-a-number", "99"):
        await fails(
            csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(starting_token=bad)),
            grpc.StatusCode.ABORTED,
        )
        await fails(
            csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(starting_token=bad)),
            grpc.StatusCode.ABORTED,
        )


async def test_validate_volume_capabilities(csi: Stubs) -> None:
    vol = (await csi.controller.CreateVolume(create("pvc-1"))).volume.volume_id
    ok = await csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=vol, volume_capabilities=[MOUNT])
    )
    assert list(ok.confirmed.volume_capabilities) == [MOUNT]
    wrong = await csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=vol, volume_capabilities=[BLOCK])
    )
    assert not wrong.HasField("confirmed") and "mount" in wrong.message
    await fails(
        csi.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="missing", volume_capabilities=[MOUNT])
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_modify_and_get_volume(tmp_path: Path) -> None:
    async with running(tmp_path, accepted_mutable_parameters={"iops"}) as (driver, csi):
        vol = (await csi.controller.CreateVolume(create("pvc-1", mutable_parameters={"iops": "5"}))).volume
        await csi.controller.ControllerModifyVolume(
            csi_pb2.ControllerModifyVolumeRequest(volume_id=vol.volume_id, mutable_parameters={"iops": "9"})
        )
        assert driver.volumes[vol.volume_id].mutable_parameters == {"iops": "9"}
        await fails(
            csi.controller.ControllerModifyVolume(
                csi_pb2.ControllerModifyVolumeRequest(volume_id=vol.volume_id, mutable_parameters={"x": "1"})
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        got = await csi.controller.ControllerGetVolume(
            csi_pb2.ControllerGetVolumeRequest(volume_id=vol.volume_id)
        )
        assert got.volume == vol and not got.status.volume_condition.abnormal
        await fails(
            csi.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="missing")),
            grpc.StatusCode.NOT_FOUND,
        )
        driver.config = DriverConfig(
            controller_capabilities=driver.config.controller_capabilities - {"MODIFY_VOLUME"}
        )
        await fails(
            csi.controller.CreateVolume(create("pvc-2", mutable_parameters={"iops": "5"})),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
