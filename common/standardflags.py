"""Standard flags: the flag groups every sidecar shares, with upstream's names, defaults and usage texts.

csi-lib-utils `standardflags` (kubeconfig, csi-address, leader election, kube-api QPS, HTTP endpoint),
component-base `logsapi` (--v, --vmodule, --logging-format...), `--automaxprocs`, and our `--debug` and
`--once`; plus `version()` and the checks upstream makes on them. The parser is common.flags.
"""

from __future__ import annotations

import sys
from typing import TextIO

from common.errors import ConfigError
from common.flags import Flags, FlagSet
from common.govalues import go_quote
from common.logging import configure
from common.version import VERSION

# Usage texts of csi-lib-utils standardflags and component-base logsapi, kept verbatim.
_USAGE = {
    "vmodule": "comma-separated list of pattern=N settings for file-filtered logging "
    "(only works for text log format)",
    "leader-election-namespace": "Namespace where the leader election resource lives. "
    "Defaults to the pod namespace if not set.",
    "leader-election-lease-duration": "Duration, in seconds, that non-leader candidates will wait to force "
    "acquire leadership. Defaults to 15 seconds.",
    "leader-election-renew-deadline": "Duration, in seconds, that the acting leader will retry refreshing "
    "leadership before giving up. Defaults to 10 seconds.",
    "leader-election-retry-period": "Duration, in seconds, the LeaderElector clients should wait between "
    "tries of actions. Defaults to 5 seconds.",
    "leader-election-labels": "List of labels to add to lease when given replica becomes leader. Formatted "
    "as a comma seperated list of key:value labels. "
    "Example: 'my-label:my-value,my-second-label:my-second-value'",
    "debug": "Try this sidecar locally: console logs at --v=5 (unless --v is given), no leader election; "
    "with no cluster configured (--kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster) an embedded test-bed "
    "API server, and without --csi-address a CSI test driver, run in this process.",
    "once": "Reconcile the current state once and exit: 0 when every object synced, 1 when any failed.",
    "http-endpoint": "The TCP network address where the HTTP server for diagnostics, including metrics and "
    "leader election health check, will listen (example: `:8080`). The default is empty string, which means "
    "the server is disabled. Only one of `--metrics-address` and `--http-endpoint` can be set.",
    "metrics-address": "(deprecated) The TCP network address where the prometheus metrics endpoint will "
    "listen (example: `:8080`). The default is empty string, which means metrics endpoint is disabled. "
    "Only one of `--metrics-address` and `--http-endpoint` can be set.",
}


def version() -> str:
    """This project's version, printed by `--version` as `<program> <version>`."""
    return f"v{VERSION}"


def add_logging_flags(fs: FlagSet) -> None:
    """component-base `logsapi.AddFlags`: --v, --vmodule, --logging-format, --log-flush-frequency..."""
    fs.integer("v", 0, "number for the log level verbosity")
    fs.string("vmodule", "", _USAGE["vmodule"], implemented=False)
    fs.string("logging-format", "text", 'Sets the log format. Permitted formats: "json", "text".')
    # Every log line is written and flushed at once, so there is nothing to tune.
    fs.duration("log-flush-frequency", 5.0, "Maximum number of seconds between log flushes")
    # Upstream these need the LoggingAlphaOptions gate, which no sidecar exposes: accepted, ignored.
    for fmt in ("text", "json"):
        split = f"[Alpha] In {fmt} format, write error messages to stderr and info messages to stdout."
        fs.boolean(f"log-{fmt}-split-stream", False, split, implemented=False)
        buffer = f"[Alpha] In {fmt} format with split output streams, the info messages can be buffered."
        fs.string(f"log-{fmt}-info-buffer-size", "0", buffer, implemented=False)


def apply_logging_flags(flags: Flags, *, stream: TextIO | None = None) -> None:
    """Configure logging from `--v` and `--logging-format`, then log warnings about the flags used."""
    fmt = flags.string("logging-format")
    if fmt not in ("text", "json"):
        raise ConfigError(f"format: Invalid value: {go_quote(fmt)}: Unsupported log format")
    configure(
        verbosity=flags.integer("v"), fmt="json" if fmt == "json" else "text", stream=stream or sys.stderr
    )
    flags.warn_unimplemented()


def add_debug_flags(fs: FlagSet, *, once_usage: str = "") -> None:
    """Our `--debug` and `--once` (no Go sidecar has them; common.debug and common.once act on them)."""
    ours = "(python-csi-sidecars only) "
    fs.boolean("debug", False, ours + _USAGE["debug"])
    fs.boolean("once", False, ours + (once_usage or _USAGE["once"]))


def add_automaxprocs(fs: FlagSet) -> None:
    """csi-lib-utils `--automaxprocs` (Go BoolFunc: bare means true). Python has no GOMAXPROCS: ignored."""
    fs.boolean("automaxprocs", False, "automatically set GOMAXPROCS to match Linux container CPU quota")


def add_standard_flags(fs: FlagSet, *, csi_timeout_default: float) -> None:
    """csi-lib-utils standardflags (REFERENCE §0.2) plus the sidecar's `--timeout` and `--automaxprocs`."""
    kube_api = "to use while communicating with the kubernetes apiserver."
    fs.boolean("version", False, "Show version.")
    fs.string(
        "kubeconfig", "", "Absolute path to the kubeconfig file. Required only when running out of cluster."
    )
    fs.string("csi-address", "/run/csi/socket", "Address of the CSI driver socket.")
    fs.duration("timeout", csi_timeout_default, "Timeout of each CSI call.")
    fs.boolean("leader-election", False, "Enable leader election.")
    fs.string("leader-election-namespace", "", _USAGE["leader-election-namespace"])
    fs.duration("leader-election-lease-duration", 15.0, _USAGE["leader-election-lease-duration"])
    fs.duration("leader-election-renew-deadline", 10.0, _USAGE["leader-election-renew-deadline"])
    fs.duration("leader-election-retry-period", 5.0, _USAGE["leader-election-retry-period"])
    fs.string_map("leader-election-labels", {}, _USAGE["leader-election-labels"])
    fs.floating("kube-api-qps", 5.0, f"QPS {kube_api} Defaults to 5.0.")
    fs.integer("kube-api-burst", 10, f"Burst {kube_api} Defaults to 10.")
    fs.string("http-endpoint", "", _USAGE["http-endpoint"])
    fs.string("metrics-address", "", _USAGE["metrics-address"], deprecated="use --http-endpoint instead")
    fs.string(
        "metrics-path",
        "/metrics",
        "The HTTP path where prometheus metrics will be exposed. Default is `/metrics`.",
    )
    add_automaxprocs(fs)


def check_http_flags(flags: Flags) -> None:
    """Upstream exits 1 when both `--http-endpoint` and `--metrics-address` are set."""
    if flags.string("http-endpoint") and flags.string("metrics-address"):
        raise ConfigError("only one of `--metrics-address` and `--http-endpoint` can be set")
