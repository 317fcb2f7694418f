"""Snapshot RPCs: CreateSnapshot, DeleteSnapshot and ListSnapshots of the Controller service.

Snapshots are idempotent by name (same name and source volume → the same snapshot, another source →
ALREADY_EXISTS), are ready at once, have the source volume's size and do not use capacity. Deleting a
missing snapshot succeeds. ListSnapshots filters by snapshot_id or source_volume_id (an unknown id is
an empty list, not an error) and pages with decimal offset tokens like ListVolumes.
"""

from __future__ import annotations

import time

import grpc

from proto import csi_pb2
from testbed.csidriver.service import Service
from testbed.csidriver.state import CsiError, Snapshot, paginate, require


def snapshot_message(snap: Snapshot) -> csi_pb2.Snapshot:
    """The CSI Snapshot for a stored snapshot."""
    msg = csi_pb2.Snapshot(
        size_bytes=snap.size,
        snapshot_id=snap.snapshot_id,
        source_volume_id=snap.source_volume_id,
        ready_to_use=True,
    )
    msg.creation_time.FromNanoseconds(int(snap.creation_time * 1e9))
    return msg


class SnapshotRPCs(Service):
    """The snapshot half of the csi.v1.Controller handlers."""

    def CreateSnapshot(self, request: csi_pb2.CreateSnapshotRequest) -> csi_pb2.CreateSnapshotResponse:
        self.need_controller("CREATE_DELETE_SNAPSHOT", "CreateSnapshot")
        require(request.name, "Name missing in request")
        require(request.source_volume_id, "SourceVolumeId missing in request")
        existing = self.state.snapshot_by_name(request.name)
        if existing is not None:
            if existing.source_volume_id != request.source_volume_id:
                raise CsiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"snapshot {request.name} already exists with a different source volume",
                )
            return csi_pb2.CreateSnapshotResponse(snapshot=snapshot_message(existing))
        vol = self.state.get_volume(request.source_volume_id)
        snap = Snapshot(
            snapshot_id=self.state.new_snapshot_id(),
            name=request.name,
            source_volume_id=vol.volume_id,
            size=vol.capacity,
            parameters=dict(request.parameters),
            creation_time=time.time(),
        )
        self.state.snapshots[snap.snapshot_id] = snap
        return csi_pb2.CreateSnapshotResponse(snapshot=snapshot_message(snap))

    def DeleteSnapshot(self, request: csi_pb2.DeleteSnapshotRequest) -> csi_pb2.DeleteSnapshotResponse:
        self.need_controller("CREATE_DELETE_SNAPSHOT", "DeleteSnapshot")
        require(request.snapshot_id, "Snapshot ID missing in request")
        self.state.snapshots.pop(request.snapshot_id, None)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(self, request: csi_pb2.ListSnapshotsRequest) -> csi_pb2.ListSnapshotsResponse:
        self.need_controller("LIST_SNAPSHOTS", "ListSnapshots")
        snaps = [self.state.snapshots[k] for k in sorted(self.state.snapshots)]
        if request.snapshot_id:
            snaps = [s for s in snaps if s.snapshot_id == request.snapshot_id]
        if request.source_volume_id:
            snaps = [s for s in snaps if s.source_volume_id == request.source_volume_id]
        page, next_token = paginate(
            snaps, max_entries=request.max_entries, starting_token=request.starting_token
        )
        entries = [csi_pb2.ListSnapshotsResponse.Entry(snapshot=snapshot_message(s)) for s in page]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=next_token)
