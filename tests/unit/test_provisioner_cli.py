"""csi-provisioner's command line: every upstream flag accepted, upstream defaults, both spellings."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from kit import field_docstrings

from common.errors import ConfigError, FlagError
from common.logging import configure
from common.standardflags import apply_logging_flags
from sidecars.provisioner.cli import ProvisionerConfig, build_flagset

# REFERENCE §0.2 and §1.1: every flag external-provisioner v6.3 accepts.
UPSTREAM_FLAGS = [
    "version",
    "kubeconfig",
    "csi-address",
    "timeout",
    "leader-election",
    "leader-election-namespace",
    "leader-election-lease-duration",
    "leader-election-renew-deadline",
    "leader-election-retry-period",
    "leader-election-labels",
    "kube-api-qps",
    "kube-api-burst",
    "http-endpoint",
    "metrics-address",
    "metrics-path",
    "automaxprocs",
    "v",
    "vmodule",
    "logging-format",
    "log-flush-frequency",
    "feature-gates",
    "master",
    "volume-name-prefix",
    "volume-name-uuid-length",
    "retry-interval-start",
    "retry-interval-max",
    "worker-threads",
    "cloning-protection-threads",
    "snapshot-orphan-sweep-interval",
    "capacity-threads",
    "strict-topology",
    "immediate-topology",
    "extra-create-metadata",
    "enable-pprof",
    "default-fstype",
    "kube-api-capacity-qps",
    "kube-api-capacity-burst",
    "enable-capacity",
    "capacity-for-immediate-binding",
    "capacity-poll-interval",
    "capacity-ownerref-level",
    "node-deployment",
    "node-deployment-immediate-binding",
    "node-deployment-base-delay",
    "node-deployment-max-delay",
    "controller-publish-readonly",
    "prevent-volume-mode-conversion",
]


def config(*argv: str) -> ProvisionerConfig:
    return ProvisionerConfig.from_flags(build_flagset().parse(list(argv)))


def test_every_upstream_flag_is_defined() -> None:
    fs = build_flagset()
    assert [name for name in UPSTREAM_FLAGS if not fs.defined(name)] == []


def test_defaults_are_upstream_defaults() -> None:
    cfg = config()
    assert cfg.standard.timeout == 10.0
    assert cfg.standard.csi_address == "/run/csi/socket"
    assert (cfg.standard.kube_api_qps, cfg.standard.kube_api_burst) == (5.0, 10)
    assert cfg.worker_threads == 100
    assert (cfg.volume_name_prefix, cfg.volume_name_uuid_length) == ("pvc", -1)
    assert (cfg.retry_interval_start, cfg.retry_interval_max) == (1.0, 300.0)
    assert (cfg.strict_topology, cfg.immediate_topology) == (False, True)
    assert (cfg.extra_create_metadata, cfg.default_fstype, cfg.controller_publish_readonly) == (
        False,
        "",
        False,
    )
    assert cfg.persist_provisioning_intent is True
    assert (cfg.topology, cfg.volume_attributes_class, cfg.cross_namespace_data_source) == (True, True, False)


def test_pflag_and_go_flag_spellings_both_work() -> None:
    a = config("--csi-address=/csi/a.sock", "--worker-threads", "7", "--strict-topology", "--timeout=30s")
    b = config("-csi-address", "/csi/a.sock", "-worker-threads=7", "-strict-topology=true", "-timeout", "30s")
    assert a == b
    assert (a.standard.csi_address, a.worker_threads, a.strict_topology, a.standard.timeout) == (
        "/csi/a.sock",
        7,
        True,
        30.0,
    )


def test_flag_values_reach_the_config() -> None:
    cfg = config(
        "--master=http://127.0.0.1:8080",
        "--volume-name-prefix=vol",
        "--volume-name-uuid-length=8",
        "--retry-interval-start=2s",
        "--retry-interval-max=1m",
        "--immediate-topology=false",
        "--extra-create-metadata",
        "--default-fstype=ext4",
        "--controller-publish-readonly",
        "--persist-provisioning-intent=false",
        "--feature-gates=Topology=false,CrossNamespaceVolumeDataSource=true",
        "--kube-api-qps=1000",
        "--kube-api-burst=2000",
    )
    assert cfg.standard.master == "http://127.0.0.1:8080"
    assert (cfg.volume_name_prefix, cfg.volume_name_uuid_length) == ("vol", 8)
    assert (cfg.retry_interval_start, cfg.retry_interval_max) == (2.0, 60.0)
    assert not cfg.immediate_topology
    assert cfg.extra_create_metadata and cfg.controller_publish_readonly
    assert cfg.default_fstype == "ext4"
    assert not cfg.persist_provisioning_intent
    assert not cfg.topology and cfg.cross_namespace_data_source
    assert (cfg.standard.kube_api_qps, cfg.standard.kube_api_burst) == (1000.0, 2000)


def test_unknown_flag_and_bad_duration_are_flag_errors() -> None:
    with pytest.raises(FlagError, match="flag provided but not defined: -provisioner"):
        config("--provisioner=foo")  # removed in v1.x upstream: still an error
    with pytest.raises(FlagError, match="invalid value"):
        config("--timeout=15")
    with pytest.raises(FlagError):
        config("--worker-threads=-1")  # a uint, as upstream


def test_unknown_feature_gate_is_refused() -> None:
    with pytest.raises(FlagError, match="unrecognized feature gate: NoSuchGate"):
        config("--feature-gates=NoSuchGate=true")


def test_uuid_length_beyond_the_uid_is_a_config_error() -> None:
    assert config("--volume-name-uuid-length=32").volume_name_uuid_length == 32
    with pytest.raises(ConfigError, match="volume-name-uuid-length"):
        config("--volume-name-uuid-length=33")
    with pytest.raises(ConfigError):
        config("--volume-name-uuid-length=-2")


def test_http_endpoint_and_metrics_address_together_are_refused() -> None:
    with pytest.raises(ConfigError):
        config("--http-endpoint=:8080", "--metrics-address=:8081")


def test_only_enable_pprof_is_accepted_but_not_implemented() -> None:
    flags = build_flagset().parse(
        [
            "--logging-format=json",
            "--enable-capacity",
            "--node-deployment",
            "--capacity-poll-interval=2m",
            "--enable-pprof",
        ]
    )
    out = io.StringIO()
    try:
        apply_logging_flags(flags, stream=out)
    finally:
        configure()
    warned = {json.loads(line)["flag"] for line in out.getvalue().splitlines()}
    assert warned == {"--enable-pprof"}


def test_every_config_field_has_a_docstring() -> None:
    docs = field_docstrings(ProvisionerConfig)
    assert len(docs) == len(dataclasses.fields(ProvisionerConfig))
    for doc in docs.values():
        assert doc and ("`--" in doc or "Feature gate" in doc or "standard flags" in doc), docs


def test_data_source_capacity_and_node_deployment_flags_reach_the_config() -> None:
    flags = build_flagset().parse(
        [
            "--cloning-protection-threads=3",
            "--snapshot-orphan-sweep-interval=0",
            "--prevent-volume-mode-conversion=false",
            "--enable-capacity",
            "--capacity-threads=2",
            "--capacity-poll-interval=30s",
            "--capacity-for-immediate-binding",
            "--capacity-ownerref-level=2",
            "--kube-api-capacity-qps=7",
            "--kube-api-capacity-burst=9",
            "--node-deployment",
            "--node-deployment-immediate-binding=false",
            "--node-deployment-base-delay=1s",
            "--node-deployment-max-delay=4s",
            "--feature-gates=VolumeAttributesClass=true",
        ]
    )
    env = {"NAMESPACE": "kube-system", "POD_NAME": "csi-0", "NODE_NAME": "node-7"}
    cfg = ProvisionerConfig.from_flags(flags, env)
    assert (cfg.cloning_protection_threads, cfg.snapshot_orphan_sweep_interval) == (3, 0.0)
    assert not cfg.prevent_volume_mode_conversion
    assert cfg.enable_capacity and cfg.capacity_for_immediate_binding
    assert (cfg.capacity_threads, cfg.capacity_poll_interval, cfg.capacity_ownerref_level) == (2, 30.0, 2)
    assert (cfg.kube_api_capacity_qps, cfg.kube_api_capacity_burst) == (7.0, 9)
    assert (cfg.namespace, cfg.pod_name, cfg.node_name) == ("kube-system", "csi-0", "node-7")
    assert cfg.node_deployment and not cfg.node_deployment_immediate_binding
    assert (cfg.node_deployment_base_delay, cfg.node_deployment_max_delay) == (1.0, 4.0)
    assert cfg.volume_attributes_class and cfg.volume_attributes_class_explicit
    defaults = config()
    assert not defaults.volume_attributes_class_explicit and defaults.prevent_volume_mode_conversion
    assert (defaults.cloning_protection_threads, defaults.snapshot_orphan_sweep_interval) == (1, 300.0)
    assert (defaults.capacity_poll_interval, defaults.capacity_ownerref_level) == (60.0, 1)
    assert (defaults.kube_api_capacity_qps, defaults.kube_api_capacity_burst) == (1.0, 5)
    assert (defaults.node_deployment_base_delay, defaults.node_deployment_max_delay) == (20.0, 60.0)


def test_required_environment_variables_are_checked_at_start() -> None:
    fs = build_flagset()
    with pytest.raises(ConfigError, match="NODE_NAME environment variable must be set"):
        ProvisionerConfig.from_flags(fs.parse(["--node-deployment"]), {})
    with pytest.raises(ConfigError, match="need NAMESPACE env variable for CSIStorageCapacity objects"):
        ProvisionerConfig.from_flags(fs.parse(["--enable-capacity"]), {"POD_NAME": "p"})
    with pytest.raises(ConfigError, match="need POD_NAME env variable to determine CSIStorageCapacity owner"):
        ProvisionerConfig.from_flags(fs.parse(["--enable-capacity"]), {"NAMESPACE": "ns"})
    # No owner wanted: no POD_NAME needed; capacity off: nothing read.
    cfg = ProvisionerConfig.from_flags(
        fs.parse(["--enable-capacity", "--capacity-ownerref-level=-1"]), {"NAMESPACE": "ns"}
    )
    assert (cfg.namespace, cfg.pod_name) == ("ns", "")
    assert ProvisionerConfig.from_flags(fs.parse([]), {"NAMESPACE": "ns", "NODE_NAME": "n"}).namespace == ""
