"""Node service: staging and publishing bookkeeping, node expansion, volume stats and NodeGetInfo.

No real mounts are made: NodeStageVolume records the staging path and NodePublishVolume the target
path on the volume (`Volume.staged`, `Volume.published`), so tests can see what a kubelet would have
mounted. The Node service is this driver's `node_id`; node RPCs on an unknown volume are NOT_FOUND, as
csi-sanity expects. Staging is not checked against ControllerPublishVolume (host-path does not either).
"""

from __future__ import annotations

import grpc

from proto import csi_pb2
from testbed.csidriver.service import Service
from testbed.csidriver.state import CsiError, Mount, require

Code = grpc.StatusCode


class NodeService(Service):
    """The csi.v1.Node handlers."""

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        self.need_node("", "NodeGetCapabilities")
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=rpc(type=name))
                for name in sorted(self.config.node_capabilities, key=rpc.Type.Value)
            ]
        )

    def NodeGetInfo(self, request: csi_pb2.NodeGetInfoRequest) -> csi_pb2.NodeGetInfoResponse:
        self.need_node("", "NodeGetInfo")
        cfg = self.config
        response = csi_pb2.NodeGetInfoResponse(
            node_id=cfg.node_id, max_volumes_per_node=cfg.max_volumes_per_node
        )
        if cfg.topology:
            response.accessible_topology.segments.update(cfg.node_segments(cfg.node_id))
        return response

    def NodeStageVolume(self, request: csi_pb2.NodeStageVolumeRequest) -> csi_pb2.NodeStageVolumeResponse:
        self.need_node("STAGE_UNSTAGE_VOLUME", "NodeStageVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.staging_target_path, "Staging target path missing in request")
        require(request.HasField("volume_capability"), "Volume capability missing in request")
        access_type, mode = self.check_capability(request.volume_capability, self.config.node_capabilities)
        vol = self.state.get_volume(request.volume_id)
        if access_type != vol.access_type:
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is a {vol.access_type} volume")
        path = request.staging_target_path
        current = vol.staged.get(path)
        if current is not None:
            if (current.access_type, current.access_mode) != (access_type, mode):
                raise CsiError(Code.ALREADY_EXISTS, f"volume {vol.volume_id} staged at {path} incompatibly")
            return csi_pb2.NodeStageVolumeResponse()
        vol.staged[path] = Mount(path=path, readonly=False, access_type=access_type, access_mode=mode)
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        self.need_node("STAGE_UNSTAGE_VOLUME", "NodeUnstageVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.staging_target_path, "Staging target path missing in request")
        vol = self.state.get_volume(request.volume_id)
        path = request.staging_target_path
        users = [m.path for m in vol.published.values() if m.staging_path == path]
        if users and self.config.check_volume_lifecycle:
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is still published at {users}")
        vol.staged.pop(path, None)
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest
    ) -> csi_pb2.NodePublishVolumeResponse:
        self.need_node("", "NodePublishVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.target_path, "Target path missing in request")
        require(request.HasField("volume_capability"), "Volume capability missing in request")
        access_type, mode = self.check_capability(request.volume_capability, self.config.node_capabilities)
        vol = self.state.get_volume(request.volume_id)
        staging = request.staging_target_path
        if "STAGE_UNSTAGE_VOLUME" in self.config.node_capabilities:
            if not staging:
                raise CsiError(Code.FAILED_PRECONDITION, "staging target path not set")
            if staging not in vol.staged:
                raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is not staged at {staging}")
        if access_type != vol.access_type:
            raise CsiError(Code.FAILED_PRECONDITION, f"volume {vol.volume_id} is a {vol.access_type} volume")
        path = request.target_path
        wanted = Mount(
            path=path,
            readonly=request.readonly,
            access_type=access_type,
            access_mode=mode,
            staging_path=staging,
        )
        current = vol.published.get(path)
        if current is not None:
            if current != wanted:
                raise CsiError(
                    Code.ALREADY_EXISTS, f"volume {vol.volume_id} published at {path} incompatibly"
                )
            return csi_pb2.NodePublishVolumeResponse()
        vol.published[path] = wanted
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        self.need_node("", "NodeUnpublishVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.target_path, "Target path missing in request")
        vol = self.state.get_volume(request.volume_id)
        vol.published.pop(request.target_path, None)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        self.need_node("GET_VOLUME_STATS", "NodeGetVolumeStats")
        require(request.volume_id, "Volume ID missing in request")
        require(request.volume_path, "Volume path missing in request")
        vol = self.state.get_volume(request.volume_id)
        if request.volume_path not in vol.published and request.volume_path not in vol.staged:
            raise CsiError(Code.NOT_FOUND, f"volume {vol.volume_id} is not mounted at {request.volume_path}")
        usage = csi_pb2.VolumeUsage
        response = csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                usage(unit=usage.BYTES, total=vol.capacity, used=0, available=vol.capacity),
                usage(unit=usage.INODES, total=1_000_000, used=1, available=999_999),
            ]
        )
        if "VOLUME_CONDITION" in self.config.node_capabilities:
            response.volume_condition.abnormal = False
            response.volume_condition.message = "healthy"
        return response

    def NodeExpandVolume(self, request: csi_pb2.NodeExpandVolumeRequest) -> csi_pb2.NodeExpandVolumeResponse:
        self.need_node("EXPAND_VOLUME", "NodeExpandVolume")
        require(request.volume_id, "Volume ID missing in request")
        require(request.volume_path, "Volume path missing in request")
        vol = self.state.get_volume(request.volume_id)
        if request.volume_path not in vol.published and request.volume_path not in vol.staged:
            raise CsiError(Code.NOT_FOUND, f"volume {vol.volume_id} is not mounted at {request.volume_path}")
        required = request.capacity_range.required_bytes
        limit = request.capacity_range.limit_bytes
        if required > self.config.volume_size_limit or (limit and required > limit):
            raise CsiError(Code.OUT_OF_RANGE, f"cannot expand volume {vol.volume_id} to {required} bytes")
        vol.capacity = max(vol.capacity, required)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=vol.capacity)
