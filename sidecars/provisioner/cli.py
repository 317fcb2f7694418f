"""csi-provisioner's command line: every flag external-provisioner v6.3 accepts (REFERENCE §1.1).

Upstream parses with pflag (`--flag`); like every sidecar here we accept `-flag` too. Besides the
standard flags (§0.2, `--timeout` 10s, plus `--master`) and the logging flags (§0.1):

    --volume-name-prefix pvc  --volume-name-uuid-length -1  --retry-interval-start 1s
    --retry-interval-max 5m  --worker-threads 100  --strict-topology  --immediate-topology
    --extra-create-metadata  --default-fstype ""  --controller-publish-readonly
    --feature-gates Topology=true,...

and one flag of ours: `--persist-provisioning-intent` (default true), see `sidecars.provisioner.intent`.

Data sources: `--cloning-protection-threads 1`, `--snapshot-orphan-sweep-interval 5m`,
`--prevent-volume-mode-conversion` (true). Capacity tracking: `--enable-capacity`,
`--capacity-threads 1`, `--capacity-poll-interval 1m`, `--capacity-for-immediate-binding`,
`--capacity-ownerref-level 1`, `--kube-api-capacity-qps 1`, `--kube-api-capacity-burst 5`, with the
environment variables `NAMESPACE` and (ownerref level >= 0) `POD_NAME`. Distributed provisioning:
`--node-deployment` (environment `NODE_NAME`), `--node-deployment-immediate-binding` (true),
`--node-deployment-base-delay 20s`, `--node-deployment-max-delay 60s`.

Accepted but not implemented (a warning when set): `--enable-pprof` (there is no Go runtime to
profile; the HTTP endpoint serves no `/debug/pprof/`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import ConfigError
from common.featuregates import PROVISIONER_GATES, add_feature_gates_flag, feature_gates
from common.flags import FlagOptions, Flags, FlagSet
from common.runtime import StandardConfig
from common.standardflags import add_debug_flags, add_logging_flags, add_standard_flags

PROGRAM = "csi-provisioner"

# Usage texts of external-provisioner's cmd/csi-provisioner/csi-provisioner.go, kept verbatim.
_USAGE = {
    "master": "Master URL to build a client config from. Either this or kubeconfig needs to be set if the "
    "provisioner is being run out of cluster.",
    "volume-name-prefix": "Prefix to apply to the name of a created volume.",
    "volume-name-uuid-length": "Truncates generated UUID of a created volume to this length. Defaults "
    "behavior is to NOT truncate.",
    "retry-interval-start": "Initial retry interval of failed provisioning or deletion. It doubles with "
    "each failure, up to retry-interval-max.",
    "retry-interval-max": "Maximum retry interval of failed provisioning or deletion.",
    "worker-threads": "Number of provisioner worker threads, in other words nr. of simultaneous CSI calls.",
    "cloning-protection-threads": "Number of simultaneously running threads, handling cloning finalizer "
    "removal",
    "snapshot-orphan-sweep-interval": "Interval of the sweep that removes orphaned snapshot-protection "
    "finalizers; 0 disables it.",
    "capacity-threads": "Number of simultaneously running threads, handling CSIStorageCapacity objects",
    "strict-topology": "Late binding: pass only selected node topology to CreateVolume Request, unlike "
    "default behavior of passing aggregated cluster topologies that match with topology keys of the "
    "selected node.",
    "immediate-topology": "Immediate binding: pass aggregated cluster topologies for all nodes where the "
    "CSI driver is available (enabled, the default) or no topology requirements (if disabled).",
    "extra-create-metadata": "If set, add pv/pvc metadata to plugin create requests as parameters.",
    "enable-pprof": "Enable pprof profiling on the TCP network address specified by --http-endpoint. The "
    "HTTP path is `/debug/pprof/`.",
    "default-fstype": "The default filesystem type of the volume to provision when fstype is unspecified "
    "in the StorageClass. If the default is not set and fstype is unset in the StorageClass, then no "
    "fstype will be set",
    "kube-api-capacity-qps": "QPS to use for storage capacity updates while communicating with the "
    "kubernetes apiserver. Defaults to 1.0.",
    "kube-api-capacity-burst": "Burst to use for storage capacity updates while communicating with the "
    "kubernetes apiserver. Defaults to 5.",
    "enable-capacity": "This enables producing CSIStorageCapacity objects with capacity information from "
    "the driver's GetCapacity call.",
    "capacity-for-immediate-binding": "Enables producing capacity information for storage classes with "
    "immediate binding. Not needed for the Kubernetes scheduler, maybe useful for other consumers or for "
    "debugging.",
    "capacity-poll-interval": "How long the external-provisioner waits before checking for storage "
    "capacity changes.",
    "capacity-ownerref-level": "The level indicates the number of objects that need to be traversed "
    "starting from the pod identified by the POD_NAME and NAMESPACE environment variables to reach the "
    "owning object for CSIStorageCapacity objects: -1 for no owner, 0 for the pod itself, 1 for a "
    "StatefulSet or DaemonSet, 2 for a Deployment, etc.",
    "node-deployment": "Enables deploying the external-provisioner together with a CSI driver on nodes to "
    "manage node-local volumes.",
    "node-deployment-immediate-binding": "Determines whether immediate binding is supported when deployed "
    "on each node.",
    "node-deployment-base-delay": "Determines how long the external-provisioner sleeps initially before "
    "trying to own a PVC with immediate binding.",
    "node-deployment-max-delay": "Determines how long the external-provisioner sleeps at most before "
    "trying to own a PVC with immediate binding.",
    "controller-publish-readonly": "This option enables PV to be marked as readonly at controller publish "
    "volume call if PVC accessmode has been set to ROX.",
    "prevent-volume-mode-conversion": "Prevents an unauthorised user from modifying the volume mode when "
    "creating a PVC from an existing VolumeSnapshot.",
    "persist-provisioning-intent": "(python-csi-sidecars only) Put the finalizer "
    "csi-sidecars.python/provisioning-intent on a PVC from its first CreateVolume until its PV is saved, so "
    "that a volume created just before a restart is found and deleted if the PVC is deleted meanwhile.",
}


def build_flagset() -> FlagSet:
    """Every flag csi-provisioner v6.3 accepts, with upstream's defaults and usage texts."""
    fs = FlagSet(PROGRAM)
    add_standard_flags(fs, csi_timeout_default=10.0)
    add_logging_flags(fs)
    add_feature_gates_flag(fs, PROVISIONER_GATES)
    add_debug_flags(fs)
    fs.string("master", "", _USAGE["master"])
    fs.string("volume-name-prefix", "pvc", _USAGE["volume-name-prefix"])
    fs.integer("volume-name-uuid-length", -1, _USAGE["volume-name-uuid-length"])
    fs.duration("retry-interval-start", 1.0, _USAGE["retry-interval-start"])
    fs.duration("retry-interval-max", 300.0, _USAGE["retry-interval-max"])
    fs.unsigned("worker-threads", 100, _USAGE["worker-threads"])
    fs.boolean("strict-topology", False, _USAGE["strict-topology"])
    fs.boolean("immediate-topology", True, _USAGE["immediate-topology"])
    fs.boolean("extra-create-metadata", False, _USAGE["extra-create-metadata"])
    fs.string("default-fstype", "", _USAGE["default-fstype"])
    fs.boolean("controller-publish-readonly", False, _USAGE["controller-publish-readonly"])
    fs.boolean("persist-provisioning-intent", True, _USAGE["persist-provisioning-intent"])
    fs.unsigned("cloning-protection-threads", 1, _USAGE["cloning-protection-threads"])
    fs.duration("snapshot-orphan-sweep-interval", 300.0, _USAGE["snapshot-orphan-sweep-interval"])
    fs.boolean("prevent-volume-mode-conversion", True, _USAGE["prevent-volume-mode-conversion"])
    fs.unsigned("capacity-threads", 1, _USAGE["capacity-threads"])
    fs.floating("kube-api-capacity-qps", 1.0, _USAGE["kube-api-capacity-qps"])
    fs.integer("kube-api-capacity-burst", 5, _USAGE["kube-api-capacity-burst"])
    fs.boolean("enable-capacity", False, _USAGE["enable-capacity"])
    fs.boolean("capacity-for-immediate-binding", False, _USAGE["capacity-for-immediate-binding"])
    fs.duration("capacity-poll-interval", 60.0, _USAGE["capacity-poll-interval"])
    fs.integer("capacity-ownerref-level", 1, _USAGE["capacity-ownerref-level"])
    fs.boolean("node-deployment", False, _USAGE["node-deployment"])
    fs.boolean("node-deployment-immediate-binding", True, _USAGE["node-deployment-immediate-binding"])
    fs.duration("node-deployment-base-delay", 20.0, _USAGE["node-deployment-base-delay"])
    fs.duration("node-deployment-max-delay", 60.0, _USAGE["node-deployment-max-delay"])
    unimplemented: FlagOptions = {"implemented": False}
    fs.boolean("enable-pprof", False, _USAGE["enable-pprof"], **unimplemented)
    return fs


@dataclass(frozen=True, kw_only=True)
class ProvisionerConfig:
    """Everything csi-provisioner was told on its command line (the flags it implements)."""

    standard: StandardConfig
    """csi-lib-utils' standard flags (`--csi-address`, `--timeout` (10s), leader election, kube API,
    HTTP) and `--master`. `$KUBECONFIG`, when set, overrides `--kubeconfig`, as upstream."""
    volume_name_prefix: str = "pvc"
    """`--volume-name-prefix` ("pvc"): PV and CreateVolume name = `<prefix>-<pvc uid>`. An empty prefix
    fails every claim with "volume name prefix cannot be of length 0", as upstream."""
    volume_name_uuid_length: int = -1
    """`--volume-name-uuid-length` (-1): -1 keeps the UID with dashes; N removes the dashes and keeps
    the first N characters (0..32)."""
    retry_interval_start: float = 1.0
    """`--retry-interval-start`, seconds (1s): first per-claim and per-volume retry delay, doubling."""
    retry_interval_max: float = 300.0
    """`--retry-interval-max`, seconds (5m): the longest retry delay, and the slow retry of claims whose
    CreateVolume failed with InvalidArgument."""
    worker_threads: int = 100
    """`--worker-threads` (100): claim workers, and as many volume (deletion) workers."""
    strict_topology: bool = False
    """`--strict-topology` (false): late binding passes only the selected node's topology."""
    immediate_topology: bool = True
    """`--immediate-topology` (true): immediate binding passes the aggregated cluster topology."""
    extra_create_metadata: bool = False
    """`--extra-create-metadata` (false): add `csi.storage.k8s.io/pvc/name`, `/pvc/namespace` and
    `/pv/name` to the CreateVolume parameters."""
    default_fstype: str = ""
    """`--default-fstype` (""): fsType when the StorageClass names none."""
    controller_publish_readonly: bool = False
    """`--controller-publish-readonly` (false): `spec.csi.readOnly` for a ReadOnlyMany-only claim."""
    persist_provisioning_intent: bool = True
    """`--persist-provisioning-intent` (true, ours): record the provisioning intent as a PVC finalizer
    (see sidecars.provisioner.intent). False only stops adding it; one already there is still honoured."""
    topology: bool = True
    """Feature gate `Topology` (GA, true): use accessibility requirements when the driver supports them."""
    volume_attributes_class: bool = True
    """Feature gate `VolumeAttributesClass` (GA, true): a claim's VAC parameters become mutable_parameters."""
    volume_attributes_class_explicit: bool = False
    """Feature gate `VolumeAttributesClass` named on the command line; if not, it is turned off when
    the API server does not serve storage.k8s.io/v1 volumeattributesclasses (as upstream)."""
    cross_namespace_data_source: bool = False
    """Feature gate `CrossNamespaceVolumeDataSource` (alpha, false): accept `dataSourceRef.namespace`; such a
    snapshot or clone source is still refused, as ReferenceGrants are not checked."""
    cloning_protection_threads: int = 1
    """`--cloning-protection-threads` (1): workers removing the clone finalizer from deleted sources."""
    snapshot_orphan_sweep_interval: float = 300.0
    """`--snapshot-orphan-sweep-interval`, seconds (5m): orphaned snapshot-finalizer sweep; 0 disables."""
    prevent_volume_mode_conversion: bool = True
    """`--prevent-volume-mode-conversion` (true): a restore that changes volumeMode needs the
    `snapshot.storage.kubernetes.io/allow-volume-mode-change: "true"` annotation on the content."""
    enable_capacity: bool = False
    """`--enable-capacity` (false): publish CSIStorageCapacity objects in `$NAMESPACE`."""
    capacity_threads: int = 1
    """`--capacity-threads` (1): CSIStorageCapacity workers."""
    capacity_poll_interval: float = 60.0
    """`--capacity-poll-interval`, seconds (1m): how often every capacity is asked again."""
    capacity_for_immediate_binding: bool = False
    """`--capacity-for-immediate-binding` (false): also publish for Immediate StorageClasses."""
    capacity_ownerref_level: int = 1
    """`--capacity-ownerref-level` (1): owner of the objects, counted up from the Pod `$POD_NAME`:
    -1 none, 0 the Pod, 1 its ReplicaSet/StatefulSet/DaemonSet, 2 a Deployment..."""
    kube_api_capacity_qps: float = 1.0
    """`--kube-api-capacity-qps` (1): request rate of the capacity controller's own client."""
    kube_api_capacity_burst: int = 5
    """`--kube-api-capacity-burst` (5)."""
    namespace: str = ""
    """`--enable-capacity`: the environment variable NAMESPACE, where the objects live (required)."""
    pod_name: str = ""
    """`--enable-capacity`: the environment variable POD_NAME, the start of the owner lookup."""
    node_deployment: bool = False
    """`--node-deployment` (false): provision only claims selected for this node (`node_name`)."""
    node_name: str = ""
    """`--node-deployment`: the environment variable NODE_NAME (required with it)."""
    node_deployment_immediate_binding: bool = True
    """`--node-deployment-immediate-binding` (true): claim unselected Immediate-binding PVCs."""
    node_deployment_base_delay: float = 20.0
    """`--node-deployment-base-delay`, seconds (20s): first wait before claiming such a PVC."""
    node_deployment_max_delay: float = 60.0
    """`--node-deployment-max-delay`, seconds (60s): the longest such wait."""

    @classmethod
    def from_flags(cls, flags: Flags, env: Mapping[str, str] | None = None) -> ProvisionerConfig:
        """The config from parsed flags and the environment (`env`, default `os.environ`)."""
        environ = os.environ if env is None else env
        gates = feature_gates(flags)
        uuid_length = flags.integer("volume-name-uuid-length")
        if not -1 <= uuid_length <= 32:
            # Upstream slices the 32 hex digits with it and panics on anything else.
            raise ConfigError(f"--volume-name-uuid-length must be -1 or 0..32, not {uuid_length}")
        node_deployment = flags.boolean("node-deployment")
        if node_deployment and not environ.get("NODE_NAME"):
            raise ConfigError("The NODE_NAME environment variable must be set when using --node-deployment.")
        enable_capacity = flags.boolean("enable-capacity")
        ownerref_level = flags.integer("capacity-ownerref-level")
        if enable_capacity and not environ.get("NAMESPACE"):
            raise ConfigError("need NAMESPACE env variable for CSIStorageCapacity objects")
        if enable_capacity and ownerref_level >= 0 and not environ.get("POD_NAME"):
            raise ConfigError("need POD_NAME env variable to determine CSIStorageCapacity owner")
        return cls(
            standard=StandardConfig.from_flags(flags),
            volume_name_prefix=flags.string("volume-name-prefix"),
            volume_name_uuid_length=uuid_length,
            retry_interval_start=flags.duration("retry-interval-start"),
            retry_interval_max=flags.duration("retry-interval-max"),
            worker_threads=flags.unsigned("worker-threads"),
            strict_topology=flags.boolean("strict-topology"),
            immediate_topology=flags.boolean("immediate-topology"),
            extra_create_metadata=flags.boolean("extra-create-metadata"),
            default_fstype=flags.string("default-fstype"),
            controller_publish_readonly=flags.boolean("controller-publish-readonly"),
            persist_provisioning_intent=flags.boolean("persist-provisioning-intent"),
            topology=gates.enabled("Topology"),
            volume_attributes_class=gates.enabled("VolumeAttributesClass"),
            volume_attributes_class_explicit=gates.explicitly_set("VolumeAttributesClass"),
            cross_namespace_data_source=gates.enabled("CrossNamespaceVolumeDataSource"),
            cloning_protection_threads=flags.unsigned("cloning-protection-threads"),
            snapshot_orphan_sweep_interval=flags.duration("snapshot-orphan-sweep-interval"),
            prevent_volume_mode_conversion=flags.boolean("prevent-volume-mode-conversion"),
            enable_capacity=enable_capacity,
            capacity_threads=flags.unsigned("capacity-threads"),
            capacity_poll_interval=flags.duration("capacity-poll-interval"),
            capacity_for_immediate_binding=flags.boolean("capacity-for-immediate-binding"),
            capacity_ownerref_level=ownerref_level,
            kube_api_capacity_qps=flags.floating("kube-api-capacity-qps"),
            kube_api_capacity_burst=flags.integer("kube-api-capacity-burst"),
            namespace=environ.get("NAMESPACE", "") if enable_capacity else "",
            pod_name=environ.get("POD_NAME", "") if enable_capacity else "",
            node_deployment=node_deployment,
            node_name=environ.get("NODE_NAME", "") if node_deployment else "",
            node_deployment_immediate_binding=flags.boolean("node-deployment-immediate-binding"),
            node_deployment_base_delay=flags.duration("node-deployment-base-delay"),
            node_deployment_max_delay=flags.duration("node-deployment-max-delay"),
        )
