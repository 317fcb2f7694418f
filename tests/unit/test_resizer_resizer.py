"""csi-resizer's resizers: the ControllerExpandVolume request against the test driver, the trivial one."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_resizer_fakes import DRIVER, FakeKube, volume

from common.csi import CSIConnection, code_name
from common.kube.resources import SECRETS
from proto import csi_pb2
from sidecars.resizer.resizer import (
    CSIResizer,
    ResizeError,
    TrivialResizer,
    access_mode,
    volume_capability,
)
from testbed.csidriver import DriverConfig, GiB, TestDriver, connect

Mode = csi_pb2.VolumeCapability.AccessMode


@pytest.mark.parametrize(
    ("modes", "multi_writer", "expected"),
    [
        (["ReadWriteOnce"], False, Mode.SINGLE_NODE_WRITER),
        (["ReadWriteOnce"], True, Mode.SINGLE_NODE_MULTI_WRITER),
        (["ReadWriteOncePod"], False, Mode.SINGLE_NODE_WRITER),
        (["ReadWriteOncePod"], True, Mode.SINGLE_NODE_SINGLE_WRITER),
        (["ReadWriteMany", "ReadOnlyMany"], True, Mode.MULTI_NODE_MULTI_WRITER),
        (["ReadOnlyMany"], False, Mode.MULTI_NODE_READER_ONLY),
    ],
)
def test_access_modes_as_csi_lib_utils(modes: list[str], multi_writer: bool, expected: int) -> None:
    assert access_mode(modes, single_node_multi_writer=multi_writer) == expected


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (["ReadWriteOncePod", "ReadWriteOnce"], "ReadWriteOncePod with other access modes"),
        (["ReadOnlyMany", "ReadWriteOnce"], "ReadOnlyMany and ReadWriteOnce"),
        ([], "unsupported AccessMode combination"),
    ],
)
def test_impossible_access_modes(modes: list[str], message: str) -> None:
    with pytest.raises(ResizeError, match=message):
        access_mode(modes, single_node_multi_writer=False)


def test_volume_capability_mount_and_block() -> None:
    pv = volume()
    pv["spec"]["mountOptions"] = ["noatime"]
    mount = volume_capability(pv, single_node_multi_writer=False)
    assert (mount.mount.fs_type, list(mount.mount.mount_flags)) == ("xfs", ["noatime"])
    assert mount.access_mode.mode == Mode.SINGLE_NODE_WRITER
    pv["spec"]["volumeMode"] = "Block"
    block = volume_capability(pv, single_node_multi_writer=True)
    assert block.WhichOneof("access_type") == "block"
    assert block.access_mode.mode == Mode.SINGLE_NODE_MULTI_WRITER


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[TestDriver]:
    test_driver = TestDriver(DriverConfig(max_volume_size=10 * GiB))
    async with test_driver.serve(f"unix://{tmp_path}/csi.sock"):
        yield test_driver


@pytest.fixture
async def conn(driver: TestDriver) -> AsyncIterator[CSIConnection]:
    connection = await CSIConnection.connect(driver.address, call_timeout=5.0)
    yield connection
    await connection.close()


async def _create_volume(driver: TestDriver) -> str:
    async with connect(driver.address) as stubs:
        rsp = await stubs.controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name="pvc-1",
                capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                volume_capabilities=[volume_capability(volume(), single_node_multi_writer=True)],
            )
        )
    return str(rsp.volume.volume_id)


def _pv(volume_id: str, **csi: Any) -> dict[str, Any]:
    return volume("1Gi", volumeHandle=volume_id, **csi)


async def test_csi_resizer_expands_with_capability_and_secret(
    driver: TestDriver, conn: CSIConnection
) -> None:
    kube = FakeKube()
    kube.put(
        SECRETS,
        {"metadata": {"name": "s", "namespace": "ns"}, "data": {"k": base64.b64encode(b"v").decode()}},
    )
    resizer = CSIResizer(name=DRIVER, csi=conn, kube=kube.client(), timeout=5.0)
    volume_id = await _create_volume(driver)
    pv = _pv(volume_id, controllerExpandSecretRef={"name": "s", "namespace": "ns"})
    assert await resizer.resize(pv, "1.5Gi") == ("1536Mi", True)
    (call,) = driver.calls.of("ControllerExpandVolume")
    request = call.request
    assert request.capacity_range.required_bytes == 1536 * 1024**2
    assert dict(request.secrets) == {"k": "v"}
    assert request.volume_capability.mount.fs_type == "xfs"
    assert request.volume_capability.access_mode.mode == Mode.SINGLE_NODE_MULTI_WRITER  # driver has the cap
    assert driver.volumes[volume_id].capacity == 1536 * 1024**2
    # SINGLE_NODE_MULTI_WRITER is asked before every expansion, as upstream does.
    before = driver.calls.counts["ControllerGetCapabilities"]
    await resizer.resize(pv, "2Gi")
    assert driver.calls.counts["ControllerGetCapabilities"] == before + 1


async def test_csi_resizer_errors(driver: TestDriver, conn: CSIConnection) -> None:
    resizer = CSIResizer(name=DRIVER, csi=conn, kube=FakeKube().client(), timeout=5.0)
    volume_id = await _create_volume(driver)
    with pytest.raises(grpc.RpcError) as too_big:
        await resizer.resize(_pv(volume_id), "100Gi")
    assert code_name(too_big.value) == "OutOfRange"
    missing = _pv(volume_id, controllerExpandSecretRef={"name": "gone", "namespace": "ns"})
    with pytest.raises(
        ResizeError, match='error getting secret gone in namespace ns: secrets "gone" not found'
    ):
        await resizer.resize(missing, "2Gi")
    with pytest.raises(ResizeError, match="empty volume handle"):
        await resizer.resize(_pv(""), "2Gi")
    not_csi = _pv(volume_id)
    del not_csi["spec"]["csi"]
    with pytest.raises(ResizeError, match="volume pv-1 is not migrated to CSI"):
        await resizer.resize(not_csi, "2Gi")
    assert not resizer.can_support(not_csi)
    assert resizer.can_support(_pv(volume_id))
    assert not resizer.can_support(volume(driver="other"))


async def test_trivial_resizer_makes_no_call() -> None:
    resizer = TrivialResizer(name=DRIVER)
    assert resizer.controller_expansion is False
    assert await resizer.resize(volume(), "3Gi") == ("3Gi", True)
