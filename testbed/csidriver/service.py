"""Service base: the plugin handle and the checks every CSI RPC handler shares.

Handlers are plain synchronous methods named like the RPC (``CreateVolume(request)``), returning the
response message or raising `CsiError`; the server layer (`testbed.csidriver.server`) adds call
recording and fault injection around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import grpc

from proto import csi_pb2
from testbed.csidriver.config import DriverConfig
from testbed.csidriver.state import CsiError, DriverState, require

AccessMode = csi_pb2.VolumeCapability.AccessMode
SINGLE_NODE_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
_NEEDS_MULTI_WRITER_CAP = frozenset(
    {AccessMode.SINGLE_NODE_SINGLE_WRITER, AccessMode.SINGLE_NODE_MULTI_WRITER}
)


class Plugin(Protocol):
    """What the handlers need from the driver: its current config, backend and readiness."""

    @property
    def config(self) -> DriverConfig: ...

    @property
    def state(self) -> DriverState: ...

    @property
    def ready(self) -> bool | None: ...


class Service:
    """Base of the Identity, Controller and Node handlers."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin

    @property
    def config(self) -> DriverConfig:
        """The driver's current configuration (tests may replace it between calls)."""
        return self.plugin.config

    @property
    def state(self) -> DriverState:
        """The backend."""
        return self.plugin.state

    def need_controller(self, capability: str, method: str) -> None:
        """UNIMPLEMENTED unless the controller service and `capability` are on."""
        if not self.config.controller_service:
            raise CsiError(grpc.StatusCode.UNIMPLEMENTED, f"{method}: the driver has no controller service")
        if capability and capability not in self.config.controller_capabilities:
            raise CsiError(
                grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported: no {capability} capability"
            )

    def need_node(self, capability: str, method: str) -> None:
        """UNIMPLEMENTED unless the node service and `capability` are on."""
        if not self.config.node_service:
            raise CsiError(grpc.StatusCode.UNIMPLEMENTED, f"{method}: the driver has no node service")
        if capability and capability not in self.config.node_capabilities:
            raise CsiError(
                grpc.StatusCode.UNIMPLEMENTED, f"{method} is not supported: no node {capability} capability"
            )

    @staticmethod
    def check_capability(cap: csi_pb2.VolumeCapability, capabilities: frozenset[str]) -> tuple[str, int]:
        """Validate one VolumeCapability; returns (access type "block"/"mount", access mode)."""
        access_type = cap.WhichOneof("access_type")
        require(access_type, "volume capability access_type (block or mount) missing in request")
        mode = cap.access_mode.mode
        require(mode != AccessMode.UNKNOWN, "volume capability access_mode missing in request")
        if mode in _NEEDS_MULTI_WRITER_CAP and "SINGLE_NODE_MULTI_WRITER" not in capabilities:
            raise CsiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"access mode {AccessMode.Mode.Name(mode)} needs the SINGLE_NODE_MULTI_WRITER capability",
            )
        assert access_type is not None
        return access_type, mode

    def check_mutable_parameters(self, params: Mapping[str, str]) -> None:
        """INVALID_ARGUMENT for mutable parameter names outside `accepted_mutable_parameters`."""
        accepted = self.config.accepted_mutable_parameters
        unsupported = sorted(k for k in params if accepted and k not in accepted)
        if unsupported:
            raise CsiError(
                grpc.StatusCode.INVALID_ARGUMENT, f"unsupported mutable parameters: {', '.join(unsupported)}"
            )
