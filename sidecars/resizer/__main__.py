"""csi-resizer's entrypoint: flags, the driver's capabilities, then the resize and modify controllers.

Startup as external-resizer: connect, probe, GetPluginInfo (the runtime), then the plugin must offer
CONTROLLER_SERVICE. Controller EXPAND_VOLUME selects the CSI resizer; without it, node EXPAND_VOLUME
selects the trivial resizer; MODIFY_VOLUME (with the VolumeAttributesClass gate, which is turned off
when the API server does not serve VolumeAttributesClasses unless set explicitly) adds the modify
controller. A driver with none of them is refused. The Lease is `external-resizer-<sanitized driver>`,
events come from `external-resizer <driver>`.
"""

from __future__ import annotations

from common import debug, entrypoint
from common.errors import CapabilityError
from common.kube.resources import VOLUME_ATTRIBUTES_CLASSES
from common.leaderelection import sanitize_name
from common.logging import get_logger
from common.metrics import Metrics
from common.runtime import Controller, Runtime
from common.standardflags import apply_logging_flags, version
from sidecars.resizer import explain
from sidecars.resizer.cli import PROGRAM, ResizerConfig, build_flagset
from sidecars.resizer.controller import ResizeController
from sidecars.resizer.modify import ModifyController
from sidecars.resizer.resizer import CSIResizer, Resizer, TrivialResizer

log = get_logger("sidecars.resizer")


async def choose_resizer(rt: Runtime) -> Resizer | None:
    """The CSI resizer, the trivial resizer, or None when the driver cannot expand at all."""
    if "CONTROLLER_SERVICE" not in await rt.csi.plugin_capabilities():
        raise CapabilityError("CSI driver does not support controller service")
    if "EXPAND_VOLUME" in await rt.csi.controller_capabilities():
        return CSIResizer(name=rt.driver_name, csi=rt.csi, kube=rt.kube, timeout=rt.config.timeout)
    if "EXPAND_VOLUME" in await rt.csi.node_capabilities():
        log.info("the CSI driver supports node resize only, using trivial resizer to handle resize requests")
        return TrivialResizer(name=rt.driver_name)
    log.info("the CSI driver supports neither controller nor node resize")
    return None


async def modify_enabled(rt: Runtime, config: ResizerConfig) -> bool:
    if not config.volume_attributes_class:
        return False
    if not config.volume_attributes_class_explicit and not await rt.kube.serves(VOLUME_ATTRIBUTES_CLASSES):
        log.info("VolumeAttributesClass is not served by the API server, modify controller disabled")
        return False
    if "MODIFY_VOLUME" not in await rt.csi.controller_capabilities():
        log.info("the CSI driver does not support ControllerModifyVolume, modify controller disabled", v=2)
        return False
    return True


async def build_controllers(rt: Runtime, config: ResizerConfig) -> list[Controller]:
    resizer = await choose_resizer(rt)
    modify = await modify_enabled(rt, config)
    if resizer is None and not modify:
        raise CapabilityError("CSI driver does not support resize nor modify")
    recorder = rt.recorder(f"external-resizer {rt.driver_name}")
    queue_metrics = rt.metrics.workqueue(f"{rt.driver_name}-pvc")
    controllers: list[Controller] = []
    if resizer is not None:
        resize = ResizeController(
            config=config, resizer=resizer, factory=rt.factory, recorder=recorder, queue_metrics=queue_metrics
        )
        rt.csi.on_reconnect(resize.resync_all)
        controllers.append(resize)
    if modify:
        controllers.append(
            ModifyController(
                config=config,
                driver=rt.driver_name,
                csi=rt.csi,
                factory=rt.factory,
                recorder=recorder,
                queue_metrics=queue_metrics,
            )
        )
    return controllers


async def amain(argv: list[str]) -> int:
    flags = entrypoint.parse_or_exit(build_flagset(), argv)
    apply_logging_flags(flags)
    config = ResizerConfig.from_flags(flags)
    log.info("Version", version=version())
    async with Runtime.open(PROGRAM, config.standard, resync=config.resync_period, metrics=Metrics()) as rt:
        controllers = await build_controllers(rt, config)
        await rt.run(lock_name="external-resizer-" + sanitize_name(rt.driver_name), controllers=controllers)
    return 0


def main() -> None:
    entrypoint.run(PROGRAM, debug.wrap(amain, build_flagset, bed=debug.RESIZER, explain=explain.amain))


if __name__ == "__main__":
    main()
