"""Kubelet's CSI client conventions: grpc targets, Go-rendered errors, volume capabilities and paths.

* errors read as a Go client prints them: `rpc error: code = OutOfRange desc = ...`;
* `is_final` / `is_infeasible` are pkg/volume/csi's `isFinalError` / `isInfeasibleError`;
* `volume_capability` is what csi_client.go builds for NodeStage/NodePublish (access mode from the
  PV's first access mode, the single-node-multi-writer variants when the node advertises
  SINGLE_NODE_MULTI_WRITER; block, or mount with fsType and the PV's mountOptions);
* paths are kubelet's: `<root>/plugins/kubernetes.io/csi/<driver>/<sha256(handle)>/globalmount`
  for staging, `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount` for publishing (block:
  `.../volumeDevices/staging/<pv>` and `.../volumeDevices/publish/<pv>/<uid>`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import grpc

from proto import csi_pb2

Obj = dict[str, Any]
Code = grpc.StatusCode

_GO_CODE_NAMES = {Code.CANCELLED: "Canceled"}
NON_FINAL = frozenset(
    {Code.CANCELLED, Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.ABORTED}
)
INFEASIBLE = frozenset({Code.INVALID_ARGUMENT, Code.OUT_OF_RANGE, Code.NOT_FOUND})
_MODES = {
    "ReadWriteOnce": "SINGLE_NODE_WRITER",
    "ReadWriteOncePod": "SINGLE_NODE_WRITER",
    "ReadOnlyMany": "MULTI_NODE_READER_ONLY",
    "ReadWriteMany": "MULTI_NODE_MULTI_WRITER",
}
_MULTI_WRITER_MODES = {
    **_MODES,
    "ReadWriteOnce": "SINGLE_NODE_MULTI_WRITER",
    "ReadWriteOncePod": "SINGLE_NODE_SINGLE_WRITER",
}


def grpc_target(endpoint: str) -> str:
    """A plugin endpoint (a socket path, or `unix://...`) as a grpc target."""
    return endpoint if endpoint.startswith("unix:") else f"unix://{os.path.abspath(endpoint)}"


def go_code_name(code: grpc.StatusCode) -> str:
    """The Go `codes.Code` String(): OUT_OF_RANGE -> OutOfRange, CANCELLED -> Canceled."""
    return _GO_CODE_NAMES.get(code) or "".join(part.capitalize() for part in code.name.split("_"))


def go_error(exc: BaseException) -> str:
    """An exception as a Go error string (gRPC status errors as grpc-go renders them)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"rpc error: code = {go_code_name(exc.code())} desc = {exc.details() or ''}"
    return str(exc)


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    return exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None


def is_final(exc: BaseException) -> bool:
    """`isFinalError`: a gRPC error other than the transient codes; a non-gRPC error is not final."""
    code = code_of(exc)
    return code is not None and code not in NON_FINAL


def is_infeasible(exc: BaseException) -> bool:
    """`isInfeasibleError`: InvalidArgument, OutOfRange or NotFound."""
    return code_of(exc) in INFEASIBLE


def is_block(volume: Obj) -> bool:
    return (volume.get("spec") or {}).get("volumeMode") == "Block"


def access_mode(volume: Obj, *, multi_writer: bool) -> str:
    modes = (volume.get("spec") or {}).get("accessModes") or ["ReadWriteOnce"]
    return (_MULTI_WRITER_MODES if multi_writer else _MODES).get(modes[0], "UNKNOWN")


def volume_capability(volume: Obj, *, multi_writer: bool) -> csi_pb2.VolumeCapability:
    """The VolumeCapability kubelet sends for a CSI PV."""
    spec = volume.get("spec") or {}
    mode = csi_pb2.VolumeCapability.AccessMode(mode=access_mode(volume, multi_writer=multi_writer))
    if is_block(volume):
        return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=mode)
    mount = csi_pb2.VolumeCapability.MountVolume(
        fs_type=str((spec.get("csi") or {}).get("fsType") or ""),
        mount_flags=list(spec.get("mountOptions") or []),
    )
    return csi_pb2.VolumeCapability(mount=mount, access_mode=mode)


def staging_path(root: str, volume: Obj) -> str:
    csi = volume["spec"]["csi"]
    if is_block(volume):
        return os.path.join(
            root, "plugins/kubernetes.io/csi/volumeDevices/staging", volume["metadata"]["name"]
        )
    digest = hashlib.sha256(str(csi["volumeHandle"]).encode()).hexdigest()
    return os.path.join(root, "plugins/kubernetes.io/csi", csi["driver"], digest, "globalmount")


def publish_path(root: str, volume: Obj, pod_uid: str) -> str:
    name = volume["metadata"]["name"]
    if is_block(volume):
        return os.path.join(root, "plugins/kubernetes.io/csi/volumeDevices/publish", name, pod_uid)
    return os.path.join(root, "pods", pod_uid, "volumes/kubernetes.io~csi", name, "mount")
