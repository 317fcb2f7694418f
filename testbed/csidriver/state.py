"""Driver state: the in-memory backend (volumes, snapshots, attachments, node mounts).

This is what a real storage system would hold. It survives a simulated driver restart (the driver
container restarts, the storage does not) unless the restart is told to lose it. The RPC handlers
mutate it synchronously, without awaiting, so each RPC's effect is atomic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

T = TypeVar("T")


class CsiError(Exception):
    """An RPC failure with its gRPC status code, raised by the handlers and sent to the caller."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def require(value: object, message: str) -> None:
    """INVALID_ARGUMENT with `message` when a required field is empty."""
    if not value:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass
class Attachment:
    """A ControllerPublishVolume of one volume to one node."""

    node_id: str
    readonly: bool
    access_mode: int
    publish_context: dict[str, str]


@dataclass
class Mount:
    """A NodeStageVolume (at a staging path) or NodePublishVolume (at a target path)."""

    path: str
    readonly: bool
    access_type: str
    access_mode: int
    staging_path: str = ""


@dataclass
class Volume:
    """One provisioned volume and everything done to it since."""

    volume_id: str
    name: str
    capacity: int
    parameters: dict[str, str]
    mutable_parameters: dict[str, str]
    volume_context: dict[str, str]
    access_type: str
    """"block" or "mount"."""
    segments: dict[str, str]
    """The topology segments it lives in ({} when topology is off)."""
    source_snapshot: str = ""
    source_volume: str = ""
    attachments: dict[str, Attachment] = field(default_factory=dict)
    """By node id."""
    staged: dict[str, Mount] = field(default_factory=dict)
    """By staging target path."""
    published: dict[str, Mount] = field(default_factory=dict)
    """By target path."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for the control endpoint)."""
        return {
            "volume_id": self.volume_id,
            "name": self.name,
            "capacity_bytes": self.capacity,
            "parameters": self.parameters,
            "mutable_parameters": self.mutable_parameters,
            "volume_context": self.volume_context,
            "access_type": self.access_type,
            "segments": self.segments,
            "source_snapshot": self.source_snapshot,
            "source_volume": self.source_volume,
            "published_node_ids": sorted(self.attachments),
            "staged": sorted(self.staged),
            "published": sorted(self.published),
        }


@dataclass
class Snapshot:
    """One snapshot of a volume."""

    snapshot_id: str
    name: str
    source_volume_id: str
    size: int
    parameters: dict[str, str]
    creation_time: float
    """Seconds since the epoch."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for the control endpoint)."""
        return {
            "snapshot_id": self.snapshot_id,
            "name": self.name,
            "source_volume_id": self.source_volume_id,
            "size_bytes": self.size,
            "parameters": self.parameters,
            "creation_time": self.creation_time,
        }


@dataclass
class DriverState:
    """The backend: volumes and snapshots by id, plus the counters that mint new ids."""

    volumes: dict[str, Volume] = field(default_factory=dict)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    next_volume: int = 1
    next_snapshot: int = 1
    next_device: int = 0

    def new_volume_id(self) -> str:
        """A fresh id; ids sort in creation order."""
        vid = f"vol-{self.next_volume:06d}"
        self.next_volume += 1
        return vid

    def new_snapshot_id(self) -> str:
        """A fresh id; ids sort in creation order."""
        sid = f"snap-{self.next_snapshot:06d}"
        self.next_snapshot += 1
        return sid

    def new_device(self) -> str:
        """A fresh fake device path for a publish_context."""
        self.next_device += 1
        return f"/dev/fake-{self.next_device}"

    def volume_by_name(self, name: str) -> Volume | None:
        """The volume created under `name`, if any."""
        return next((v for v in self.volumes.values() if v.name == name), None)

    def snapshot_by_name(self, name: str) -> Snapshot | None:
        """The snapshot created under `name`, if any."""
        return next((s for s in self.snapshots.values() if s.name == name), None)

    def get_volume(self, volume_id: str) -> Volume:
        """The volume, or NOT_FOUND."""
        try:
            return self.volumes[volume_id]
        except KeyError:
            raise CsiError(grpc.StatusCode.NOT_FOUND, f"volume {volume_id} not found") from None

    def used(self, segments: Mapping[str, str]) -> int:
        """Bytes allocated to volumes in the topology segment `segments`."""
        return sum(v.capacity for v in self.volumes.values() if v.segments == segments)

    def attachments_on(self, node_id: str) -> int:
        """How many volumes are ControllerPublished to `node_id`."""
        return sum(1 for v in self.volumes.values() if node_id in v.attachments)

    def published_nodes(self) -> dict[str, list[str]]:
        """Volume id -> node ids it is ControllerPublished to."""
        return {v.volume_id: sorted(v.attachments) for v in self.volumes.values() if v.attachments}

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dump: volumes, snapshots and attachments."""
        return {
            "volumes": [v.as_dict() for v in self.volumes.values()],
            "snapshots": [s.as_dict() for s in self.snapshots.values()],
            "publications": self.published_nodes(),
        }


def matches(segments: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """True when the segment `segments` satisfies the topology requirement `wanted`."""
    return all(segments.get(k) == v for k, v in wanted.items())


def pools(segment_list: Iterable[Mapping[str, str]]) -> list[dict[str, str]]:
    """The distinct topology segments (capacity pools), in first-seen order."""
    out: list[dict[str, str]] = []
    for seg in segment_list:
        if dict(seg) not in out:
            out.append(dict(seg))
    return out


def paginate(items: Sequence[T], *, max_entries: int, starting_token: str) -> tuple[Sequence[T], str]:
    """One page of `items` and the next token ("" at the end).

    Tokens are decimal offsets, as in csi-driver-host-path; a token that is not a number or lies past
    the end is ABORTED (the spec's "invalid starting_token"), a negative max_entries INVALID_ARGUMENT.
    """
    if max_entries < 0:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, "max_entries must not be negative")
    start = 0
    if starting_token:
        if not starting_token.isdecimal() or int(starting_token) > len(items):
            raise CsiError(grpc.StatusCode.ABORTED, f"invalid starting_token {starting_token!r}")
        start = int(starting_token)
    end = len(items) if max_entries == 0 else min(len(items), start + max_entries)
    return items[start:end], str(end) if end < len(items) else ""
