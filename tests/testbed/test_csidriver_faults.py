"""Fault injection, crash/restart and the call log of the test driver, through real gRPC clients."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto import csi_pb2
from testbed.csidriver import DriverConfig, Fault, FaultKind, Stubs, TestDriver, connect
from testbed.csidriver.calls import STRIPPED

Mode = csi_pb2.VolumeCapability.AccessMode
MOUNT = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=Mode(mode=Mode.SINGLE_NODE_WRITER)
)
Code = grpc.StatusCode


def create(name: str, **fields: Any) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(name=name, volume_capabilities=[MOUNT], **fields)


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[TestDriver]:
    async with TestDriver(DriverConfig(), endpoint=f"unix://{tmp_path}/csi.sock").serve() as driver:
        yield driver


@pytest.fixture
async def csi(driver: TestDriver) -> AsyncIterator[Stubs]:
    async with connect(driver.address) as stubs:
        yield stubs


async def fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value.details()
    return err.value


def exists(path: str) -> bool:
    return os.path.exists(path)


def names(driver: TestDriver) -> list[str]:
    return sorted(v.name for v in driver.volumes.values())


async def test_delay_fault_answers_late_but_normally(driver: TestDriver, csi: Stubs) -> None:
    driver.faults.add("CreateVolume", "delay", delay=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await csi.controller.CreateVolume(create("pvc-1"))
    assert loop.time() - t0 >= 0.2
    assert names(driver) == ["pvc-1"]
    assert (driver.calls[-1].fault, driver.calls[-1].code) == ("delay", Code.OK)
    assert driver.calls[-1].duration >= 0.2


async def test_error_fault_answers_its_code_and_does_no_work(driver: TestDriver, csi: Stubs) -> None:
    driver.faults.add(
        "CreateVolume", FaultKind.ERROR, code=Code.RESOURCE_EXHAUSTED, message="pool full", count=1
    )
    err = await fails(csi.controller.CreateVolume(create("pvc-1")), Code.RESOURCE_EXHAUSTED)
    assert err.details() == "pool full"
    assert names(driver) == []
    await csi.controller.CreateVolume(create("pvc-1"))  # the single-shot fault is used up
    assert names(driver) == ["pvc-1"]
    assert [c.code for c in driver.calls.of("CreateVolume")] == [Code.RESOURCE_EXHAUSTED, Code.OK]


async def test_count_limited_faults_expire(driver: TestDriver, csi: Stubs) -> None:
    fault = driver.faults.add("Probe", "error", code=Code.UNAVAILABLE, count=2)
    for _ in range(2):
        await fails(csi.identity.Probe(csi_pb2.ProbeRequest()), Code.UNAVAILABLE)
    assert (await csi.identity.Probe(csi_pb2.ProbeRequest())).ready.value
    assert (fault.hits, fault.count, len(driver.faults)) == (2, 0, 0)
    unlimited = driver.faults.add("Probe", "error", code=Code.INTERNAL)
    for _ in range(3):
        await fails(csi.identity.Probe(csi_pb2.ProbeRequest()), Code.INTERNAL)
    assert unlimited.hits == 3
    driver.faults.clear()
    await csi.identity.Probe(csi_pb2.ProbeRequest())


async def test_match_limits_a_fault_to_some_requests(driver: TestDriver, csi: Stubs) -> None:
    driver.faults.add("CreateVolume", "error", code=Code.INTERNAL, match={"name": "pvc-bad"})
    driver.faults.add("CreateVolume", "error", code=Code.ABORTED, match={"parameters.type": "slow"})
    driver.faults.add(
        "*", "error", code=Code.DATA_LOSS, match=lambda r: getattr(r, "name", "") == "pvc-doomed"
    )
    await fails(csi.controller.CreateVolume(create("pvc-bad")), Code.INTERNAL)
    await fails(csi.controller.CreateVolume(create("pvc-2", parameters={"type": "slow"})), Code.ABORTED)
    await fails(csi.controller.CreateVolume(create("pvc-doomed")), Code.DATA_LOSS)
    await csi.controller.CreateVolume(create("pvc-good", parameters={"type": "fast"}))
    assert names(driver) == ["pvc-good"]


async def test_wildcard_fault_applies_to_every_method(driver: TestDriver, csi: Stubs) -> None:
    driver.faults.add("*", "error", code=Code.UNAVAILABLE, count=2)
    await fails(csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest()), Code.UNAVAILABLE)
    await fails(csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()), Code.UNAVAILABLE)
    await csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())


async def test_hang_never_answers_until_the_client_gives_up(driver: TestDriver, csi: Stubs) -> None:
    driver.faults.add("CreateVolume", "hang", count=1)
    await fails(csi.controller.CreateVolume(create("pvc-1"), timeout=0.2), Code.DEADLINE_EXCEEDED)
    async with asyncio.timeout(5):
        await driver.calls.wait_for("CreateVolume", finished=True)
    assert (driver.calls[-1].fault, driver.calls[-1].code) == ("hang", Code.CANCELLED)
    assert names(driver) == []


async def test_succeed_then_timeout_creates_the_volume_but_loses_the_answer(
    driver: TestDriver, csi: Stubs
) -> None:
    driver.faults.add("CreateVolume", "succeed_then_timeout", count=1)
    await fails(csi.controller.CreateVolume(create("pvc-1"), timeout=0.2), Code.DEADLINE_EXCEEDED)
    assert names(driver) == ["pvc-1"]  # the backend did the work: a provisioner that forgets would leak it
    [leaked] = driver.volumes
    retried = await csi.controller.CreateVolume(create("pvc-1"))
    assert retried.volume.volume_id == leaked


async def test_succeed_then_timeout_can_answer_deadline_exceeded_itself(
    driver: TestDriver, csi: Stubs
) -> None:
    driver.faults.add("DeleteVolume", "succeed_then_timeout", timeout=0.05, message="lost")
    vol = (await csi.controller.CreateVolume(create("pvc-1"))).volume.volume_id
    err = await fails(
        csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=vol)), Code.DEADLINE_EXCEEDED
    )
    assert err.details() == "lost"
    assert driver.volumes == {}


async def test_crash_fault_restarts_on_the_same_socket_keeping_state(driver: TestDriver, csi: Stubs) -> None:
    vol = (await csi.controller.CreateVolume(create("pvc-1"))).volume.volume_id
    driver.faults.add("ListVolumes", "crash", count=1, restart_after=0.2)
    await fails(csi.controller.ListVolumes(csi_pb2.ListVolumesRequest()), Code.UNAVAILABLE)
    assert driver.crashes == 1
    async with asyncio.timeout(5):
        await driver.wait_serving()
    assert exists(driver.address.removeprefix("unix://"))
    listed = await csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(), wait_for_ready=True, timeout=5)
    assert [e.volume.volume_id for e in listed.entries] == [vol]
    assert driver.starts == 2


async def test_crash_losing_state_comes_back_empty(driver: TestDriver, csi: Stubs) -> None:
    old = (await csi.controller.CreateVolume(create("pvc-1"))).volume.volume_id
    driver.faults.add("Probe", "crash", count=1, restart_after=0.05, keep_state=False)
    await fails(csi.identity.Probe(csi_pb2.ProbeRequest()), Code.UNAVAILABLE)
    async with asyncio.timeout(5):
        await driver.wait_serving()
    assert driver.volumes == {}
    new = (
        await csi.controller.CreateVolume(create("pvc-1"), wait_for_ready=True, timeout=5)
    ).volume.volume_id
    assert new != old  # ids are never reused, even across a state loss


async def test_crash_without_restart_removes_the_socket_until_restarted(tmp_path: Path) -> None:
    driver = TestDriver(endpoint=f"unix://{tmp_path}/csi.sock")
    socket = str(tmp_path / "csi.sock")
    async with driver.serve(), connect(driver.address) as csi:
        await csi.controller.CreateVolume(create("pvc-1"))
        driver.faults.add("CreateVolume", "hang")
        in_flight = csi.controller.CreateVolume(create("pvc-2"), timeout=5)
        hung = asyncio.ensure_future(in_flight)
        async with asyncio.timeout(5):
            await driver.calls.wait_for("CreateVolume", 2)
        await driver.crash()
        await fails(hung, Code.UNAVAILABLE)  # the in-flight call dies with the driver
        assert not driver.serving and not exists(socket)
        await fails(csi.identity.Probe(csi_pb2.ProbeRequest(), timeout=0.2), Code.UNAVAILABLE)
        driver.faults.clear()
        await driver.restart()
        assert exists(socket)
        await csi.identity.Probe(csi_pb2.ProbeRequest(), wait_for_ready=True, timeout=5)
        assert names(driver) == ["pvc-1"]
    assert not exists(socket)


async def test_stop_cancels_a_pending_restart(tmp_path: Path) -> None:
    driver = TestDriver(endpoint=f"unix://{tmp_path}/csi.sock")
    await driver.start()
    await driver.crash(restart_after=30)
    await driver.stop()  # must not leave the restart timer running (the conftest checks)
    assert not driver.serving


async def test_call_log_counts_and_strips_secrets_in_dumps(driver: TestDriver, csi: Stubs) -> None:
    await csi.controller.CreateVolume(create("pvc-1", secrets={"password": "hunter2"}))
    await csi.identity.Probe(csi_pb2.ProbeRequest())
    await csi.identity.Probe(csi_pb2.ProbeRequest())
    assert driver.calls.counts == {"CreateVolume": 1, "Probe": 2}
    [call] = driver.calls.of("CreateVolume")
    assert isinstance(call.request, csi_pb2.CreateVolumeRequest)
    assert call.ok and call.request.secrets["password"] == "hunter2"
    dumped = call.as_dict()
    assert dumped["request"]["secrets"] == STRIPPED and dumped["request"]["name"] == "pvc-1"
    assert "hunter2" not in str(driver.dump())
    driver.calls.clear()
    assert (len(driver.calls), driver.calls.counts) == (0, {})


def test_fault_rules_are_validated() -> None:
    driver = TestDriver()
    with pytest.raises(ValueError, match="unknown CSI method"):
        driver.faults.add("CreateVolumes", "error")
    with pytest.raises(ValueError):
        driver.faults.add("CreateVolume", "explode")
    fault = Fault.from_dict({"method": "CreateVolume", "kind": "error", "code": "aborted", "count": 1})
    assert (fault.kind, fault.code, fault.count) == (FaultKind.ERROR, Code.ABORTED, 1)
    with pytest.raises(ValueError, match="unknown fault fields"):
        Fault.from_dict({"method": "CreateVolume", "kind": "error", "colour": "red"})
