"""Volume capabilities of a PersistentVolume: csi-lib-utils `accessmodes` and `GetVolumeCapabilities`.

The attacher (ControllerPublishVolume) and the resizer (ControllerExpandVolume) describe an existing
PV to the driver the same way: one VolumeCapability whose access mode stands for *all* the PV's
access modes, Block or Mount (fsType, mount options). The provisioner maps each PVC access mode to
its own capability instead (CreateVolume takes several), so it does not use this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proto import csi_pb2

Mode = csi_pb2.VolumeCapability.AccessMode


class AccessModeError(ValueError):
    """The PV's access modes or source cannot be expressed as a CSI volume capability."""


def access_mode(
    modes: Sequence[str], *, single_node_multi_writer: bool
) -> csi_pb2.VolumeCapability.AccessMode.Mode:
    """csi-lib-utils `ToCSIAccessMode` with upstream's error texts (Go's `%v` of the mode list)."""
    unique = set(modes)
    if "ReadWriteOncePod" in unique:
        if len(unique) > 1:
            raise AccessModeError(
                "Kubernetes does not support use of ReadWriteOncePod with other access modes on the "
                "same PersistentVolume"
            )
        return Mode.SINGLE_NODE_SINGLE_WRITER if single_node_multi_writer else Mode.SINGLE_NODE_WRITER
    if "ReadWriteMany" in unique:
        return Mode.MULTI_NODE_MULTI_WRITER
    if "ReadOnlyMany" in unique and "ReadWriteOnce" in unique:
        raise AccessModeError(
            "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume"
        )
    if "ReadOnlyMany" in unique:
        return Mode.MULTI_NODE_READER_ONLY
    if "ReadWriteOnce" in unique:
        return Mode.SINGLE_NODE_MULTI_WRITER if single_node_multi_writer else Mode.SINGLE_NODE_WRITER
    raise AccessModeError(f"unsupported AccessMode combination: [{' '.join(modes)}]")


def volume_capability(
    spec: Mapping[str, Any], *, single_node_multi_writer: bool, default_fstype: str = ""
) -> csi_pb2.VolumeCapability:
    """external-attacher/-resizer `GetVolumeCapabilities` for a PV spec (`pv["spec"]`)."""
    source = spec.get("csi")
    if not isinstance(source, Mapping):
        raise AccessModeError("CSI volume source was nil")
    mode = access_mode(list(spec.get("accessModes") or ()), single_node_multi_writer=single_node_multi_writer)
    capability = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))
    if spec.get("volumeMode") == "Block":
        capability.block.SetInParent()
    else:
        capability.mount.fs_type = str(source.get("fsType") or default_fstype)
        capability.mount.mount_flags.extend(str(option) for option in spec.get("mountOptions") or ())
    return capability
