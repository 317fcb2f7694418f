"""livenessprobe: serves the CSI driver's health as /healthz for kubelet's liveness probe (wiring only).

Start (upstream order): flags → connect to the driver, waiting as long as it takes (the probe must
not crash-loop while the driver starts) → GetPluginInfo without deadline (an error exits 1; its
metric sample says `unknown-driver`, as upstream's) → /healthz on `--http-endpoint` or
`0.0.0.0:<--health-port>`, with /metrics there too when `--http-endpoint` is set, or on its own
server with the deprecated `--metrics-address`. No Kubernetes API access: this module never imports
kubernetes_asyncio, common.kube or common.runtime.

Stop: SIGTERM closes the servers and the channel, exit 0.
"""

from __future__ import annotations

import sys

from common.notls import skip_openssl

skip_openssl(sys.argv[1:])  # before anything imports asyncio (common.notls)

import asyncio

from common import debug, entrypoint
from common.csi import CSIConnection
from common.http import HttpEndpoint
from common.logging import get_logger
from common.standardflags import apply_logging_flags
from sidecars.livenessprobe.cli import PROGRAM, LivenessProbeConfig, build_flagset
from sidecars.livenessprobe.controller import Prober
from sidecars.livenessprobe.metrics import ProbeMetrics

log = get_logger(__name__)


def endpoints(config: LivenessProbeConfig, prober: Prober, metrics: ProbeMetrics) -> dict[str, HttpEndpoint]:
    """The HTTP servers: /healthz (+ /metrics with `--http-endpoint`), and a separate metrics one."""
    shared = config.metrics_address and not config.separate_metrics
    health = HttpEndpoint(
        config.health_address,
        metrics=metrics if shared else None,
        metrics_path=config.metrics_path,
        flag=config.health_flag,
    )
    health.add_check("/healthz", prober.healthz)
    servers = {"healthz": health}
    if config.separate_metrics:
        servers["metrics"] = HttpEndpoint(
            config.metrics_address, metrics=metrics, metrics_path=config.metrics_path, flag="metrics-address"
        )
    return servers


async def probe_once(config: LivenessProbeConfig, metrics: ProbeMetrics) -> int:
    """`--once`: one /healthz answer printed (reaching the driver within --probe-timeout): 0 if 200."""
    timeout = config.probe_timeout
    async with await CSIConnection.connect(
        config.csi_address, call_timeout=timeout, connect_timeout=timeout, recorder=metrics
    ) as csi:
        await csi.plugin_info()
        status, body = await Prober(csi, timeout=config.probe_timeout, recorder=metrics).healthz()
    print(status, body, flush=True)
    return 0 if status == 200 else 1


async def amain(argv: list[str]) -> int:
    """Parse, find the driver, serve /healthz until SIGTERM (see the module docstring)."""
    flags = entrypoint.parse_or_exit(build_flagset(), argv)
    apply_logging_flags(flags)
    config = LivenessProbeConfig.from_flags(flags)
    metrics = ProbeMetrics()
    if flags.boolean("once"):
        return await probe_once(config, metrics)
    csi = await CSIConnection.connect(
        config.csi_address, call_timeout=None, connect_timeout=None, recorder=metrics
    )
    try:
        log.info("Calling CSI driver to discover driver name")
        info = await csi.plugin_info()
    except BaseException:
        await asyncio.shield(csi.close())
        raise
    log.info("CSI driver name", driver=info.name)
    prober = Prober(csi, timeout=config.probe_timeout, recorder=metrics)
    try:
        async with asyncio.TaskGroup() as group:
            for name, server in endpoints(config, prober, metrics).items():
                group.create_task(server.serve(), name=f"http {name}")
    finally:
        await asyncio.shield(prober.close())
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.LIVENESSPROBE))


if __name__ == "__main__":
    main()
