"""csi-resizer's command line: every upstream flag accepted, defaults as upstream, one documented config."""

from __future__ import annotations

import pytest
from kit import field_docstrings

from common.errors import ConfigError, FlagError
from sidecars.resizer.cli import ResizerConfig, build_flagset

# external-resizer's flags (cmd/csi-resizer/main.go, csi-lib-utils standardflags, component-base logsapi).
UPSTREAM_FLAGS = [
    "master",
    "kubeconfig",
    "resync-period",
    "workers",
    "extra-modify-metadata",
    "csi-address",
    "timeout",
    "version",
    "retry-interval-start",
    "retry-interval-max",
    "leader-election",
    "leader-election-namespace",
    "leader-election-lease-duration",
    "leader-election-renew-deadline",
    "leader-election-retry-period",
    "leader-election-labels",
    "metrics-address",
    "http-endpoint",
    "metrics-path",
    "kube-api-qps",
    "kube-api-burst",
    "handle-volume-inuse-error",
    "feature-gates",
    "automaxprocs",
    "v",
    "vmodule",
    "logging-format",
    "log-flush-frequency",
    "log-text-split-stream",
    "log-text-info-buffer-size",
    "log-json-split-stream",
    "log-json-info-buffer-size",
]


@pytest.mark.parametrize("name", UPSTREAM_FLAGS)
def test_every_upstream_flag_is_accepted(name: str) -> None:
    assert build_flagset().defined(name)


def test_defaults_are_upstreams() -> None:
    config = ResizerConfig.from_flags(build_flagset().parse([]))
    assert config.standard.timeout == 10.0
    assert config.standard.csi_address == "/run/csi/socket"
    assert (config.workers, config.resync_period) == (10, 600.0)
    assert (config.retry_interval_start, config.retry_interval_max) == (1.0, 300.0)
    assert config.handle_volume_inuse_error is True
    assert config.extra_modify_metadata is False
    assert (
        config.annotate_fs_resize
        and config.recover_volume_expansion_failure
        and config.volume_attributes_class
    )
    assert config.volume_attributes_class_explicit is False
    assert config == ResizerConfig(standard=config.standard)  # the dataclass defaults agree


def test_go_flag_syntax_and_values() -> None:
    flags = build_flagset().parse(
        [
            "-workers=3",
            "--timeout",
            "30s",
            "-handle-volume-inuse-error=false",
            "--extra-modify-metadata",
            "--retry-interval-start=500ms",
            "--retry-interval-max=1m30s",
            "--resync-period=0",
            "--master=http://127.0.0.1:1",
            "-leader-election",
            "--leader-election-labels=a:b",
            "--feature-gates=RecoverVolumeExpansionFailure=false",
            "--feature-gates=VolumeAttributesClass=true",
            "--csi-address=/csi/csi.sock",
        ]
    )
    config = ResizerConfig.from_flags(flags)
    assert config.workers == 3 and config.standard.timeout == 30.0
    assert config.handle_volume_inuse_error is False and config.extra_modify_metadata is True
    assert (config.retry_interval_start, config.retry_interval_max, config.resync_period) == (0.5, 90.0, 0.0)
    assert config.standard.master == "http://127.0.0.1:1" and config.standard.leader_election
    assert config.standard.leader_election_labels == {"a": "b"}
    assert config.recover_volume_expansion_failure is False
    assert config.volume_attributes_class and config.volume_attributes_class_explicit


def test_bad_command_lines_are_refused() -> None:
    with pytest.raises(FlagError, match="flag provided but not defined: -csiTimeout"):
        build_flagset().parse(["--csiTimeout=10s"])
    with pytest.raises(FlagError):
        build_flagset().parse(["--timeout=10"])  # a duration needs a unit
    with pytest.raises(ConfigError, match="unrecognized feature gate: Bogus"):
        build_flagset().parse(["--feature-gates=Bogus=true"])
    with pytest.raises(ConfigError, match="only one of"):
        ResizerConfig.from_flags(build_flagset().parse(["--http-endpoint=:8080", "--metrics-address=:8081"]))


def test_every_config_field_has_a_docstring() -> None:
    docs = field_docstrings(ResizerConfig)
    assert docs and all(docs.values()), docs
