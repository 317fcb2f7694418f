"""A small configurable CSI driver for tests: Identity, Controller and Node on a unix socket.

    driver = FakeDriver(name="test.csi.k8s.io", probe_ready=[False, True])
    async with CSIServer(tmp_path / "csi.sock", driver) as server:
        ...
        assert server.driver.calls_to("Probe")

Every call is recorded in `driver.calls`; `driver.errors[method] = grpc.StatusCode.X` makes a method
fail, `driver.delays[method] = seconds` makes it slow. Capabilities are given by enum value name.
`RecordingRecorder` collects what the CSI interceptor records. A stand-in until the test bed's CSI
driver (testbed.csidriver) is available to unit tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.message import Message

from proto import csi_pb2, csi_pb2_grpc

_PluginService = csi_pb2.PluginCapability.Service
_PluginExpansion = csi_pb2.PluginCapability.VolumeExpansion


@dataclass
class FakeDriver:
    """What the fake driver answers, and what it was asked."""

    name: str = "test.csi.k8s.io"
    vendor_version: str = "0.0.1"
    manifest: dict[str, str] = field(default_factory=dict)
    probe_ready: list[bool | None] = field(default_factory=lambda: [True])
    """Successive Probe answers (None: `ready` unset); the last one repeats."""
    plugin_capabilities: list[str] = field(
        default_factory=lambda: ["CONTROLLER_SERVICE", "VOLUME_ACCESSIBILITY_CONSTRAINTS", "ONLINE"]
    )
    """Service type names, or ONLINE/OFFLINE for volume expansion."""
    controller_capabilities: list[str] = field(
        default_factory=lambda: ["CREATE_DELETE_VOLUME", "PUBLISH_UNPUBLISH_VOLUME", "EXPAND_VOLUME"]
    )
    node_capabilities: list[str] = field(default_factory=lambda: ["STAGE_UNSTAGE_VOLUME", "EXPAND_VOLUME"])
    node_id: str = "node-1"
    max_volumes_per_node: int = 0
    topology: dict[str, str] = field(default_factory=dict)
    errors: dict[str, grpc.StatusCode] = field(default_factory=dict)
    """Method name (e.g. "CreateVolume") -> the status code it fails with."""
    delays: dict[str, float] = field(default_factory=dict)
    """Method name -> seconds to wait before answering."""
    calls: list[tuple[str, Message]] = field(default_factory=list)
    """(method name, request) for every call received, in order."""

    def calls_to(self, method: str) -> list[Message]:
        """The requests received by `method`."""
        return [req for name, req in self.calls if name == method]

    def next_ready(self) -> bool | None:
        ready = self.probe_ready[0]
        if len(self.probe_ready) > 1:
            self.probe_ready.pop(0)
        return ready


async def _answer(
    driver: FakeDriver,
    method: str,
    request: Message,
    context: grpc.aio.ServicerContext[Any, Any],
    make: Callable[[], Any],
) -> Any:
    driver.calls.append((method, request))
    delay = driver.delays.get(method)
    if delay:
        await asyncio.sleep(delay)
    code = driver.errors.get(method)
    if code is not None:
        await context.abort(code, f"injected {code.name} for {method}")
    return make()


class _Identity(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    async def GetPluginInfo(self, request: Any, context: Any) -> Any:
        d = self.driver

        def make() -> Any:
            return csi_pb2.GetPluginInfoResponse(
                name=d.name, vendor_version=d.vendor_version, manifest=d.manifest
            )

        return await _answer(d, "GetPluginInfo", request, context, make)

    async def GetPluginCapabilities(self, request: Any, context: Any) -> Any:
        def make() -> Any:
            caps = []
            for name in self.driver.plugin_capabilities:
                if name in ("ONLINE", "OFFLINE"):
                    expansion = _PluginExpansion(type=_PluginExpansion.Type.Value(name))
                    caps.append(csi_pb2.PluginCapability(volume_expansion=expansion))
                else:
                    caps.append(
                        csi_pb2.PluginCapability(service=_PluginService(type=_PluginService.Type.Value(name)))
                    )
            return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

        return await _answer(self.driver, "GetPluginCapabilities", request, context, make)

    async def Probe(self, request: Any, context: Any) -> Any:
        def make() -> Any:
            ready = self.driver.next_ready()
            if ready is None:
                return csi_pb2.ProbeResponse()
            return csi_pb2.ProbeResponse(ready={"value": ready})

        return await _answer(self.driver, "Probe", request, context, make)


class _Controller(csi_pb2_grpc.ControllerServicer):
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    async def ControllerGetCapabilities(self, request: Any, context: Any) -> Any:
        rpc = csi_pb2.ControllerServiceCapability.RPC
        caps = [
            csi_pb2.ControllerServiceCapability(rpc=rpc(type=rpc.Type.Value(n)))
            for n in self.driver.controller_capabilities
        ]
        return await _answer(
            self.driver,
            "ControllerGetCapabilities",
            request,
            context,
            lambda: csi_pb2.ControllerGetCapabilitiesResponse(capabilities=caps),
        )

    async def CreateVolume(self, request: Any, context: Any) -> Any:
        def make() -> Any:
            volume = csi_pb2.Volume(
                volume_id=request.name,
                capacity_bytes=request.capacity_range.required_bytes,
                volume_context=dict(request.parameters),
                content_source=(
                    request.volume_content_source if request.HasField("volume_content_source") else None
                ),
            )
            return csi_pb2.CreateVolumeResponse(volume=volume)

        return await _answer(self.driver, "CreateVolume", request, context, make)

    async def DeleteVolume(self, request: Any, context: Any) -> Any:
        return await _answer(self.driver, "DeleteVolume", request, context, csi_pb2.DeleteVolumeResponse)

    async def ControllerPublishVolume(self, request: Any, context: Any) -> Any:
        return await _answer(
            self.driver,
            "ControllerPublishVolume",
            request,
            context,
            lambda: csi_pb2.ControllerPublishVolumeResponse(publish_context={"device": "/dev/fake"}),
        )

    async def ControllerUnpublishVolume(self, request: Any, context: Any) -> Any:
        return await _answer(
            self.driver,
            "ControllerUnpublishVolume",
            request,
            context,
            csi_pb2.ControllerUnpublishVolumeResponse,
        )

    async def ControllerExpandVolume(self, request: Any, context: Any) -> Any:
        return await _answer(
            self.driver,
            "ControllerExpandVolume",
            request,
            context,
            lambda: csi_pb2.ControllerExpandVolumeResponse(
                capacity_bytes=request.capacity_range.required_bytes, node_expansion_required=True
            ),
        )

    async def ControllerModifyVolume(self, request: Any, context: Any) -> Any:
        return await _answer(
            self.driver, "ControllerModifyVolume", request, context, csi_pb2.ControllerModifyVolumeResponse
        )

    async def GetCapacity(self, request: Any, context: Any) -> Any:
        return await _answer(
            self.driver,
            "GetCapacity",
            request,
            context,
            lambda: csi_pb2.GetCapacityResponse(available_capacity=100 << 30),
        )


class _Node(csi_pb2_grpc.NodeServicer):
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver

    async def NodeGetInfo(self, request: Any, context: Any) -> Any:
        d = self.driver

        def make() -> Any:
            topology = csi_pb2.Topology(segments=d.topology) if d.topology else None
            return csi_pb2.NodeGetInfoResponse(
                node_id=d.node_id, max_volumes_per_node=d.max_volumes_per_node, accessible_topology=topology
            )

        return await _answer(d, "NodeGetInfo", request, context, make)

    async def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        rpc = csi_pb2.NodeServiceCapability.RPC
        caps = [
            csi_pb2.NodeServiceCapability(rpc=rpc(type=rpc.Type.Value(n)))
            for n in self.driver.node_capabilities
        ]
        return await _answer(
            self.driver,
            "NodeGetCapabilities",
            request,
            context,
            lambda: csi_pb2.NodeGetCapabilitiesResponse(capabilities=caps),
        )


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


class CSIServer:
    """Serves a `FakeDriver` on a unix socket; start/stop it as often as a test needs."""

    def __init__(self, path: Path | str, driver: FakeDriver | None = None) -> None:
        self.path = str(path)
        self.driver = driver if driver is not None else FakeDriver()
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        server = grpc.aio.server()
        csi_pb2_grpc.add_IdentityServicer_to_server(_Identity(self.driver), server)
        csi_pb2_grpc.add_ControllerServicer_to_server(_Controller(self.driver), server)
        csi_pb2_grpc.add_NodeServicer_to_server(_Node(self.driver), server)
        server.add_insecure_port(self.address)
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop at once (open calls are cancelled) and remove the socket, like a driver exiting."""
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
        _remove(self.path)

    async def __aenter__(self) -> CSIServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class RecordingRecorder:
    """An `OperationRecorder` that keeps (driver_name, method_name, grpc_status_code) per call."""

    def __init__(self) -> None:
        self.operations: list[tuple[str, str, str]] = []
        self.seconds: list[float] = []
        self.reconnects: list[str] = []

    def record_csi_operation(
        self, *, driver_name: str, method_name: str, grpc_status_code: str, seconds: float
    ) -> None:
        self.operations.append((driver_name, method_name, grpc_status_code))
        self.seconds.append(seconds)

    def record_csi_reconnect(self, *, driver_name: str) -> None:
        self.reconnects.append(driver_name)
