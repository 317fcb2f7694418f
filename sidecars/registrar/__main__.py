"""csi-node-driver-registrar: registers a CSI driver with kubelet's plugin watcher (wiring only).

Start (upstream order): flags → `--kubelet-registration-path` required → `--mode=kubelet-registration-probe`
exits 0 → connect to the driver (30 s, then exit 1) → GetPluginInfo with `--timeout` (the driver
name) → serve `<plugin-registration-path>/<driver>-reg.sock` and, if configured, /healthz. No
Kubernetes API access: this module never imports kubernetes_asyncio, common.kube or common.runtime.

Stop: SIGTERM stops the registration server and removes the socket (exit 0); kubelet refusing the
registration exits 1.
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
from common.standardflags import apply_logging_flags, version
from sidecars.registrar.cli import PROGRAM, RegistrarConfig, build_flagset
from sidecars.registrar.controller import Registration
from sidecars.registrar.server import RegistrationSocket

log = get_logger(__name__)

CSI_CONNECT_TIMEOUT = 30.0
"""Seconds to wait for the driver at startup (csi-lib-utils `Connect`), then exit 1."""


async def driver_name(config: RegistrarConfig) -> str:
    """Connect to the driver, ask its name (GetPluginInfo with `--timeout`) and hang up."""
    log.info("Attempting to open a gRPC connection", csi_address=config.csi_address, v=1)
    async with await CSIConnection.connect(
        config.csi_address, call_timeout=config.timeout, connect_timeout=CSI_CONNECT_TIMEOUT
    ) as csi:
        log.info("Calling CSI driver to discover driver name", v=1)
        info = await csi.plugin_info()
    log.info("CSI driver name", driver=info.name, v=2)
    return info.name


async def amain(argv: list[str]) -> int:
    """Parse, register, serve until SIGTERM (see the module docstring)."""
    flags = entrypoint.parse_or_exit(build_flagset(), argv)
    apply_logging_flags(flags)
    config = RegistrarConfig.from_flags(flags)
    if config.probe_mode:
        return 0  # a no-op since upstream v2.9: existing exec probes keep passing
    log.info("Version", version=version())
    log.info("Running node-driver-registrar", mode=flags.string("mode"))
    name = await driver_name(config)
    registration = Registration(driver_name=name, endpoint=config.kubelet_registration_path)
    socket = RegistrationSocket(config.registration_socket_path(name), registration, timeout=config.timeout)
    endpoint = None
    if config.http_address:
        flag = "health-port" if flags.integer("health-port") > 0 else "http-endpoint"
        endpoint = HttpEndpoint(config.http_address, metrics=None, flag=flag)
        endpoint.add_check("/healthz", socket.healthz)
    else:
        log.info("Skipping HTTP server")
    async with asyncio.TaskGroup() as group:
        group.create_task(socket.serve(), name="registration server")
        if endpoint is not None:
            group.create_task(endpoint.serve(), name="http")
        group.create_task(registration.wait_failed(), name="registration status")
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.REGISTRAR))


if __name__ == "__main__":
    main()
