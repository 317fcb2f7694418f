"""csi-attacher accepts every flag external-attacher v4.12 accepts, with its defaults and refusals."""

from __future__ import annotations

import pytest
from kit import field_docstrings

from common.errors import ConfigError, FlagError
from sidecars.attacher.cli import AttacherConfig, build_flagset

# REFERENCE §0.1, §0.2 and §2.1: everything a v4.12 Deployment may pass.
UPSTREAM_ARGS = [
    "--csi-address=/csi/csi.sock",
    "--kubeconfig=/etc/kubeconfig",
    "--resync=5m",
    "--timeout=30s",
    "--worker-threads=20",
    "--max-entries=100",
    "--retry-interval-start=2s",
    "--retry-interval-max=10m",
    "--default-fstype=ext4",
    "--reconcile-sync=2m",
    "--max-grpc-log-length=200",
    "--leader-election",
    "--leader-election-namespace=kube-system",
    "--leader-election-lease-duration=30s",
    "--leader-election-renew-deadline=20s",
    "--leader-election-retry-period=10s",
    "--leader-election-labels=team:storage",
    "--kube-api-qps=50",
    "--kube-api-burst=100",
    "--http-endpoint=:8080",
    "--metrics-path=/m",
    "--feature-gates=MutableCSINodeAllocatableCount=false,ReleaseLeaderElectionOnExit=true",
    "--v=5",
    "--vmodule=",
    "--logging-format=text",
    "--log-flush-frequency=5s",
    "--automaxprocs",
]


def test_every_upstream_flag_is_accepted_and_lands_in_the_config() -> None:
    config = AttacherConfig.from_flags(build_flagset().parse(UPSTREAM_ARGS))
    assert config.standard.csi_address == "/csi/csi.sock" and config.timeout == 30.0
    assert config.resync == 300.0 and config.worker_threads == 20 and config.max_entries == 100
    assert (config.retry_interval_start, config.retry_interval_max) == (2.0, 600.0)
    assert config.default_fstype == "ext4" and config.reconcile_sync == 120.0
    assert config.max_grpc_log_length == 200
    assert config.error_code_on_attach_error is False
    assert config.standard.leader_election and config.standard.leader_election_labels == {"team": "storage"}
    assert (config.standard.kube_api_qps, config.standard.kube_api_burst) == (50.0, 100)


def test_defaults_are_upstreams() -> None:
    config = AttacherConfig.from_flags(build_flagset().parse([]))
    assert config.timeout == 15.0 and config.resync == 600.0 and config.worker_threads == 10
    assert (config.retry_interval_start, config.retry_interval_max) == (1.0, 300.0)
    assert config.reconcile_sync == 60.0 and config.max_entries == 0 and config.max_grpc_log_length == -1
    assert config.error_code_on_attach_error is True
    assert config.standard.csi_address == "/run/csi/socket" and config.standard.metrics_path == "/metrics"


def test_go_flag_syntax_single_dash_and_separate_values() -> None:
    config = AttacherConfig.from_flags(build_flagset().parse(["-timeout", "1m", "-worker-threads=3"]))
    assert config.timeout == 60.0 and config.worker_threads == 3


def test_zero_workers_exits_1_like_upstream() -> None:
    with pytest.raises(ConfigError, match=r"^option -worker-threads must be greater than zero$") as err:
        AttacherConfig.from_flags(build_flagset().parse(["--worker-threads=0"]))
    assert err.value.exit_code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--master=https://x"],
        ["--worker-threads=-1"],
        ["--timeout=15"],
        ["--feature-gates=Nope=true"],
        ["--dummy"],
    ],
)
def test_what_upstream_rejects_is_rejected(args: list[str]) -> None:
    with pytest.raises(FlagError):
        build_flagset().parse(args)


def test_both_metrics_flags_are_a_config_error() -> None:
    flags = build_flagset().parse(["--http-endpoint=:8080", "--metrics-address=:8081"])
    with pytest.raises(ConfigError):
        AttacherConfig.from_flags(flags)


def test_every_config_field_is_documented() -> None:
    docs = field_docstrings(AttacherConfig)
    assert docs and all(doc and ("`--" in doc or "gate" in doc) for doc in docs.values()), docs
