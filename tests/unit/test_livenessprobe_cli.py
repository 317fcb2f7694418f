"""livenessprobe's command line: every upstream flag, its defaults, and the combinations upstream refuses."""

from __future__ import annotations

import pytest
from kit import field_docstrings

from common.errors import ConfigError, FlagError
from sidecars.livenessprobe.cli import LivenessProbeConfig, build_flagset

# Every flag livenessprobe v2.19 accepts (REFERENCE §5.1 and the §0.1 logging flags), plus --version.
UPSTREAM_FLAGS = [
    "--csi-address=/csi/csi.sock",
    "--probe-timeout=5s",
    "--health-port=9808",
    "--metrics-path=/m",
    "--automaxprocs",
    "--v=5",
    "--vmodule=x=1",
    "--logging-format=json",
    "--log-flush-frequency=1s",
    "--version=false",
]


def config(*args: str) -> LivenessProbeConfig:
    return LivenessProbeConfig.from_flags(build_flagset().parse(list(args)))


def test_every_upstream_flag_is_accepted() -> None:
    cfg = config(*UPSTREAM_FLAGS)
    assert cfg.csi_address == "/csi/csi.sock"
    assert cfg.probe_timeout == 5.0
    assert cfg.metrics_path == "/m"


def test_defaults_are_upstreams() -> None:
    cfg = config()
    assert cfg.csi_address == "/run/csi/socket"
    assert cfg.probe_timeout == 3.0  # 3s since upstream v2.17
    assert cfg.health_address == "0.0.0.0:9808"
    assert cfg.metrics_address == ""  # no metrics unless asked
    assert cfg.metrics_path == "/metrics"


def test_http_endpoint_serves_health_and_metrics() -> None:
    cfg = config("--http-endpoint=:9898")
    assert (cfg.health_address, cfg.health_flag) == (":9898", "http-endpoint")
    assert (cfg.metrics_address, cfg.separate_metrics) == (":9898", False)


def test_health_port_and_separate_metrics_address() -> None:
    cfg = config("-health-port", "9809", "-metrics-address=:8080")
    assert (cfg.health_address, cfg.health_flag) == ("0.0.0.0:9809", "health-port")
    assert (cfg.metrics_address, cfg.separate_metrics) == (":8080", True)


def test_refused_combinations() -> None:
    with pytest.raises(ConfigError, match="Only one of `--health-port` and `--http-endpoint`"):
        config("--health-port=9809", "--http-endpoint=:9898")
    with pytest.raises(ConfigError, match="Only one of `--metrics-address` and `--http-endpoint`"):
        config("--metrics-address=:8080", "--http-endpoint=:9898")
    # the default port written out explicitly is not "set", as upstream compares with the default
    assert config("--health-port=9808", "--http-endpoint=:9898").health_address == ":9898"


def test_removed_and_unknown_flags_are_rejected_like_go() -> None:
    for flag in ("--connection-timeout=1s", "--kubeconfig=/k", "--timeout=1s"):
        with pytest.raises(FlagError, match="flag provided but not defined"):
            build_flagset().parse([flag])


def test_every_config_field_has_a_docstring() -> None:
    docs = field_docstrings(LivenessProbeConfig)
    assert docs and all(docs.values()), docs
