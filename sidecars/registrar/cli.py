"""The csi-node-driver-registrar command line: node-driver-registrar v2.17's flags (REFERENCE §4.1).

Go `flag` syntax (`-flag` and `--flag` alike), the logging flags of §0.1, and:

    --csi-address /run/csi/socket  --kubelet-registration-path <host path of the driver socket>
    --plugin-registration-path /registration  --timeout 1s  --http-endpoint ""  --health-port 0
    --mode ""  --enable-pprof  --connection-timeout 0  --version  --automaxprocs

No Kubernetes API flags: this sidecar never talks to the API server. `--kubelet-registration-path`
is required even with `--mode=kubelet-registration-probe` (exit 1), as upstream checks it first.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError
from common.flags import Flags, FlagSet
from common.standardflags import add_automaxprocs, add_debug_flags, add_logging_flags

PROGRAM = "csi-node-driver-registrar"

PROBE_MODE = "kubelet-registration-probe"
"""`--mode` value that makes the process exit 0 at once (a no-op since upstream v2.9.0)."""

_HTTP_ENDPOINT = (
    "The TCP network address where the HTTP server for diagnostics, including pprof and the health check "
    "indicating whether the registration socket exists, will listen (example: `:8080`). The default is "
    "empty string, which means the server is disabled. Only one of `--health-port` and `--http-endpoint` "
    "can be set."
)
_HEALTH_PORT = (
    "(deprecated) TCP port for healthz requests. Set to 0 to disable the healthz server. Only one of "
    "`--health-port` and `--http-endpoint` can be set."
)
_MODE = (
    "DEPRECATED. If this is set to kubelet-registration-probe, the driver will exit successfully without "
    "registering with CSI. If set to any other value node-driver-registrar will do the kubelet plugin "
    "registration. This flag will be removed in a future major release because the mode "
    "kubelet-registration-probe is no longer needed."
)


def build_flagset() -> FlagSet:
    """Every flag node-driver-registrar v2.17 accepts, with upstream's defaults and usage texts."""
    fs = FlagSet(PROGRAM)
    add_logging_flags(fs)
    add_automaxprocs(fs)
    fs.boolean("version", False, "Show version.")
    fs.string(
        "csi-address",
        "/run/csi/socket",
        "Path of the CSI driver socket that the node-driver-registrar will connect to.",
    )
    fs.string(
        "kubelet-registration-path", "", "Path of the CSI driver socket on the Kubernetes host machine."
    )
    fs.string(
        "plugin-registration-path", "/registration", "Path to Kubernetes plugin registration directory."
    )
    fs.duration("timeout", 1.0, "Timeout for waiting for communication with driver")
    fs.duration(
        "connection-timeout",
        0.0,
        "The --connection-timeout flag is deprecated",
        deprecated="it has no effect",
    )
    fs.integer("health-port", 0, _HEALTH_PORT, deprecated="use --http-endpoint instead")
    fs.string("http-endpoint", "", _HTTP_ENDPOINT)
    fs.string("mode", "", _MODE, deprecated="kubelet-registration-probe is a no-op; drop the exec probe")
    # Python has no pprof: the flag is accepted so existing DaemonSets start, and warns when set.
    fs.boolean("enable-pprof", False, "enable pprof profiling", implemented=False)
    add_debug_flags(
        fs, once_usage="Not supported: the registrar serves kubelet for as long as the driver runs."
    )
    return fs


@dataclass(frozen=True, kw_only=True)
class RegistrarConfig:
    """What csi-node-driver-registrar was asked to do; durations in seconds."""

    csi_address: str = "/run/csi/socket"
    """`--csi-address` (/run/csi/socket): the driver's socket inside this container."""
    kubelet_registration_path: str
    """`--kubelet-registration-path` (required): the driver socket's path on the host, the `endpoint`
    GetInfo gives kubelet."""
    plugin_registration_path: str = "/registration"
    """`--plugin-registration-path` (/registration): the directory `<driver>-reg.sock` is created in
    (kubelet's `/var/lib/kubelet/plugins_registry` on the host)."""
    timeout: float = 1.0
    """`--timeout` (1s): deadline of GetPluginInfo at startup and of the GetInfo self-check in /healthz."""
    http_address: str = ""
    """Where /healthz listens: `--http-endpoint`, or `:<--health-port>` (deprecated, 0 = off);
    "" = no HTTP server."""
    probe_mode: bool = False
    """`--mode=kubelet-registration-probe` ("" by default): exit 0 at once, as upstream does since v2.9."""

    def registration_socket_path(self, driver_name: str) -> str:
        """`<plugin-registration-path>/<driver name>-reg.sock`, exactly as upstream builds it."""
        return f"{self.plugin_registration_path}/{driver_name}-reg.sock"

    @classmethod
    def from_flags(cls, flags: Flags) -> RegistrarConfig:
        """Build the config; ConfigError (exit 1) for what upstream refuses after parsing."""
        if flags.boolean("once"):
            raise ConfigError(
                "--once is not supported: the registrar has nothing to reconcile, it serves kubelet"
            )
        registration_path = flags.string("kubelet-registration-path")
        if not registration_path:
            raise ConfigError("kubelet-registration-path is a required parameter")
        probe_mode = flags.string("mode") == PROBE_MODE
        health_port = flags.integer("health-port")
        http_endpoint = flags.string("http-endpoint")
        if not probe_mode and health_port > 0 and http_endpoint:
            raise ConfigError("Only one of `--health-port` and `--http-endpoint` can be set")
        return cls(
            csi_address=flags.string("csi-address"),
            kubelet_registration_path=registration_path,
            plugin_registration_path=flags.string("plugin-registration-path"),
            timeout=flags.duration("timeout"),
            http_address=f":{health_port}" if health_port > 0 else http_endpoint,
            probe_mode=probe_mode,
        )
