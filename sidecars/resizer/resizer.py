"""Resizers: how a volume is grown — by the driver's controller, or (trivially) left to the node.

`CSIResizer` is upstream's `csiResizer`: ControllerExpandVolume with `capacity_range.required_bytes`,
the PV's controller-expand secret and a volume capability built from the PV (its access mode depends
on the driver's SINGLE_NODE_MULTI_WRITER capability, asked before every expansion as upstream does).
`TrivialResizer` is used when the controller lacks EXPAND_VOLUME but the node has it: it makes no call,
returns the requested size and says the node must finish (fs_resize_required).

Errors from the driver are raised as the gRPC errors they are (the controller classifies them with
`common.csi.errors`); anything that fails before the call is a `ResizeError`. Two answers are not
taken as upstream takes them (it records whatever capacity comes back): no `capacity_bytes` (the
spec requires it) means the requested size, or the recorded one if larger; less than requested is
a `ResizeError` — the volume did not grow as asked, and recording a smaller capacity would end the
resize as a success.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from common.csi import CSIConnection, capability
from common.kube.client import ApiError, KubeClient
from common.kube.resources import SECRETS
from common.quantity import QuantityError, format_quantity, to_bytes
from proto import csi_pb2


class ResizeError(Exception):
    """A resize that failed before (or instead of) the CSI call; never final (retried with backoff)."""


class Resizer(Protocol):
    """What the resize controller needs of a resizer (upstream's `resizer.Resizer`)."""

    name: str
    """The driver name."""
    controller_expansion: bool
    """DriverSupportsControlPlaneExpansion: False for the trivial resizer."""

    def can_support(self, pv: Mapping[str, Any]) -> bool:
        """The PV is a CSI volume of this driver."""
        ...

    async def resize(self, pv: Mapping[str, Any], size: str) -> tuple[str, bool]:
        """Grow the volume to at least `size`: (the new size, whether the node must expand too)."""
        ...


def is_our_volume(pv: Mapping[str, Any], driver: str) -> bool:
    """`pv.spec.csi.driver == driver`."""
    source = (pv.get("spec") or {}).get("csi")
    return isinstance(source, Mapping) and source.get("driver") == driver


def access_mode(
    modes: Sequence[str], *, single_node_multi_writer: bool
) -> csi_pb2.VolumeCapability.AccessMode.Mode:
    """csi-lib-utils `accessmodes.ToCSIAccessMode` (common.csi.capability), failing with a ResizeError."""
    try:
        return capability.access_mode(modes, single_node_multi_writer=single_node_multi_writer)
    except capability.AccessModeError as err:
        raise ResizeError(str(err)) from None


def volume_capability(pv: Mapping[str, Any], *, single_node_multi_writer: bool) -> csi_pb2.VolumeCapability:
    """GetVolumeCapabilities (common.csi.capability) for a PV, failing with a ResizeError."""
    try:
        return capability.volume_capability(
            pv.get("spec") or {}, single_node_multi_writer=single_node_multi_writer
        )
    except capability.AccessModeError as err:
        raise ResizeError(str(err)) from None


async def read_secret(kube: KubeClient, ref: Mapping[str, Any] | None) -> dict[str, str]:
    """getCredentials: the secret's data as strings ({} without a reference)."""
    if not ref:
        return {}
    name, namespace = str(ref.get("name") or ""), str(ref.get("namespace") or "")
    try:
        secret = await kube.get(SECRETS, name, namespace=namespace)
    except ApiError as exc:
        raise ResizeError(f"error getting secret {name} in namespace {namespace}: {exc}") from exc
    return {
        key: base64.b64decode(value).decode(errors="replace")
        for key, value in (secret.get("data") or {}).items()
    }


def _recorded_if_larger(pv: Mapping[str, Any], required: int) -> str | None:
    """The PV's `spec.capacity.storage` as written, if it parses and is larger than `required` bytes.

    Kept as written, not re-formatted: a decimal quantity beyond int64 (`10E`) written back in binary
    form would be capped at 2^63-1 by the API server, and the volume would seem to shrink."""
    recorded = str(((pv.get("spec") or {}).get("capacity") or {}).get("storage") or 0)
    try:
        return recorded if to_bytes(recorded) > required else None
    except QuantityError:
        return None


class CSIResizer:
    """Expands volumes with ControllerExpandVolume (see the module docstring)."""

    controller_expansion = True

    def __init__(self, *, name: str, csi: CSIConnection, kube: KubeClient, timeout: float) -> None:
        self.name = name
        self.csi = csi
        self.kube = kube
        self.timeout = timeout

    def can_support(self, pv: Mapping[str, Any]) -> bool:
        return is_our_volume(pv, self.name)

    async def _single_node_multi_writer(self) -> bool:
        # Asked before every expansion, as upstream does (not cached: a driver may be upgraded in place).
        rsp = await self.csi.controller.ControllerGetCapabilities(
            csi_pb2.ControllerGetCapabilitiesRequest(), timeout=self.timeout
        )
        wanted = csi_pb2.ControllerServiceCapability.RPC.SINGLE_NODE_MULTI_WRITER
        return any(c.rpc.type == wanted for c in rsp.capabilities if c.WhichOneof("type") == "rpc")

    async def resize(self, pv: Mapping[str, Any], size: str) -> tuple[str, bool]:
        source = (pv.get("spec") or {}).get("csi")
        name = (pv.get("metadata") or {}).get("name", "")
        if not isinstance(source, Mapping):
            raise ResizeError(f"volume {name} is not migrated to CSI")
        volume_id = str(source.get("volumeHandle") or "")
        if not volume_id:
            raise ResizeError("empty volume handle")
        secrets = await read_secret(self.kube, source.get("controllerExpandSecretRef"))
        capability = volume_capability(pv, single_node_multi_writer=await self._single_node_multi_writer())
        request = csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume_id,
            capacity_range=csi_pb2.CapacityRange(required_bytes=to_bytes(size)),
            secrets=secrets,
            volume_capability=capability,
        )
        rsp = await self.csi.controller.ControllerExpandVolume(request, timeout=self.timeout)
        required = request.capacity_range.required_bytes
        if rsp.capacity_bytes == 0:  # REQUIRED by the spec: without it, as asked and no smaller than before
            size = _recorded_if_larger(pv, required) or format_quantity(required, binary=True)
            return size, rsp.node_expansion_required
        if rsp.capacity_bytes < required:
            raise ResizeError(
                f"driver returned a capacity of {rsp.capacity_bytes} bytes, "
                f"less than the {required} requested"
            )
        return format_quantity(rsp.capacity_bytes, binary=True), rsp.node_expansion_required


class TrivialResizer:
    """For drivers that expand only on the node: records the size and leaves the rest to kubelet."""

    controller_expansion = False

    def __init__(self, *, name: str) -> None:
        self.name = name

    def can_support(self, pv: Mapping[str, Any]) -> bool:
        return is_our_volume(pv, self.name)

    async def resize(self, pv: Mapping[str, Any], size: str) -> tuple[str, bool]:
        return size, True
