"""The ControllerPublishVolume request a VolumeAttachment turns into, and upstream's error texts."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from test_attacher_fakes import DRIVER, csinode, pv, va

from proto import csi_pb2
from sidecars.attacher.request import (
    NODE_IDS_ANNOTATION,
    VolumeError,
    access_mode,
    check_source,
    csi_source,
    csinode_error,
    decode_secret,
    finalizer_name,
    node_id_from_csinode,
    node_id_from_node,
    not_found,
    publish_of,
    volume_capability,
)

Mode = csi_pb2.VolumeCapability.AccessMode


@pytest.mark.parametrize(
    ("driver", "finalizer"),
    [
        ("hostpath.csi.k8s.io", "external-attacher/hostpath-csi-k8s-io"),
        ("ebs.csi.aws.com", "external-attacher/ebs-csi-aws-com"),
        ("example.com/driver_", "external-attacher/example-com-driver-X"),
    ],
)
def test_finalizer_name_is_sanitized_like_upstream(driver: str, finalizer: str) -> None:
    assert finalizer_name(driver) == finalizer


# csi-lib-utils accessmodes: (modes, without SINGLE_NODE_MULTI_WRITER, with it)
ACCESS_MODES = [
    (["ReadWriteOnce"], Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER),
    (["ReadWriteOncePod"], Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER),
    (["ReadOnlyMany"], Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY),
    (["ReadWriteMany"], Mode.MULTI_NODE_MULTI_WRITER, Mode.MULTI_NODE_MULTI_WRITER),
    (
        ["ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce"],
        Mode.MULTI_NODE_MULTI_WRITER,
        Mode.MULTI_NODE_MULTI_WRITER,
    ),
    (["ReadWriteOnce", "ReadWriteOnce"], Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER),
]


@pytest.mark.parametrize(("modes", "plain", "snmw"), ACCESS_MODES)
def test_access_mode_comes_from_all_pv_access_modes(modes: list[str], plain: int, snmw: int) -> None:
    assert access_mode(modes, single_node_multi_writer=False) == plain
    assert access_mode(modes, single_node_multi_writer=True) == snmw


@pytest.mark.parametrize(
    ("modes", "message"),
    [
        (
            ["ReadWriteOncePod", "ReadWriteOnce"],
            "Kubernetes does not support use of ReadWriteOncePod with other access modes on the same "
            "PersistentVolume",
        ),
        (
            ["ReadOnlyMany", "ReadWriteOnce"],
            "CSI does not support ReadOnlyMany and ReadWriteOnce on the same PersistentVolume",
        ),
        ([], "unsupported AccessMode combination: []"),
        (["Bogus"], "unsupported AccessMode combination: [Bogus]"),
    ],
)
def test_impossible_access_modes_are_refused_in_upstreams_words(modes: list[str], message: str) -> None:
    with pytest.raises(VolumeError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]") + "$"):
        access_mode(modes, single_node_multi_writer=False)


def test_mount_capability_carries_fstype_and_mount_options() -> None:
    spec = pv()["spec"]
    capability = volume_capability(spec, single_node_multi_writer=True, default_fstype="ext4")
    assert capability.WhichOneof("access_type") == "mount"
    assert capability.mount.fs_type == "xfs"
    assert list(capability.mount.mount_flags) == ["noatime"]
    assert capability.access_mode.mode == Mode.SINGLE_NODE_MULTI_WRITER


def test_default_fstype_fills_an_empty_fstype_and_block_has_none() -> None:
    spec = pv(fsType="")["spec"]
    assert (
        volume_capability(spec, single_node_multi_writer=False, default_fstype="ext4").mount.fs_type == "ext4"
    )
    spec["volumeMode"] = "Block"
    block = volume_capability(spec, single_node_multi_writer=False, default_fstype="ext4")
    assert block.WhichOneof("access_type") == "block"
    assert block.access_mode.mode == Mode.SINGLE_NODE_WRITER


def test_readonly_needs_the_publish_readonly_capability() -> None:
    source: dict[str, Any] = {"volumeHandle": "vol-1", "readOnly": True, "volumeAttributes": {"a": "b"}}
    assert publish_of(source, publish_readonly=True).readonly is True
    assert publish_of(source, publish_readonly=False).readonly is False
    publish = publish_of(
        {**source, "controllerPublishSecretRef": {"name": "s", "namespace": "ns"}}, publish_readonly=True
    )
    assert publish.volume_id == "vol-1" and dict(publish.volume_context) == {"a": "b"}
    assert publish.secret_ref == {"name": "s", "namespace": "ns"}


def test_source_must_be_exactly_one_of_pv_and_inline() -> None:
    check_source(va())
    both = va()
    both["spec"]["source"]["inlineVolumeSpec"] = {"csi": {"driver": DRIVER, "volumeHandle": "v"}}
    with pytest.raises(VolumeError, match=r"^both InlineCSIVolumeSource and PersistentVolumeName"):
        check_source(both)
    with pytest.raises(VolumeError, match=r"^neither InlineCSIVolumeSource nor PersistentVolumeName"):
        check_source(va(pv=None))
    inline = va(pv=None)
    inline["spec"]["source"]["inlineVolumeSpec"] = {"accessModes": ["ReadWriteOnce"]}
    with pytest.raises(VolumeError, match=r"^inline volume spec contains nil CSI source$"):
        check_source(inline)


def test_an_in_tree_pv_is_refused() -> None:
    with pytest.raises(VolumeError, match=r"^pv spec contained non-csi source that was not migrated$"):
        csi_source({"gcePersistentDisk": {"pdName": "x"}})


def test_node_ids_from_csinode_and_from_the_legacy_node_annotation() -> None:
    assert node_id_from_csinode(csinode(node_id="id-1"), DRIVER) == "id-1"
    assert node_id_from_csinode(csinode(driver="other"), DRIVER) is None
    node = {
        "metadata": {"name": "node-1", "annotations": {NODE_IDS_ANNOTATION: json.dumps({DRIVER: "id-9"})}}
    }
    assert node_id_from_node(node, DRIVER) == "id-9"
    assert (
        node_id_from_node({"metadata": {"annotations": {NODE_IDS_ANNOTATION: "{not json"}}}, DRIVER) is None
    )
    assert node_id_from_node({"metadata": {"name": "node-1"}}, DRIVER) is None


def test_error_texts_are_upstreams() -> None:
    # golden 05: the attachError of a VA for a node without CSINode
    assert (
        str(csinode_error(None, "node-missing", DRIVER)) == 'csinode.storage.k8s.io "node-missing" not found'
    )
    assert str(csinode_error(csinode(driver="other"), "node-1", DRIVER)) == (
        "CSINode node-1 does not contain driver hostpath.csi.k8s.io"
    )
    assert str(not_found("persistentvolume", "pv-1")) == 'persistentvolume "pv-1" not found'
    assert VolumeError("x", code=5).code == 5


def test_secret_data_is_decoded() -> None:
    secret = {"data": {"user": base64.b64encode(b"admin").decode(), "empty": ""}}
    assert decode_secret(secret) == {"user": "admin", "empty": ""}
    assert decode_secret({}) == {}
