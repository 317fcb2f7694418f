"""The volume capability of a PV (common.csi.capability), as csi-lib-utils computes it."""

from __future__ import annotations

import pytest

from common.csi import capability


def test_capability_of_a_pv_matches_csi_lib_utils() -> None:
    """The access-mode table attacher and resizer share (csi-lib-utils ToCSIAccessMode)."""
    mode = capability.Mode
    table = {
        ("ReadWriteOnce",): (mode.SINGLE_NODE_WRITER, mode.SINGLE_NODE_MULTI_WRITER),
        ("ReadWriteOncePod",): (mode.SINGLE_NODE_WRITER, mode.SINGLE_NODE_SINGLE_WRITER),
        ("ReadOnlyMany",): (mode.MULTI_NODE_READER_ONLY, mode.MULTI_NODE_READER_ONLY),
        ("ReadWriteMany", "ReadOnlyMany"): (mode.MULTI_NODE_MULTI_WRITER, mode.MULTI_NODE_MULTI_WRITER),
    }
    for modes, (plain, multi) in table.items():
        assert capability.access_mode(list(modes), single_node_multi_writer=False) == plain
        assert capability.access_mode(list(modes), single_node_multi_writer=True) == multi
    for bad in (["ReadWriteOncePod", "ReadWriteOnce"], ["ReadOnlyMany", "ReadWriteOnce"], []):
        with pytest.raises(capability.AccessModeError):
            capability.access_mode(bad, single_node_multi_writer=False)
    spec = {"accessModes": ["ReadWriteOnce"], "mountOptions": ["noatime"], "csi": {"driver": "d"}}
    cap = capability.volume_capability(spec, single_node_multi_writer=False, default_fstype="ext4")
    assert cap.mount.fs_type == "ext4" and list(cap.mount.mount_flags) == ["noatime"]
    block = capability.volume_capability({**spec, "volumeMode": "Block"}, single_node_multi_writer=False)
    assert block.HasField("block")
