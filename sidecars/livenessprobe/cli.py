"""The livenessprobe command line: livenessprobe v2.19's flags (REFERENCE §5.1) and one frozen config.

Go `flag` syntax (`-flag` and `--flag` alike), the logging flags of §0.1, and:

    --csi-address /run/csi/socket  --probe-timeout 3s  --health-port 9808  --http-endpoint ""
    --metrics-address ""  --metrics-path /metrics  --automaxprocs  --version

`--version` is ours (upstream has none; the issue asks for it). Setting `--health-port` to anything
but 9808 together with `--http-endpoint`, or `--metrics-address` together with `--http-endpoint`,
exits 1 as upstream does.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError
from common.flags import Flags, FlagSet
from common.standardflags import add_automaxprocs, add_debug_flags, add_logging_flags

PROGRAM = "livenessprobe"

DEFAULT_HEALTH_PORT = "9808"

_HEALTH_PORT = (
    f"(deprecated) TCP ports for listening healthz requests. The default is `{DEFAULT_HEALTH_PORT}`. If set, "
    "`--http-endpoint` cannot be set."
)
_METRICS_ADDRESS = (
    "(deprecated) The TCP network address where the prometheus metrics endpoint will listen (example: "
    "`:8080`). The default is empty string, which means metrics endpoint is disabled. If set, "
    "`--http-endpoint` cannot be set, and the address cannot resolve to localhost + the port from "
    "`--health-port`."
)
_HTTP_ENDPOINT = (
    "The TCP network address where the HTTP server for diagnostics, including CSI driver health check and "
    "metrics. The default is empty string, which means the server is disabled. If set, `--health-port` and "
    "`--metrics-address` cannot be explicitly set."
)


def build_flagset() -> FlagSet:
    """Every flag livenessprobe v2.19 accepts (plus `--version`), with upstream's defaults and usage."""
    fs = FlagSet(PROGRAM)
    add_logging_flags(fs)
    add_automaxprocs(fs)
    fs.boolean("version", False, "Show version.")
    fs.duration("probe-timeout", 3.0, "Probe timeout in seconds.")
    fs.string("csi-address", "/run/csi/socket", "Address of the CSI driver socket.")
    fs.string("health-port", DEFAULT_HEALTH_PORT, _HEALTH_PORT, deprecated="use --http-endpoint instead")
    fs.string("metrics-address", "", _METRICS_ADDRESS, deprecated="use --http-endpoint instead")
    fs.string("http-endpoint", "", _HTTP_ENDPOINT)
    fs.string(
        "metrics-path",
        "/metrics",
        "The HTTP path where prometheus metrics will be exposed. Default is `/metrics`.",
    )
    add_debug_flags(
        fs, once_usage="Probe the driver once, print the /healthz answer and exit: 0 healthy, 1 not."
    )
    return fs


@dataclass(frozen=True, kw_only=True)
class LivenessProbeConfig:
    """What livenessprobe was asked to do; durations in seconds."""

    csi_address: str = "/run/csi/socket"
    """`--csi-address` (/run/csi/socket): the driver's socket."""
    probe_timeout: float = 3.0
    """`--probe-timeout` (3s; 1s up to upstream v2.16): how long one /healthz waits for the driver,
    reaching it included."""
    health_address: str = f"0.0.0.0:{DEFAULT_HEALTH_PORT}"
    """Where /healthz listens: `--http-endpoint` if set, else `0.0.0.0:<--health-port>` (9808)."""
    health_flag: str = "health-port"
    """The flag `health_address` came from (named in a listen error)."""
    metrics_address: str = ""
    """Where /metrics listens: `--http-endpoint` (with /healthz), the deprecated `--metrics-address`
    (a separate server), or "" (no metrics, upstream's default)."""
    separate_metrics: bool = False
    """True when metrics have their own server (`--metrics-address`)."""
    metrics_path: str = "/metrics"
    """`--metrics-path` (/metrics)."""

    @classmethod
    def from_flags(cls, flags: Flags) -> LivenessProbeConfig:
        """Build the config; ConfigError (exit 1) for the flag combinations upstream refuses."""
        http_endpoint = flags.string("http-endpoint")
        health_port = flags.string("health-port")
        metrics_address = flags.string("metrics-address")
        if health_port != DEFAULT_HEALTH_PORT and http_endpoint:
            raise ConfigError("Only one of `--health-port` and `--http-endpoint` can be explicitly set")
        if metrics_address and http_endpoint:
            raise ConfigError("Only one of `--metrics-address` and `--http-endpoint` can be explicitly set")
        return cls(
            csi_address=flags.string("csi-address"),
            probe_timeout=flags.duration("probe-timeout"),
            health_address=http_endpoint or f"0.0.0.0:{health_port}",
            health_flag="http-endpoint" if http_endpoint else "health-port",
            metrics_address=metrics_address or http_endpoint,
            separate_metrics=bool(metrics_address),
            metrics_path=flags.string("metrics-path"),
        )
