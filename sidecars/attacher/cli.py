"""The csi-attacher command line: external-attacher v4.12's flags (REFERENCE §2.1) and one frozen config.

Go `flag` syntax (`-flag` and `--flag` alike). Besides the standard flags (§0.2: no `--master`, and
`$KUBECONFIG` is not read) and the logging flags (§0.1):

    --resync 10m  --timeout 15s  --retry-interval-start 1s  --retry-interval-max 5m
    --worker-threads 10  --max-entries 0  --default-fstype ""  --reconcile-sync 1m
    --max-grpc-log-length -1  --feature-gates MutableCSINodeAllocatableCount=true,...

`--worker-threads=0` exits 1, as upstream ("option -worker-threads must be greater than zero").
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError
from common.featuregates import ATTACHER_GATES, add_feature_gates_flag, feature_gates
from common.flags import Flags, FlagSet
from common.runtime import StandardConfig
from common.standardflags import add_debug_flags, add_logging_flags, add_standard_flags

PROGRAM = "csi-attacher"

_RETRY_START = (
    "Initial retry interval of failed create volume or deletion. It doubles with each failure, "
    "up to retry-interval-max."
)


def build_flagset() -> FlagSet:
    """Every flag csi-attacher v4.12 accepts, with upstream's defaults and usage texts."""
    fs = FlagSet(PROGRAM)
    add_standard_flags(fs, csi_timeout_default=15.0)
    add_logging_flags(fs)
    add_feature_gates_flag(fs, ATTACHER_GATES)
    add_debug_flags(fs)
    fs.duration("resync", 600.0, "Resync interval of the controller.")
    fs.unsigned("worker-threads", 10, "Number of attacher worker threads")
    fs.integer("max-entries", 0, "Max entries per each page in volume lister call, 0 means no limit.")
    fs.duration("retry-interval-start", 1.0, _RETRY_START)
    fs.duration("retry-interval-max", 300.0, "Maximum retry interval of failed create volume or deletion.")
    fs.string(
        "default-fstype",
        "",
        "The default filesystem type of the volume to publish. Defaults to empty string",
    )
    fs.duration("reconcile-sync", 60.0, "Resync interval of the VolumeAttachment reconciler.")
    fs.integer(
        "max-grpc-log-length",
        -1,
        "The maximum amount of characters logged for every grpc responses. Defaults to no limit",
    )
    return fs


@dataclass(frozen=True, kw_only=True)
class AttacherConfig:
    """What csi-attacher was asked to do; durations in seconds."""

    standard: StandardConfig
    """The csi-lib-utils standard flags (`--csi-address`, `--timeout` (15s here), leader election, ...)."""
    resync: float = 600.0
    """`--resync` (10m): how often the informers hand every cached object to the handlers again."""
    worker_threads: int = 10
    """`--worker-threads` (10): workers of the VolumeAttachment queue, and as many of the PV queue."""
    max_entries: int = 0
    """`--max-entries` (0 = no limit): ListVolumes page size of the reconciler."""
    retry_interval_start: float = 1.0
    """`--retry-interval-start` (1s): first backoff of a failed VA or PV sync; doubles per failure."""
    retry_interval_max: float = 300.0
    """`--retry-interval-max` (5m): the backoff's ceiling."""
    default_fstype: str = ""
    """`--default-fstype` (""): the fsType published when the PV's `spec.csi.fsType` is empty."""
    reconcile_sync: float = 60.0
    """`--reconcile-sync` (1m): period of the ListVolumes reconciler (with LIST_VOLUMES_PUBLISHED_NODES)."""
    max_grpc_log_length: int = -1
    """`--max-grpc-log-length` (-1 = no limit): characters of each gRPC response logged at `--v=5`."""
    error_code_on_attach_error: bool = True
    """Feature gate `MutableCSINodeAllocatableCount` (GA, on): `attachError.errorCode` = the gRPC code."""

    @property
    def timeout(self) -> float:
        """`--timeout` (15s): ControllerPublish/Unpublish, ListVolumes and Probe deadline."""
        return self.standard.timeout

    @classmethod
    def from_flags(cls, flags: Flags) -> AttacherConfig:
        """Build the config; ConfigError (exit 1) for values upstream refuses after parsing."""
        workers = flags.unsigned("worker-threads")
        if workers == 0:
            raise ConfigError("option -worker-threads must be greater than zero")
        gates = feature_gates(flags)
        return cls(
            standard=StandardConfig.from_flags(flags),
            resync=flags.duration("resync"),
            worker_threads=workers,
            max_entries=flags.integer("max-entries"),
            retry_interval_start=flags.duration("retry-interval-start"),
            retry_interval_max=flags.duration("retry-interval-max"),
            default_fstype=flags.string("default-fstype"),
            reconcile_sync=flags.duration("reconcile-sync"),
            max_grpc_log_length=flags.integer("max-grpc-log-length"),
            error_code_on_attach_error=gates.enabled("MutableCSINodeAllocatableCount"),
        )
