"""The generated stubs carry the upstream wire format: names, field numbers, types, options."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from proto import csi_pb2, csi_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc
from proto.generate import stale_files

F = FieldDescriptor
STRING, BOOL, INT64, INT32, MESSAGE, ENUM = (
    F.TYPE_STRING,
    F.TYPE_BOOL,
    F.TYPE_INT64,
    F.TYPE_INT32,
    F.TYPE_MESSAGE,
    F.TYPE_ENUM,
)
MAP = "map<string,string>"

# (message, field, number, type, repeated, message/enum type or None)
FIELDS: list[tuple[str, str, int, Any, bool, str | None]] = [
    ("GetPluginInfoResponse", "name", 1, STRING, False, None),
    ("GetPluginInfoResponse", "vendor_version", 2, STRING, False, None),
    ("GetPluginInfoResponse", "manifest", 3, MAP, True, None),
    ("GetPluginCapabilitiesResponse", "capabilities", 1, MESSAGE, True, "csi.v1.PluginCapability"),
    ("PluginCapability", "service", 1, MESSAGE, False, "csi.v1.PluginCapability.Service"),
    ("PluginCapability", "volume_expansion", 2, MESSAGE, False, "csi.v1.PluginCapability.VolumeExpansion"),
    ("ProbeResponse", "ready", 1, MESSAGE, False, "google.protobuf.BoolValue"),
    ("CreateVolumeRequest", "name", 1, STRING, False, None),
    ("CreateVolumeRequest", "capacity_range", 2, MESSAGE, False, "csi.v1.CapacityRange"),
    ("CreateVolumeRequest", "volume_capabilities", 3, MESSAGE, True, "csi.v1.VolumeCapability"),
    ("CreateVolumeRequest", "parameters", 4, MAP, True, None),
    ("CreateVolumeRequest", "secrets", 5, MAP, True, None),
    ("CreateVolumeRequest", "volume_content_source", 6, MESSAGE, False, "csi.v1.VolumeContentSource"),
    ("CreateVolumeRequest", "accessibility_requirements", 7, MESSAGE, False, "csi.v1.TopologyRequirement"),
    ("CreateVolumeRequest", "mutable_parameters", 8, MAP, True, None),
    ("CreateVolumeResponse", "volume", 1, MESSAGE, False, "csi.v1.Volume"),
    ("CapacityRange", "required_bytes", 1, INT64, False, None),
    ("CapacityRange", "limit_bytes", 2, INT64, False, None),
    ("Volume", "capacity_bytes", 1, INT64, False, None),
    ("Volume", "volume_id", 2, STRING, False, None),
    ("Volume", "volume_context", 3, MAP, True, None),
    ("Volume", "content_source", 4, MESSAGE, False, "csi.v1.VolumeContentSource"),
    ("Volume", "accessible_topology", 5, MESSAGE, True, "csi.v1.Topology"),
    ("VolumeCapability", "block", 1, MESSAGE, False, "csi.v1.VolumeCapability.BlockVolume"),
    ("VolumeCapability", "mount", 2, MESSAGE, False, "csi.v1.VolumeCapability.MountVolume"),
    ("VolumeCapability", "access_mode", 3, MESSAGE, False, "csi.v1.VolumeCapability.AccessMode"),
    ("TopologyRequirement", "requisite", 1, MESSAGE, True, "csi.v1.Topology"),
    ("TopologyRequirement", "preferred", 2, MESSAGE, True, "csi.v1.Topology"),
    ("DeleteVolumeRequest", "volume_id", 1, STRING, False, None),
    ("DeleteVolumeRequest", "secrets", 2, MAP, True, None),
    ("ControllerPublishVolumeRequest", "volume_id", 1, STRING, False, None),
    ("ControllerPublishVolumeRequest", "node_id", 2, STRING, False, None),
    ("ControllerPublishVolumeRequest", "volume_capability", 3, MESSAGE, False, "csi.v1.VolumeCapability"),
    ("ControllerPublishVolumeRequest", "readonly", 4, BOOL, False, None),
    ("ControllerPublishVolumeRequest", "secrets", 5, MAP, True, None),
    ("ControllerPublishVolumeRequest", "volume_context", 6, MAP, True, None),
    ("ControllerPublishVolumeResponse", "publish_context", 1, MAP, True, None),
    ("ControllerUnpublishVolumeRequest", "node_id", 2, STRING, False, None),
    ("ControllerUnpublishVolumeRequest", "secrets", 3, MAP, True, None),
    ("ListVolumesRequest", "max_entries", 1, INT32, False, None),
    ("ListVolumesResponse.VolumeStatus", "published_node_ids", 1, STRING, True, None),
    ("GetCapacityResponse", "available_capacity", 1, INT64, False, None),
    ("GetCapacityResponse", "maximum_volume_size", 2, MESSAGE, False, "google.protobuf.Int64Value"),
    ("ControllerExpandVolumeRequest", "capacity_range", 2, MESSAGE, False, "csi.v1.CapacityRange"),
    ("ControllerExpandVolumeRequest", "secrets", 3, MAP, True, None),
    ("ControllerExpandVolumeRequest", "volume_capability", 4, MESSAGE, False, "csi.v1.VolumeCapability"),
    ("ControllerExpandVolumeResponse", "capacity_bytes", 1, INT64, False, None),
    ("ControllerExpandVolumeResponse", "node_expansion_required", 2, BOOL, False, None),
    ("ControllerModifyVolumeRequest", "volume_id", 1, STRING, False, None),
    ("ControllerModifyVolumeRequest", "secrets", 2, MAP, True, None),
    ("ControllerModifyVolumeRequest", "mutable_parameters", 3, MAP, True, None),
    ("ControllerServiceCapability", "rpc", 1, MESSAGE, False, "csi.v1.ControllerServiceCapability.RPC"),
    ("NodeStageVolumeRequest", "secrets", 5, MAP, True, None),
    ("NodePublishVolumeRequest", "secrets", 7, MAP, True, None),
    ("NodeGetInfoResponse", "node_id", 1, STRING, False, None),
    ("NodeGetInfoResponse", "max_volumes_per_node", 2, INT64, False, None),
    ("NodeGetInfoResponse", "accessible_topology", 3, MESSAGE, False, "csi.v1.Topology"),
    ("NodeExpandVolumeRequest", "secrets", 6, MAP, True, None),
    ("Snapshot", "creation_time", 4, MESSAGE, False, "google.protobuf.Timestamp"),
    ("Snapshot", "group_snapshot_id", 6, STRING, False, None),
]


def _message(path: str) -> Descriptor:
    top, *nested = path.split(".")
    desc = csi_pb2.DESCRIPTOR.message_types_by_name[top]
    for name in nested:
        desc = desc.nested_types_by_name[name]
    return desc


def _all_messages(descs: Any) -> list[Descriptor]:
    out = []
    for desc in descs:
        out.append(desc)
        out.extend(_all_messages(desc.nested_types))
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@pytest.mark.parametrize(("message", "name", "number", "kind", "repeated", "type_name"), FIELDS)
def test_csi_field_wire_format(
    message: str, name: str, number: int, kind: Any, repeated: bool, type_name: str | None
) -> None:
    field = _message(message).fields_by_name[name]
    assert field.number == number
    assert field.is_repeated == repeated
    if kind == MAP:
        assert _is_map(field)
        entry = field.message_type
        assert entry is not None
        assert [f.type for f in entry.fields] == [STRING, STRING]
        return
    assert field.type == kind
    if type_name is not None:
        target = field.message_type if kind == MESSAGE else field.enum_type
        assert target is not None
        assert target.full_name == type_name


def test_package_and_extensions() -> None:
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    ext = csi_pb2.DESCRIPTOR.extensions_by_name
    assert ext["csi_secret"].number == 1059
    assert ext["csi_secret"].containing_type.full_name == "google.protobuf.FieldOptions"
    for name, options in [
        ("alpha_enum", "EnumOptions"),
        ("alpha_enum_value", "EnumValueOptions"),
        ("alpha_field", "FieldOptions"),
        ("alpha_message", "MessageOptions"),
        ("alpha_method", "MethodOptions"),
        ("alpha_service", "ServiceOptions"),
    ]:
        assert ext[name].number == 1060
        assert ext[name].containing_type.full_name == f"google.protobuf.{options}"


def test_controller_capability_values() -> None:
    rpc_type = csi_pb2.ControllerServiceCapability.RPC.Type
    assert dict(rpc_type.items()) == {
        "UNKNOWN": 0,
        "CREATE_DELETE_VOLUME": 1,
        "PUBLISH_UNPUBLISH_VOLUME": 2,
        "LIST_VOLUMES": 3,
        "GET_CAPACITY": 4,
        "CREATE_DELETE_SNAPSHOT": 5,
        "LIST_SNAPSHOTS": 6,
        "CLONE_VOLUME": 7,
        "PUBLISH_READONLY": 8,
        "EXPAND_VOLUME": 9,
        "LIST_VOLUMES_PUBLISHED_NODES": 10,
        "VOLUME_CONDITION": 11,
        "GET_VOLUME": 12,
        "SINGLE_NODE_MULTI_WRITER": 13,
        "MODIFY_VOLUME": 14,
        "GET_SNAPSHOT": 15,
    }


def test_node_capability_and_access_mode_values() -> None:
    node = csi_pb2.NodeServiceCapability.RPC.Type
    assert node.items() == [
        ("UNKNOWN", 0),
        ("STAGE_UNSTAGE_VOLUME", 1),
        ("GET_VOLUME_STATS", 2),
        ("EXPAND_VOLUME", 3),
        ("VOLUME_CONDITION", 4),
        ("SINGLE_NODE_MULTI_WRITER", 5),
        ("VOLUME_MOUNT_GROUP", 6),
    ]
    mode = csi_pb2.VolumeCapability.AccessMode.Mode
    assert mode.Value("SINGLE_NODE_WRITER") == 1
    assert mode.Value("MULTI_NODE_MULTI_WRITER") == 5
    assert mode.Value("SINGLE_NODE_SINGLE_WRITER") == 6
    assert mode.Value("SINGLE_NODE_MULTI_WRITER") == 7


def test_plugin_capability_values() -> None:
    service = csi_pb2.PluginCapability.Service.Type
    assert service.items() == [
        ("UNKNOWN", 0),
        ("CONTROLLER_SERVICE", 1),
        ("VOLUME_ACCESSIBILITY_CONSTRAINTS", 2),
        ("GROUP_CONTROLLER_SERVICE", 3),
        ("SNAPSHOT_METADATA_SERVICE", 4),
    ]
    expansion = csi_pb2.PluginCapability.VolumeExpansion.Type
    assert expansion.items() == [("UNKNOWN", 0), ("ONLINE", 1), ("OFFLINE", 2)]
    oneof = csi_pb2.PluginCapability.DESCRIPTOR.oneofs_by_name["type"]
    assert [f.name for f in oneof.fields] == ["service", "volume_expansion"]


def test_every_secrets_field_carries_csi_secret_and_nothing_else_does() -> None:
    secret_fields = []
    for desc in _all_messages(csi_pb2.DESCRIPTOR.message_types_by_name.values()):
        for field in desc.fields:
            options = field.GetOptions()
            if options.HasExtension(csi_pb2.csi_secret) and options.Extensions[csi_pb2.csi_secret]:
                secret_fields.append(f"{desc.name}.{field.name}")
            elif field.name == "secrets":
                pytest.fail(f"{desc.name}.secrets lacks the csi_secret option")
    assert all(name.endswith(".secrets") for name in secret_fields)
    assert len(secret_fields) == 19  # every request with secrets in spec v1.12.0


def test_pluginregistration_fields() -> None:
    info = pluginregistration_pb2.PluginInfo.DESCRIPTOR
    assert pluginregistration_pb2.DESCRIPTOR.package == "pluginregistration"
    assert [(f.name, f.number, f.type, f.is_repeated) for f in info.fields] == [
        ("type", 1, STRING, False),
        ("name", 2, STRING, False),
        ("endpoint", 3, STRING, False),
        ("supported_versions", 4, STRING, True),
    ]
    status = pluginregistration_pb2.RegistrationStatus.DESCRIPTOR
    assert [(f.name, f.number, f.type) for f in status.fields] == [
        ("plugin_registered", 1, BOOL),
        ("error", 2, STRING),
    ]
    assert pluginregistration_pb2.RegistrationStatusResponse.DESCRIPTOR.fields == []
    assert pluginregistration_pb2.InfoRequest.DESCRIPTOR.fields == []


class _RecordingChannel:
    """Stands in for a grpc channel: remembers the method paths the generated stubs register."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def _register(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.methods.append(method)

    unary_unary = unary_stream = stream_unary = stream_stream = _register


def test_full_method_names_used_by_the_stubs() -> None:
    channel = _RecordingChannel()
    csi_pb2_grpc.IdentityStub(channel)
    csi_pb2_grpc.ControllerStub(channel)
    csi_pb2_grpc.NodeStub(channel)
    csi_pb2_grpc.GroupControllerStub(channel)
    csi_pb2_grpc.SnapshotMetadataStub(channel)
    pluginregistration_pb2_grpc.RegistrationStub(channel)
    for method in [
        "/csi.v1.Identity/Probe",
        "/csi.v1.Identity/GetPluginInfo",
        "/csi.v1.Controller/CreateVolume",
        "/csi.v1.Controller/ControllerPublishVolume",
        "/csi.v1.Controller/ControllerExpandVolume",
        "/csi.v1.Controller/ControllerModifyVolume",
        "/csi.v1.Node/NodeGetInfo",
        "/csi.v1.GroupController/CreateVolumeGroupSnapshot",
        "/csi.v1.SnapshotMetadata/GetMetadataDelta",
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    ]:
        assert method in channel.methods
    # Identity 3, Controller 15, GroupController 4, SnapshotMetadata 2, Node 8, Registration 2
    assert len(channel.methods) == 3 + 15 + 4 + 2 + 8 + 2


def test_committed_stubs_are_not_stale() -> None:
    assert stale_files() == []
