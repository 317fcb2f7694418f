"""Driver configuration: what the test driver advertises and the limits it enforces.

Capabilities are named by their CSI enum names (``"CREATE_DELETE_VOLUME"``, ``"STAGE_UNSTAGE_VOLUME"``)
so the same strings work in Python, on the command line and in the JSON control endpoint. The defaults
mirror csi-driver-host-path deployed with attach, expansion and capacity tracking enabled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proto import csi_pb2

GiB = 1024**3

CONTROLLER_CAPABILITIES = frozenset(csi_pb2.ControllerServiceCapability.RPC.Type.keys()) - {"UNKNOWN"}
NODE_CAPABILITIES = frozenset(csi_pb2.NodeServiceCapability.RPC.Type.keys()) - {"UNKNOWN"}
EXPANSION_MODES = frozenset({"ONLINE", "OFFLINE"})

DEFAULT_CONTROLLER_CAPABILITIES = frozenset(
    {
        "CREATE_DELETE_VOLUME",
        "PUBLISH_UNPUBLISH_VOLUME",
        "LIST_VOLUMES",
        "LIST_VOLUMES_PUBLISHED_NODES",
        "GET_CAPACITY",
        "CREATE_DELETE_SNAPSHOT",
        "LIST_SNAPSHOTS",
        "CLONE_VOLUME",
        "EXPAND_VOLUME",
        "PUBLISH_READONLY",
        "SINGLE_NODE_MULTI_WRITER",
        "MODIFY_VOLUME",
        "GET_VOLUME",
    }
)
DEFAULT_NODE_CAPABILITIES = frozenset(
    {"STAGE_UNSTAGE_VOLUME", "EXPAND_VOLUME", "GET_VOLUME_STATS", "SINGLE_NODE_MULTI_WRITER"}
)
DEFAULT_TOPOLOGY_KEY = "topology.hostpath.csi/node"


def _frozen(mapping: Mapping[str, Mapping[str, str]]) -> Mapping[str, Mapping[str, str]]:
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in mapping.items()})


@dataclass(frozen=True, kw_only=True)
class DriverConfig:
    """Everything a test can switch on the driver; frozen, replace it with `dataclasses.replace`."""

    name: str = "hostpath.csi.k8s.io"
    """Driver name from GetPluginInfo (host-path's default; `--drivername`)."""
    vendor_version: str = "testbed-1.0.0"
    """vendor_version from GetPluginInfo."""
    node_id: str = "node-1"
    """The node this driver's Node service runs on (NodeGetInfo; `--nodeid`)."""
    topology_key: str = DEFAULT_TOPOLOGY_KEY
    """Segment key of the default per-node topology (`--topology-key`)."""
    nodes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Known nodes and their topology segments. Empty means just `node_id` with
    `{topology_key: node_id}` (resolved at construction). ControllerPublishVolume to a node not
    listed here is NOT_FOUND."""
    controller_service: bool = True
    """Advertise CONTROLLER_SERVICE; when off every Controller RPC answers UNIMPLEMENTED."""
    node_service: bool = True
    """Serve the Node service; when off every Node RPC answers UNIMPLEMENTED."""
    topology: bool = True
    """Advertise VOLUME_ACCESSIBILITY_CONSTRAINTS and place volumes in topology segments."""
    volume_expansion: str | None = "ONLINE"
    """Plugin VolumeExpansion capability: "ONLINE", "OFFLINE" or None (not advertised)."""
    controller_capabilities: frozenset[str] = DEFAULT_CONTROLLER_CAPABILITIES
    """ControllerServiceCapability.RPC names; an RPC whose capability is absent is UNIMPLEMENTED."""
    node_capabilities: frozenset[str] = DEFAULT_NODE_CAPABILITIES
    """NodeServiceCapability.RPC names; an RPC whose capability is absent is UNIMPLEMENTED."""
    capacity: int = 100 * GiB
    """Bytes available in each topology segment (the whole driver when topology is off)."""
    default_volume_size: int = 1 * GiB
    """Size of a volume created without capacity_range (bytes)."""
    max_volume_size: int | None = None
    """Largest single volume (bytes); None means `capacity`. Bigger requests are OUT_OF_RANGE
    (see `volume_size_limit`)."""
    max_volumes_per_node: int = 0
    """NodeGetInfo max_volumes_per_node and the ControllerPublishVolume limit; 0 is unlimited."""
    node_expansion_required: bool = True
    """ControllerExpandVolume's node_expansion_required answer."""
    accepted_mutable_parameters: frozenset[str] = frozenset()
    """Mutable parameter names accepted by ControllerModifyVolume; empty accepts any."""
    check_volume_lifecycle: bool = False
    """Refuse (FAILED_PRECONDITION) to delete a published volume or unpublish a staged one."""
    ready: bool | None = True
    """Initial Probe answer: True/False, or None for a ProbeResponse without `ready`."""
    call_log_size: int = 10_000
    """How many finished calls `TestDriver.calls` keeps (oldest dropped first)."""

    def __post_init__(self) -> None:
        _check_names("controller capability", self.controller_capabilities, CONTROLLER_CAPABILITIES)
        _check_names("node capability", self.node_capabilities, NODE_CAPABILITIES)
        if self.volume_expansion is not None:
            _check_names("volume expansion", {self.volume_expansion}, EXPANSION_MODES)
        nodes = self.nodes or {self.node_id: {self.topology_key: self.node_id}}
        object.__setattr__(self, "nodes", _frozen(nodes))
        object.__setattr__(self, "controller_capabilities", frozenset(self.controller_capabilities))
        object.__setattr__(self, "node_capabilities", frozenset(self.node_capabilities))
        object.__setattr__(self, "accepted_mutable_parameters", frozenset(self.accepted_mutable_parameters))

    @property
    def volume_size_limit(self) -> int:
        """`max_volume_size` with its default resolved."""
        return self.capacity if self.max_volume_size is None else self.max_volume_size

    def node_segments(self, node_id: str) -> Mapping[str, str]:
        """Topology segments of a known node ({} when topology is off)."""
        return self.nodes[node_id] if self.topology else {}


def _check_names(what: str, names: frozenset[str] | set[str], known: frozenset[str]) -> None:
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def parse_capabilities(spec: str, *, default: frozenset[str]) -> frozenset[str]:
    """Parse a command-line capability list.

    ``"A,B"`` replaces the defaults; ``"+A,-B"`` adds to / removes from them; ``""`` means none.
    """
    items = [s.strip().upper() for s in spec.split(",") if s.strip()]
    if items and all(s[0] in "+-" for s in items):
        result = set(default)
        for item in items:
            (result.add if item[0] == "+" else result.discard)(item[1:])
        return frozenset(result)
    return frozenset(items)
