"""csi-resizer's command line: every flag external-resizer accepts (REFERENCE §0.2, §3.1), into one config.

Go `flag` syntax (`-flag` and `--flag` alike). Besides csi-lib-utils' standard flags and the logging
flags: `--master`, `--resync-period`, `--workers`, `--extra-modify-metadata`,
`--retry-interval-start`, `--retry-interval-max`, `--handle-volume-inuse-error` and `--feature-gates`
(AnnotateFsResize, RecoverVolumeExpansionFailure, VolumeAttributesClass, ReleaseLeaderElectionOnExit).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.featuregates import RESIZER_GATES, add_feature_gates_flag, feature_gates
from common.flags import Flags, FlagSet
from common.runtime import StandardConfig
from common.standardflags import add_debug_flags, add_logging_flags, add_standard_flags

PROGRAM = "csi-resizer"


def build_flagset() -> FlagSet:
    """The flags of external-resizer's `main.go`, with its defaults and usage texts."""
    fs = FlagSet(PROGRAM)
    add_standard_flags(fs, csi_timeout_default=10.0)
    add_logging_flags(fs)
    fs.string(
        "master",
        "",
        "Master URL to build a client config from. Either this or kubeconfig needs to be set if the "
        "provisioner is being run out of cluster.",
    )
    fs.duration("resync-period", 600.0, "Resync period for cache")
    fs.integer("workers", 10, "Concurrency to process multiple resize requests")
    fs.boolean(
        "extra-modify-metadata",
        False,
        "If set, add pv/pvc metadata to plugin modify requests as parameters.",
    )
    fs.duration(
        "retry-interval-start",
        1.0,
        "Initial retry interval of failed volume resize. It exponentially increases with each failure, "
        "up to retry-interval-max.",
    )
    fs.duration("retry-interval-max", 300.0, "Maximum retry interval of failed volume resize.")
    fs.boolean(
        "handle-volume-inuse-error",
        True,
        "Flag to turn on/off capability to handle volume in use error in resizer controller. "
        "Defaults to true if not set.",
    )
    add_feature_gates_flag(fs, RESIZER_GATES)
    add_debug_flags(fs)
    return fs


@dataclass(frozen=True, kw_only=True)
class ResizerConfig:
    """Everything csi-resizer was told on its command line."""

    standard: StandardConfig
    """csi-lib-utils' standard flags (`--csi-address`, `--timeout` (10s), leader election, kube API, HTTP)."""
    resync_period: float = 600.0
    """`--resync-period`, seconds (10m): informer resync; every PVC is looked at again this often."""
    workers: int = 10
    """`--workers` (10): concurrent resize syncs, and separately concurrent modify syncs."""
    extra_modify_metadata: bool = False
    """`--extra-modify-metadata` (false): add `csi.storage.k8s.io/pvc/name`, `/pvc/namespace` and
    `/pv/name` to ControllerModifyVolume's mutable parameters."""
    retry_interval_start: float = 1.0
    """`--retry-interval-start`, seconds (1s): the first per-PVC retry delay, doubling on each failure."""
    retry_interval_max: float = 300.0
    """`--retry-interval-max`, seconds (5m): the longest retry delay, and the slow retry of infeasible
    errors."""
    handle_volume_inuse_error: bool = True
    """`--handle-volume-inuse-error` (true): watch pods, and do not retry an expansion that failed with
    FailedPrecondition while a pod uses the volume."""
    annotate_fs_resize: bool = True
    """Feature gate `AnnotateFsResize` (beta, true): the PV's `pre-resize-capacity` annotation."""
    recover_volume_expansion_failure: bool = True
    """Feature gate `RecoverVolumeExpansionFailure` (GA, true): allocatedResources and recovery."""
    volume_attributes_class: bool = True
    """Feature gate `VolumeAttributesClass` (GA, true): run the modify controller."""
    volume_attributes_class_explicit: bool = False
    """Whether `--feature-gates` named VolumeAttributesClass; if not, it is turned off when the API
    server does not serve `volumeattributesclasses` (upstream's discovery check)."""

    @classmethod
    def from_flags(cls, flags: Flags) -> ResizerConfig:
        gates = feature_gates(flags)
        return cls(
            standard=StandardConfig.from_flags(flags),
            resync_period=flags.duration("resync-period"),
            workers=flags.integer("workers"),
            extra_modify_metadata=flags.boolean("extra-modify-metadata"),
            retry_interval_start=flags.duration("retry-interval-start"),
            retry_interval_max=flags.duration("retry-interval-max"),
            handle_volume_inuse_error=flags.boolean("handle-volume-inuse-error"),
            annotate_fs_resize=gates.enabled("AnnotateFsResize"),
            recover_volume_expansion_failure=gates.enabled("RecoverVolumeExpansionFailure"),
            volume_attributes_class=gates.enabled("VolumeAttributesClass"),
            volume_attributes_class_explicit=gates.explicitly_set("VolumeAttributesClass"),
        )
