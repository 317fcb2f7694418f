"""csi-provisioner's entrypoint: flags, the driver's capabilities, then the claim and volume controllers.

Startup as external-provisioner: connect, probe, GetPluginInfo (the driver name is the provisioner
name), plugin and controller capabilities. A driver without CONTROLLER_SERVICE or
CREATE_DELETE_VOLUME cannot provision anything: the process exits 1 saying so (upstream keeps
running and fails every claim). With `--node-deployment`, NodeGetInfo gives this node's id and
topology. The VolumeAttributesClass gate, unless set on the command line, is turned off when the API
server does not serve storage.k8s.io/v1 volumeattributesclasses (upstream's auto-disable).
`$KUBECONFIG` overrides `--kubeconfig`. The Lease is the sanitized driver name
(`hostpath-csi-k8s-io`); informers resync every hour, as upstream's shared factory.
"""

from __future__ import annotations

import dataclasses

import grpc

from common import debug, entrypoint
from common.csi.errors import describe
from common.errors import CapabilityError
from common.kube.resources import VOLUME_ATTRIBUTES_CLASSES
from common.logging import get_logger
from common.metrics import Metrics
from common.runtime import Runtime
from common.standardflags import apply_logging_flags, version
from sidecars.provisioner import explain
from sidecars.provisioner.cli import PROGRAM, ProvisionerConfig, build_flagset
from sidecars.provisioner.controller import build, lock_name
from sidecars.provisioner.request import Driver
from sidecars.provisioner.state import ProvisionError

log = get_logger("sidecars.provisioner")

RESYNC_PERIOD = 3600.0
"""external-provisioner's `ResyncPeriodOfCsiNodeInformer`, the resync of its shared informers."""


async def discover(rt: Runtime, config: ProvisionerConfig) -> Driver:
    """The driver's name and capabilities; CapabilityError when it cannot provision at all."""
    driver = Driver(
        name=rt.driver_name,
        plugin_capabilities=await rt.csi.plugin_capabilities(),
        controller_capabilities=await rt.csi.controller_capabilities(),
        topology_gate=config.topology,
    )
    if config.node_deployment:
        try:
            info = await rt.csi.node_info()
        except grpc.RpcError as err:
            raise CapabilityError(f"Failed to get node info from CSI driver: {describe(err)}") from None
        driver = dataclasses.replace(
            driver, node_id=info.node_id, node_topology=tuple(sorted(info.accessible_topology.items()))
        )
        log.info("using local topology", node=config.node_name, topology=dict(driver.node_topology))
    try:
        driver.check()
    except ProvisionError as err:
        raise CapabilityError(str(err)) from None
    log.info(
        "CSI driver capabilities",
        driver=driver.name,
        topology=driver.topology,
        attach_required=driver.attach_required,
        controller=sorted(driver.controller_capabilities),
    )
    return driver


async def settle_gates(rt: Runtime, config: ProvisionerConfig) -> ProvisionerConfig:
    """VolumeAttributesClass on by default is turned off when the API is absent (upstream's rule)."""
    if not config.volume_attributes_class or config.volume_attributes_class_explicit:
        return config
    if await rt.kube.serves(VOLUME_ATTRIBUTES_CLASSES):
        return config
    log.info("VolumeAttributesClass API not available, disabling the VolumeAttributesClass feature")
    return dataclasses.replace(config, volume_attributes_class=False)


async def amain(argv: list[str]) -> int:
    flags = entrypoint.parse_or_exit(build_flagset(), argv)
    apply_logging_flags(flags)
    config = ProvisionerConfig.from_flags(flags)
    log.info("Version", version=version())
    metrics = Metrics(alpha_start_time=False)
    async with Runtime.open(
        PROGRAM, config.standard, use_kubeconfig_env=True, resync=RESYNC_PERIOD, metrics=metrics
    ) as rt:
        config = await settle_gates(rt, config)
        driver = await discover(rt, config)
        provision = build(rt, config, driver)
        await rt.run(lock_name=lock_name(driver.name), controllers=provision.controllers)
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.PROVISIONER, explain=explain.amain))


if __name__ == "__main__":
    main()
