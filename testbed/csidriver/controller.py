"""Controller service: volume lifecycle, attachment, capacity, expansion and modification.

Behaviour follows the CSI spec's error tables and csi-driver-host-path, with these choices:

* CreateVolume is idempotent by name: same name with a compatible size, the same parameters and the
  same content source answers the existing volume; anything else is ALREADY_EXISTS.
* Placement: the first preferred segment, then the first requisite one, among the configured nodes'
  segments, that has room; none fitting is RESOURCE_EXHAUSTED. Without requirements a volume goes to
  this driver's own node.
* ControllerUnpublishVolume of an unknown volume succeeds (host-path does, and external-attacher
  relies on it); of an unknown node it is NOT_FOUND. An empty node_id unpublishes from every node.
* Exceeding max_volumes_per_node in ControllerPublishVolume is RESOURCE_EXHAUSTED (the spec's "Max
  volumes attached"); a single-node volume already attached elsewhere is FAILED_PRECONDITION.
"""

from __future__ import annotations

import grpc

from proto import csi_pb2
from testbed.csidriver.service import SINGLE_NODE_MODES
from testbed.csidriver.snapshots import SnapshotRPCs
from testbed.csidriver.state import Attachment, CsiError, Volume, matches, paginate, pools, require

Code = grpc.StatusCode


def volume_message(vol: Volume) -> csi_pb2.Volume:
    """The CSI Volume for a stored volume."""
    msg = csi_pb2.Volume(
        capacity_bytes=vol.capacity,
        volume_id=vol.volume_id,
        volume_context=vol.volume_context,
        accessible_topology=[csi_pb2.Topology(segments=vol.segments)] if vol.segments else [],
    )
    if vol.source_snapshot:
        msg.content_source.snapshot.snapshot_id = vol.source_snapshot
    elif vol.source_volume:
        msg.content_source.volume.volume_id = vol.source_volume
    return msg


class ControllerService(SnapshotRPCs):
    """The csi.v1.Controller handlers."""

    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        self.need_controller("", "ControllerGetCapabilities")
        rpc = csi_pb2.ControllerServiceCapability.RPC
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.ControllerServiceCapability(rpc=rpc(type=name))
                for name in sorted(self.config.controller_capabilities, key=rpc.Type.Value)
            ]
        )

    # --- volumes ---

    def CreateVolume(self, request: csi_pb2.CreateVolumeRequest) -> csi_pb2.CreateVolumeResponse:
        self.need_controller("CREATE_DELETE_VOLUME", "CreateVolume")
        require(request.name, "Name missing in request")
        require(request.volume_capabilities, "Volume Capabilities missing in request")
        types = {
            self.check_capability(c, self.config.controller_capabilities)[0]
            for c in request.volume_capabilities
        }
        if len(types) > 1:
            raise CsiError(Code.INVALID_ARGUMENT, "cannot have both block and mount access type")
        if request.mutable_parameters:
            if "MODIFY_VOLUME" not in self.config.controller_capabilities:
                raise CsiError(Code.INVALID_ARGUMENT, "mutable_parameters need the MODIFY_VOLUME capability")
            self.check_mutable_parameters(request.mutable_parameters)
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes
        if required < 0 or limit < 0:
            raise CsiError(Code.INVALID_ARGUMENT, "cannot have negative capacity")
        if limit and required > limit:
            raise CsiError(Code.INVALID_ARGUMENT, "capacity cannot exceed limit")
        source_snapshot, source_volume, source_size = self._content_source(request)

        existing = self.state.volume_by_name(request.name)
        if existing is not None:
            self._check_compatible(existing, request, source_snapshot, source_volume)
            return csi_pb2.CreateVolumeResponse(volume=volume_message(existing))

        size = required or (min(self.config.default_volume_size, limit) if limit else 0)
        size = size or self.config.default_volume_size
        if size < source_size:
            if required or (limit and source_size > limit):
                raise CsiError(
                    Code.OUT_OF_RANGE, f"requested size {size} is smaller than the source ({source_size})"
                )
            size = source_size
        if size > self.config.volume_size_limit:
            raise CsiError(
                Code.OUT_OF_RANGE,
                f"requested capacity {size} exceeds the maximum volume size {self.config.volume_size_limit}",
            )
        segments = self._place(request, size)
        vol = Volume(
            volume_id=self.state.new_volume_id(),
            name=request.name,
            capacity=size,
            parameters=dict(request.parameters),
            mutable_parameters=dict(request.mutable_parameters),
            volume_context=dict(request.parameters),
            access_type=types.pop(),
            segments=segments,
            source_snapshot=source_snapshot,
            source_volume=source_volume,
        )
        self.state.volumes[vol.volume_id] = vol
        return csi_pb2.CreateVolumeResponse(volume=volume_message(vol))

    def _content_source(self, request: csi_pb2.CreateVolumeRequest) -> tuple[str, str, int]:
        """(snapshot id, volume id, source size) of the request's content source, checked."""
        if not request.HasField("volume_content_source"):
            return "", "", 0
        src = request.volume_content_source
        kind = src.WhichOneof("type")
        if kind == "snapshot":
            if "CREATE_DELETE_SNAPSHOT" not in self.config.controller_capabilities:
                raise CsiError(Code.INVALID_ARGUMENT, "restoring from a snapshot is not supported")
            snap = self.state.snapshots.get(src.snapshot.snapshot_id)
            if snap is None:
                raise CsiError(Code.NOT_FOUND, f"source snapshot {src.snapshot.snapshot_id} not found")
            return snap.snapshot_id, "", snap.size
        if kind == "volume":
            if "CLONE_VOLUME" not in self.config.controller_capabilities:
                raise CsiError(Code.INVALID_ARGUMENT, "cloning volumes is not supported")
            vol = self.state.volumes.get(src.volume.volume_id)
            if vol is None:
                raise CsiError(Code.NOT_FOUND, f"source volume {src.volume.volume_id} not found")
            return "", vol.volume_id, vol.capacity
        raise CsiError(Code.INVALID_ARGUMENT, "volume_content_source has neither snapshot nor volume")

    def _check_compatible(
        self, vol: Volume, request: csi_pb2.CreateVolumeRequest, snapshot: str, volume: str
    ) -> None:
        name = request.name
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes
        if vol.capacity < required or (limit and vol.capacity > limit):
            raise CsiError(
                Code.ALREADY_EXISTS, f"volume {name} already exists with a different size ({vol.capacity})"
            )
        if dict(request.parameters) != vol.parameters:
            raise CsiError(Code.ALREADY_EXISTS, f"volume {name} already exists with different parameters")
        if (snapshot, volume) != (vol.source_snapshot, vol.source_volume):
            raise CsiError(Code.ALREADY_EXISTS, f"volume {name} already exists with a different source")

    def _place(self, request: csi_pb2.CreateVolumeRequest, size: int) -> dict[str, str]:
        """The topology segment a new volume of `size` bytes goes to."""
        cfg = self.config
        if not cfg.topology:
            candidates: list[dict[str, str]] = [{}]
        else:
            known = pools(cfg.nodes.values())
            reqs = request.accessibility_requirements
            wanted = [dict(t.segments) for t in [*reqs.preferred, *reqs.requisite]]
            if wanted:
                candidates = pools(p for w in wanted for p in known if matches(p, w))
                if not candidates:
                    raise CsiError(
                        Code.RESOURCE_EXHAUSTED,
                        "no known topology segment satisfies accessibility_requirements",
                    )
            else:
                candidates = pools([cfg.node_segments(cfg.node_id), *known])
        for segments in candidates:
            if cfg.capacity - self.state.used(segments) >= size:
                return segments
        raise CsiError(Code.RESOURCE_EXHAUSTED, f"insufficient capacity for {size} bytes")

    def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest) -> csi_pb2.DeleteVolumeResponse:
        self.need_controller("CREATE_DELETE_VOLUME", "DeleteVolume")
        require(request.volume_id, "Volume ID missing in request")
        vol = self.state.volumes.get(request.volume_id)
        if vol is None:
            return csi_pb2.DeleteVolumeResponse()
        if self.config.check_volume_lifecycle and (vol.attachments or vol.staged or vol.published):
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is still in use")
        del self.state.volumes[vol.volume_id]
        return csi_pb2.DeleteVolumeResponse()

    def ControllerPublishVolume(
        self, request: csi_pb2.ControllerPublishVolumeRequest
    ) -> csi_pb2.ControllerPublishVolumeResponse:
        self.need_controller("PUBLISH_UNPUBLISH_VOLUME", "ControllerPublishVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.node_id, "Node ID missing in request")
        require(request.HasField("volume_capability"), "Volume capability missing in request")
        _, mode = self.check_capability(request.volume_capability, self.config.controller_capabilities)
        vol = self.state.get_volume(request.volume_id)
        node = request.node_id
        if node not in self.config.nodes:
            raise CsiError(Code.NOT_FOUND, f"node {node} not found")
        current = vol.attachments.get(node)
        if current is not None:
            if (current.readonly, current.access_mode) != (request.readonly, mode):
                raise CsiError(
                    Code.ALREADY_EXISTS, f"volume {vol.volume_id} published to {node} incompatibly"
                )
            return csi_pb2.ControllerPublishVolumeResponse(publish_context=current.publish_context)
        if vol.attachments and mode in SINGLE_NODE_MODES:
            others = ", ".join(sorted(vol.attachments))
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is published to node {others}")
        limit = self.config.max_volumes_per_node
        if limit and self.state.attachments_on(node) >= limit:
            raise CsiError(Code.RESOURCE_EXHAUSTED, f"node {node} has reached max_volumes_per_node {limit}")
        attachment = Attachment(
            node_id=node,
            readonly=request.readonly,
            access_mode=mode,
            publish_context={"device": self.state.new_device()},
        )
        vol.attachments[node] = attachment
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=attachment.publish_context)

    def ControllerUnpublishVolume(
        self, request: csi_pb2.ControllerUnpublishVolumeRequest
    ) -> csi_pb2.ControllerUnpublishVolumeResponse:
        self.need_controller("PUBLISH_UNPUBLISH_VOLUME", "ControllerUnpublishVolume")
        require(request.volume_id, "Volume ID missing in request")
        node = request.node_id
        if node and node not in self.config.nodes:
            raise CsiError(Code.NOT_FOUND, f"node {node} not found")
        vol = self.state.volumes.get(request.volume_id)
        if vol is None:
            return csi_pb2.ControllerUnpublishVolumeResponse()
        mounted_here = vol.staged or vol.published
        if self.config.check_volume_lifecycle and mounted_here and node in ("", self.config.node_id):
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is still staged or published")
        for n in [node] if node else list(vol.attachments):
            vol.attachments.pop(n, None)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        self.need_controller("", "ValidateVolumeCapabilities")
        require(request.volume_id, "Volume ID missing in request")
        require(request.volume_capabilities, "Volume capabilities missing in request")
        vol = self.state.get_volume(request.volume_id)
        for cap in request.volume_capabilities:
            access_type, _ = self.check_capability(cap, self.config.controller_capabilities)
            if access_type != vol.access_type:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(
                    message=f"volume {vol.volume_id} is a {vol.access_type} volume, not {access_type}"
                )
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
            mutable_parameters=request.mutable_parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ListVolumes(self, request: csi_pb2.ListVolumesRequest) -> csi_pb2.ListVolumesResponse:
        self.need_controller("LIST_VOLUMES", "ListVolumes")
        vols = [self.state.volumes[k] for k in sorted(self.state.volumes)]
        page, next_token = paginate(
            vols, max_entries=request.max_entries, starting_token=request.starting_token
        )
        with_nodes = "LIST_VOLUMES_PUBLISHED_NODES" in self.config.controller_capabilities
        status = csi_pb2.ListVolumesResponse.VolumeStatus
        entries = [
            csi_pb2.ListVolumesResponse.Entry(
                volume=volume_message(v),
                status=status(published_node_ids=sorted(v.attachments)) if with_nodes else None,
            )
            for v in page
        ]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=next_token)

    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest
    ) -> csi_pb2.ControllerGetVolumeResponse:
        self.need_controller("GET_VOLUME", "ControllerGetVolume")
        require(request.volume_id, "Volume ID missing in request")
        vol = self.state.get_volume(request.volume_id)
        status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
            published_node_ids=sorted(vol.attachments),
            volume_condition=csi_pb2.VolumeCondition(abnormal=False, message="healthy"),
        )
        return csi_pb2.ControllerGetVolumeResponse(volume=volume_message(vol), status=status)

    def GetCapacity(self, request: csi_pb2.GetCapacityRequest) -> csi_pb2.GetCapacityResponse:
        self.need_controller("GET_CAPACITY", "GetCapacity")
        cfg = self.config
        if cfg.topology:
            wanted = dict(request.accessible_topology.segments)
            segs = [p for p in pools(cfg.nodes.values()) if matches(p, wanted)]
        else:
            segs = [{}]
        free = [max(0, cfg.capacity - self.state.used(s)) for s in segs]
        largest = min(cfg.volume_size_limit, max(free, default=0))
        response = csi_pb2.GetCapacityResponse(available_capacity=sum(free))
        response.maximum_volume_size.value = largest
        response.minimum_volume_size.value = 0
        return response

    def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        self.need_controller("EXPAND_VOLUME", "ControllerExpandVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.HasField("capacity_range"), "Capacity range missing in request")
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes
        if required < 0 or limit < 0 or (limit and required > limit):
            raise CsiError(Code.INVALID_ARGUMENT, "invalid capacity_range")
        if required > self.config.volume_size_limit:
            raise CsiError(
                Code.OUT_OF_RANGE,
                f"requested capacity {required} exceeds the maximum {self.config.volume_size_limit}",
            )
        vol = self.state.get_volume(request.volume_id)
        if self.config.volume_expansion == "OFFLINE" and (vol.attachments or vol.published):
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is in use (offline expansion)")
        growth = required - vol.capacity
        if growth > 0:
            if growth > self.config.capacity - self.state.used(vol.segments):
                raise CsiError(Code.OUT_OF_RANGE, f"not enough capacity to grow by {growth} bytes")
            vol.capacity = required
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=vol.capacity, node_expansion_required=self.config.node_expansion_required
        )

    def ControllerModifyVolume(
        self, request: csi_pb2.ControllerModifyVolumeRequest
    ) -> csi_pb2.ControllerModifyVolumeResponse:
        self.need_controller("MODIFY_VOLUME", "ControllerModifyVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.mutable_parameters, "Mutable parameters missing in request")
        self.check_mutable_parameters(request.mutable_parameters)
        vol = self.state.get_volume(request.volume_id)
        vol.mutable_parameters.update(request.mutable_parameters)
        return csi_pb2.ControllerModifyVolumeResponse()
