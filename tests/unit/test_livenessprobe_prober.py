"""The prober behind livenessprobe's /healthz, against the CSI test driver on a unix socket in tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.csi import CSIConnection
from common.metrics import Metrics
from proto import csi_pb2
from sidecars.livenessprobe.controller import NOT_READY, Prober, error_verdict, probe_verdict
from testbed.csidriver import TestDriver

DEADLINE = "rpc error: code = DeadlineExceeded desc = context deadline exceeded"


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[TestDriver]:
    test_driver = TestDriver()
    async with test_driver.serve(f"unix://{tmp_path}/csi.sock"):
        yield test_driver


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process_collector=False)


@pytest.fixture
async def prober(driver: TestDriver, metrics: Metrics) -> AsyncIterator[Prober]:
    """What livenessprobe's main builds: connect, GetPluginInfo, then probe with a 0.3 s timeout."""
    conn = await CSIConnection.connect(driver.address, call_timeout=None, connect_timeout=5, recorder=metrics)
    await conn.plugin_info()
    probe = Prober(conn, timeout=0.3, recorder=metrics)
    try:
        yield probe
    finally:
        await probe.close()


# --- pure verdicts --------------------------------------------------------------------------------


def test_probe_verdicts() -> None:
    assert probe_verdict(csi_pb2.ProbeResponse()) == (200, "ok")  # no `ready` field: ready
    ready = csi_pb2.ProbeResponse()
    ready.ready.value = True
    assert probe_verdict(ready) == (200, "ok")
    ready.ready.value = False
    assert probe_verdict(ready) == (500, NOT_READY)


def test_error_verdicts_use_go_status_text() -> None:
    def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)

    assert error_verdict(error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")) == (500, DEADLINE)
    assert error_verdict(error(grpc.StatusCode.INTERNAL, "disk on fire")) == (
        500,
        "rpc error: code = Internal desc = disk on fire",
    )


# --- against the test driver --------------------------------------------------------------------


async def test_ready_not_ready_and_unset(prober: Prober, driver: TestDriver) -> None:
    assert await prober.healthz() == (200, "ok")
    driver.ready = False
    assert await prober.healthz() == (500, NOT_READY)
    driver.ready = None
    assert await prober.healthz() == (200, "ok")
    assert driver.calls.counts["Probe"] == 3


async def test_driver_error_is_500_with_its_status(prober: Prober, driver: TestDriver) -> None:
    driver.faults.add("Probe", "error", code=grpc.StatusCode.FAILED_PRECONDITION, message="no disk", count=1)
    assert await prober.healthz() == (500, "rpc error: code = FailedPrecondition desc = no disk")
    assert await prober.healthz() == (200, "ok")
    assert prober.redials == 0  # an answer, even a bad one, proves the channel works


async def test_hung_driver_times_out_and_the_channel_is_replaced(prober: Prober, driver: TestDriver) -> None:
    driver.faults.add("Probe", "hang", count=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await prober.healthz() == (500, DEADLINE)
    assert 0.3 <= loop.time() - started < 0.3 * 1.2
    assert prober.redials == 1
    assert await prober.healthz() == (200, "ok")  # the new channel reaches the driver


async def test_concurrent_probes_share_one_channel_and_one_redial(prober: Prober, driver: TestDriver) -> None:
    results = await asyncio.gather(*(prober.healthz() for _ in range(20)))
    assert results == [(200, "ok")] * 20
    assert driver.calls.counts["Probe"] == 20
    assert prober.redials == 0
    driver.faults.add("Probe", "hang", count=10)
    results = await asyncio.gather(*(prober.healthz() for _ in range(10)))
    assert results == [(500, DEADLINE)] * 10
    assert prober.redials == 1  # ten timeouts on one channel retire it once


async def test_driver_restart_is_followed(prober: Prober, driver: TestDriver) -> None:
    assert await prober.healthz() == (200, "ok")
    await driver.crash()
    status, body = await prober.healthz()  # down: the probe waits its timeout for the driver
    assert status == 500 and body.startswith("rpc error: code = ")
    await driver.start()
    assert await prober.healthz() == (200, "ok")
    assert driver.starts == 2


async def test_driver_back_within_the_timeout_answers_ok(
    prober: Prober, driver: TestDriver, metrics: Metrics
) -> None:
    prober.timeout = 2.0
    await driver.crash(restart_after=0.2)
    assert await prober.healthz() == (200, "ok")  # waited for the restarted driver, as a fresh dial would


async def test_probes_are_recorded_under_the_driver_name(prober: Prober, metrics: Metrics) -> None:
    await prober.healthz()
    text = metrics.render()[0].decode()
    assert (
        'csi_sidecar_operations_seconds_count{driver_name="hostpath.csi.k8s.io",grpc_status_code="OK",'
        'method_name="/csi.v1.Identity/Probe"} 1\n' in text
    )
    assert (
        'csi_sidecar_operations_seconds_count{driver_name="unknown-driver",grpc_status_code="OK",'
        'method_name="/csi.v1.Identity/GetPluginInfo"} 1\n' in text
    )


async def test_unavailable_from_a_connected_driver_is_its_answer(prober: Prober, driver: TestDriver) -> None:
    """Only a call the transport lost is sent again; a driver answering UNAVAILABLE gets a 500."""
    driver.faults.add("Probe", "error", code=grpc.StatusCode.UNAVAILABLE, message="offline", count=1)
    assert await prober.healthz() == (500, "rpc error: code = Unavailable desc = offline")
    assert driver.calls.counts["Probe"] == 1
