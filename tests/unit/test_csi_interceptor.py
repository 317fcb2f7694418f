"""The CSI call interceptor records every call and traces it at --v=5 without secrets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_server import CSIServer, FakeDriver, RecordingRecorder

from common import logging
from common.csi import CallInterceptor, CSIConnection
from proto import csi_pb2

SECRET = "t0p-s3cr3t-value"
DRIVER = "test.csi.k8s.io"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logging.configure(verbosity=5, fmt="text", stream=stream, console=False)
    yield stream
    logging.configure(verbosity=0, fmt="text", console=False)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[CSIServer]:
    async with CSIServer(tmp_path / "csi.sock", FakeDriver(name=DRIVER)) as srv:
        yield srv


def _create_request() -> Any:
    return csi_pb2.CreateVolumeRequest(
        name="pvc-42", parameters={"tier": "gold"}, secrets={"password": SECRET}
    )


async def test_calls_are_recorded_with_method_code_and_driver(server: CSIServer) -> None:
    recorder = RecordingRecorder()
    server.driver.errors["DeleteVolume"] = grpc.StatusCode.NOT_FOUND
    async with await CSIConnection.connect(server.address, call_timeout=5, recorder=recorder) as conn:
        assert await conn.probe()
        await conn.plugin_info()
        await conn.controller.CreateVolume(_create_request(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError):
            await conn.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="v"), timeout=5)
    assert recorder.operations == [
        ("unknown-driver", "/csi.v1.Identity/Probe", "OK"),
        ("unknown-driver", "/csi.v1.Identity/GetPluginInfo", "OK"),
        (DRIVER, "/csi.v1.Controller/CreateVolume", "OK"),
        (DRIVER, "/csi.v1.Controller/DeleteVolume", "NotFound"),
    ]
    assert all(seconds >= 0 for seconds in recorder.seconds)


async def test_deadline_is_recorded_as_deadline_exceeded(server: CSIServer) -> None:
    recorder = RecordingRecorder()
    server.driver.delays["ControllerPublishVolume"] = 0.5
    async with await CSIConnection.connect(server.address, call_timeout=5, recorder=recorder) as conn:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await conn.controller.ControllerPublishVolume(
                csi_pb2.ControllerPublishVolumeRequest(), timeout=0.02
            )
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert recorder.operations == [
        ("unknown-driver", "/csi.v1.Controller/ControllerPublishVolume", "DeadlineExceeded")
    ]


def _details(method: str) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(method, None, None, None, None)


async def test_non_grpc_failure_is_recorded_as_unknown_non_grpc() -> None:
    recorder = RecordingRecorder()
    interceptor = CallInterceptor(driver_name=lambda: "", recorder=recorder)

    async def continuation(details: Any, request: Any) -> Any:
        raise RuntimeError("could not serialize")

    with pytest.raises(RuntimeError):
        await interceptor.intercept_unary_unary(continuation, _details("/csi.v1.Node/NodeGetInfo"), None)
    assert recorder.operations == [("unknown-driver", "/csi.v1.Node/NodeGetInfo", "unknown-non-grpc")]


async def test_cancelled_call_is_recorded_as_canceled() -> None:
    recorder = RecordingRecorder()
    interceptor = CallInterceptor(driver_name=lambda: DRIVER, recorder=recorder)
    started = asyncio.Event()

    async def continuation(details: Any, request: Any) -> Any:
        started.set()
        await asyncio.Event().wait()

    call = asyncio.create_task(
        interceptor.intercept_unary_unary(continuation, _details(b"/csi.v1.Controller/CreateVolume"), None),
        name="intercepted call",
    )
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert recorder.operations == [(DRIVER, "/csi.v1.Controller/CreateVolume", "Canceled")]


async def test_v5_trace_shows_requests_and_responses_but_never_secrets(
    server: CSIServer, log_output: io.StringIO
) -> None:
    server.driver.errors["ControllerModifyVolume"] = grpc.StatusCode.INVALID_ARGUMENT
    async with await CSIConnection.connect(server.address, call_timeout=5) as conn:
        await conn.controller.CreateVolume(_create_request(), timeout=5)
        modify = csi_pb2.ControllerModifyVolumeRequest(volume_id="pvc-42", secrets={"token": SECRET})
        with pytest.raises(grpc.aio.AioRpcError):
            await conn.controller.ControllerModifyVolume(modify, timeout=5)
    text = log_output.getvalue()
    assert SECRET not in text
    lines = [line for line in text.splitlines() if "GRPC" in line]
    assert '"GRPC call" method="/csi.v1.Controller/CreateVolume"' in lines[0]
    assert "pvc-42" in lines[0]
    assert "gold" in lines[0]
    assert "***stripped***" in lines[0]
    assert '"GRPC response" method="/csi.v1.Controller/CreateVolume"' in lines[1]
    assert "volume_id" in lines[1]
    assert '"GRPC call" method="/csi.v1.Controller/ControllerModifyVolume"' in lines[2]
    assert '"GRPC error" method="/csi.v1.Controller/ControllerModifyVolume"' in lines[3]
    assert "code = InvalidArgument" in lines[3]


async def test_response_log_is_capped_by_max_log_length(server: CSIServer, log_output: io.StringIO) -> None:
    async with await CSIConnection.connect(server.address, call_timeout=5, max_log_length=10) as conn:
        await conn.plugin_info()
    response = next(line for line in log_output.getvalue().splitlines() if "GRPC response" in line)
    assert "log capped to 10 chars" in response
    assert DRIVER not in response


async def test_nothing_is_traced_below_v5(server: CSIServer) -> None:
    stream = io.StringIO()
    logging.configure(verbosity=4, fmt="text", stream=stream, console=False)
    try:
        async with await CSIConnection.connect(server.address, call_timeout=5) as conn:
            await conn.controller.CreateVolume(_create_request(), timeout=5)
    finally:
        logging.configure(verbosity=0, fmt="text", console=False)
    assert "GRPC" not in stream.getvalue()
