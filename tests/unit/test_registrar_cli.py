"""csi-node-driver-registrar's command line: every upstream flag, its defaults, and upstream's checks."""

from __future__ import annotations

import pytest
from kit import field_docstrings

from common.errors import ConfigError, FlagError
from sidecars.registrar.cli import PROBE_MODE, RegistrarConfig, build_flagset

# Every flag node-driver-registrar v2.17 accepts (REFERENCE §4.1 and the §0.1 logging flags).
UPSTREAM_FLAGS = [
    "--csi-address=/csi/csi.sock",
    "--kubelet-registration-path=/var/lib/kubelet/plugins/hostpath/csi.sock",
    "--plugin-registration-path=/registration",
    "--timeout=5s",
    "--connection-timeout=30s",
    "--http-endpoint=:9809",
    "--mode=registration",
    "--enable-pprof",
    "--version=false",
    "--automaxprocs",
    "--v=5",
    "--vmodule=foo=2",
    "--logging-format=text",
    "--log-flush-frequency=5s",
]


def config(*args: str) -> RegistrarConfig:
    return RegistrarConfig.from_flags(build_flagset().parse(list(args)))


def test_every_upstream_flag_is_accepted() -> None:
    cfg = config(*UPSTREAM_FLAGS)
    assert cfg.csi_address == "/csi/csi.sock"
    assert cfg.kubelet_registration_path == "/var/lib/kubelet/plugins/hostpath/csi.sock"
    assert cfg.timeout == 5.0
    assert cfg.http_address == ":9809"
    assert not cfg.probe_mode


def test_defaults_are_upstreams() -> None:
    cfg = config("--kubelet-registration-path=/k/csi.sock")
    assert cfg.csi_address == "/run/csi/socket"
    assert cfg.plugin_registration_path == "/registration"
    assert cfg.timeout == 1.0
    assert cfg.http_address == ""  # no HTTP server unless asked
    assert cfg.registration_socket_path("hostpath.csi.k8s.io") == "/registration/hostpath.csi.k8s.io-reg.sock"


def test_go_single_dash_spelling_works() -> None:
    cfg = config("-kubelet-registration-path", "/k/csi.sock", "-health-port=9809", "-timeout=2s")
    assert cfg.http_address == ":9809"
    assert cfg.timeout == 2.0


def test_kubelet_registration_path_is_required_even_in_probe_mode() -> None:
    with pytest.raises(ConfigError, match="kubelet-registration-path is a required parameter"):
        config("--csi-address=/csi/csi.sock")
    with pytest.raises(ConfigError, match="kubelet-registration-path is a required parameter"):
        config(f"--mode={PROBE_MODE}")


def test_health_port_and_http_endpoint_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="Only one of `--health-port` and `--http-endpoint`"):
        config("--kubelet-registration-path=/k", "--health-port=9809", "--http-endpoint=:9810")
    # upstream checks the probe mode first: the exec probe still exits 0
    assert config(
        "--kubelet-registration-path=/k", f"--mode={PROBE_MODE}", "--health-port=1", "--http-endpoint=:2"
    )
    assert (
        config("--kubelet-registration-path=/k", "--health-port=0", "--http-endpoint=:2").http_address == ":2"
    )


def test_probe_mode_and_other_modes() -> None:
    assert config("--kubelet-registration-path=/k", f"--mode={PROBE_MODE}").probe_mode
    assert not config("--kubelet-registration-path=/k", "--mode=anything-else").probe_mode


def test_unknown_and_kube_flags_are_rejected_like_go() -> None:
    for flag in ("--kubeconfig=/k", "--leader-election", "--logtostderr"):
        with pytest.raises(FlagError, match="flag provided but not defined"):
            build_flagset().parse(["--kubelet-registration-path=/k", flag])


def test_bad_duration_is_a_flag_error() -> None:
    with pytest.raises(FlagError, match='invalid value "5" for flag -timeout'):
        build_flagset().parse(["--timeout=5"])


def test_every_config_field_has_a_docstring() -> None:
    docs = field_docstrings(RegistrarConfig)
    assert docs and all(docs.values()), docs
