"""Secret stripping is driven by the csi_secret option, at any depth, and never leaks a value."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from common.csi.sanitize import STRIPPED, strip_secrets, truncate
from proto import csi_pb2

SECRET = "s3cr3t-Pa55w0rd"
VolumeCapability = csi_pb2.VolumeCapability


def _mount_capability() -> Any:
    return VolumeCapability(
        mount=VolumeCapability.MountVolume(fs_type="xfs", mount_flags=["noatime"]),
        access_mode=VolumeCapability.AccessMode(mode=VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
    )


def test_create_volume_request() -> None:
    request = csi_pb2.CreateVolumeRequest(
        name="pvc-8e2c",
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30),
        volume_capabilities=[_mount_capability()],
        parameters={"tier": "gold"},
        secrets={"password": SECRET, "user": "admin"},
        volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="snap-1")
        ),
        accessibility_requirements=csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments={"zone": "a"})]
        ),
        mutable_parameters={"iops": "3000"},
    )
    text = strip_secrets(request)
    assert SECRET not in text
    assert "admin" not in text  # the whole map goes, keys included
    assert json.loads(text) == {
        "name": "pvc-8e2c",
        "capacity_range": {"required_bytes": 1 << 30},
        "volume_capabilities": [
            {
                "mount": {"fs_type": "xfs", "mount_flags": ["noatime"]},
                "access_mode": {"mode": "SINGLE_NODE_WRITER"},
            }
        ],
        "parameters": {"tier": "gold"},
        "secrets": STRIPPED,
        "volume_content_source": {"snapshot": {"snapshot_id": "snap-1"}},
        "accessibility_requirements": {"requisite": [{"segments": {"zone": "a"}}]},
        "mutable_parameters": {"iops": "3000"},
    }
    assert " " not in text.replace("***stripped***", "")  # compact


def test_node_stage_volume_request() -> None:
    request = csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1",
        publish_context={"device": "/dev/sdb"},
        staging_target_path="/var/lib/kubelet/plugins/staging",
        volume_capability=_mount_capability(),
        secrets={"chap-secret": SECRET},
        volume_context={"iqn": "iqn.2024-01.io.example"},
    )
    text = strip_secrets(request)
    assert SECRET not in text
    parsed = json.loads(text)
    assert parsed["secrets"] == STRIPPED
    assert parsed["publish_context"] == {"device": "/dev/sdb"}
    assert parsed["volume_context"] == {"iqn": "iqn.2024-01.io.example"}
    assert parsed["staging_target_path"] == "/var/lib/kubelet/plugins/staging"


def test_controller_publish_volume_request() -> None:
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id="vol-1",
        node_id="node-1",
        volume_capability=VolumeCapability(
            block=VolumeCapability.BlockVolume(),
            access_mode=VolumeCapability.AccessMode(mode=VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER),
        ),
        readonly=True,
        secrets={"token": SECRET},
        volume_context={"pool": "fast"},
    )
    text = strip_secrets(request)
    assert SECRET not in text
    parsed = json.loads(text)
    assert parsed == {
        "volume_id": "vol-1",
        "node_id": "node-1",
        "volume_capability": {"block": {}, "access_mode": {"mode": "MULTI_NODE_MULTI_WRITER"}},
        "readonly": True,
        "secrets": STRIPPED,
        "volume_context": {"pool": "fast"},
    }


def test_unset_secrets_and_empty_messages() -> None:
    assert strip_secrets(csi_pb2.DeleteVolumeRequest(volume_id="v")) == '{"volume_id":"v"}'
    assert strip_secrets(csi_pb2.ProbeRequest()) == "{}"
    assert strip_secrets(None) == "null"
    # proto3 scalars at their default are omitted, as Go's omitempty JSON does: ready=false is {}
    assert strip_secrets(csi_pb2.ProbeResponse(ready={"value": False})) == '{"ready":{}}'
    assert strip_secrets(csi_pb2.ProbeResponse(ready={"value": True})) == '{"ready":{"value":true}}'


def _nested_secret_types() -> tuple[Any, Any]:
    """Outer/Inner messages (not CSI) whose secrets hide in repeated, map, oneof and nested fields."""
    fdp = descriptor_pb2.FileDescriptorProto(name="sanitize_nested_test.proto", package="sanitizetest")
    fdp.syntax = "proto3"
    string, message = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    )
    optional, repeated = (
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    inner = fdp.message_type.add(name="Inner")
    password = inner.field.add(name="password", number=1, type=string, label=optional)
    password.options.Extensions[csi_pb2.csi_secret] = True
    inner.field.add(name="user", number=2, type=string, label=optional)
    outer = fdp.message_type.add(name="Outer")
    outer.oneof_decl.add(name="choice")
    entry = outer.nested_type.add(name="ByNameEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=string, label=optional)
    entry.field.add(name="value", number=2, type=message, label=optional, type_name=".sanitizetest.Inner")
    outer.field.add(name="items", number=1, type=message, label=repeated, type_name=".sanitizetest.Inner")
    outer.field.add(
        name="by_name", number=2, type=message, label=repeated, type_name=".sanitizetest.Outer.ByNameEntry"
    )
    outer.field.add(
        name="one", number=3, type=message, label=optional, type_name=".sanitizetest.Inner", oneof_index=0
    )
    outer.field.add(name="nested", number=4, type=message, label=optional, type_name=".sanitizetest.Inner")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sanitizetest.Outer")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sanitizetest.Inner")),
    )


def test_secret_at_any_depth_is_found_by_the_option_not_the_name() -> None:
    outer_cls, inner_cls = _nested_secret_types()
    msg = outer_cls(
        items=[inner_cls(password=SECRET + "1", user="u1"), inner_cls(user="u2")],
        one=inner_cls(password=SECRET + "3", user="u3"),
        nested=inner_cls(password=SECRET + "4", user="u4"),
    )
    msg.by_name["a"].password = SECRET + "2"
    msg.by_name["a"].user = "ua"
    text = strip_secrets(msg)
    assert SECRET not in text
    assert json.loads(text) == {
        "items": [{"password": STRIPPED, "user": "u1"}, {"user": "u2"}],
        "by_name": {"a": {"password": STRIPPED, "user": "ua"}},
        "one": {"password": STRIPPED, "user": "u3"},
        "nested": {"password": STRIPPED, "user": "u4"},
    }


def test_truncate() -> None:
    assert truncate("abcdef", -1) == "abcdef"
    assert truncate("abcdef", 0) == "abcdef"
    assert truncate("abcdef", 6) == "abcdef"
    assert truncate("abcdef", 3) == "abc [response body too large, log capped to 3 chars]"
