"""The controller groups of a combined process: each sidecar's controllers, built as that sidecar builds them.

Each group is built by its own sidecar's code (`sidecars.provisioner.controller.build`,
`sidecars.attacher.controller.AttachController`, `sidecars.resizer.__main__.build_controllers`) on a
view of the one runtime (`scoped`): the same CSI channel, API client, metrics and event writers, the
group's own standard config (its `--timeout`, its leader-election settings) and a `ScopedFactory`,
which hands out the process's shared informers and records which ones the group reads. Capabilities
are discovered up front, as each sidecar does before leader election, so a driver one of them cannot
serve fails the start.

One informer per resource: the PV informer serves all three groups, PVCs the provisioner and the
resizer, VolumeAttachments and CSINodes the provisioner and the attacher. A transform asked for by a
second group is composed after the first (the provisioner's adds apiVersion/kind, which the others
do not mind), and an informer resyncs at the shortest period its groups ask for: the provisioner's 1h,
the attacher's `--resync` (10m), the resizer's `--resync-period` (10m).

The Leases are the single sidecars': `<driver>` sanitized for the provisioner, `external-attacher-
leader-<driver>` and `external-resizer-<driver>` (both sanitized).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from common.kube.cache import Object
from common.kube.informer import Informer, InformerFactory, drop_managed_fields
from common.kube.resources import Resource
from common.leaderelection import sanitize_name
from common.runtime import Controller, ControllerGroup, Runtime, StandardConfig
from sidecars.attacher import __main__ as attacher_main
from sidecars.attacher.cli import AttacherConfig
from sidecars.attacher.controller import AttachController
from sidecars.attacher.handler import discover as discover_attach
from sidecars.combined.cli import CombinedConfig
from sidecars.provisioner import __main__ as provisioner_main
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.controller import build as build_provisioner
from sidecars.provisioner.controller import lock_name as provisioner_lock
from sidecars.resizer import __main__ as resizer_main
from sidecars.resizer.cli import ResizerConfig

RESIZER_LOCK_PREFIX = "external-resizer-"


class ScopedFactory(InformerFactory):
    """One group's view of the process's shared informers: hands them out and records them.

    A second transform for an informer is composed after the first (every group is built before any
    informer runs), and the informer resyncs at the shortest period any of its groups asked for (0: never).
    """

    def __init__(self, shared: InformerFactory, *, resync: float) -> None:
        super().__init__(shared.client, resync=resync)
        self.shared = shared

    def informer(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        transform: Callable[[Object], Object] = drop_managed_fields,
    ) -> Informer:
        known = {id(informer) for informer in self.shared.informers}
        informer = self.shared.informer(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            transform=transform,
        )
        if id(informer) not in known:
            informer.resync = self.resync
        else:
            if informer.transform is not transform:
                if informer.has_synced or len(informer.store):
                    raise RuntimeError(f"informer {informer.name} runs already: cannot add a transform")
                informer.transform = _compose(informer.transform, transform)
            informer.resync = min((p for p in (informer.resync, self.resync) if p > 0), default=0.0)
        self._informers[(resource, namespace, label_selector, field_selector)] = informer
        return informer


def _compose(
    first: Callable[[Object], Object], then: Callable[[Object], Object]
) -> Callable[[Object], Object]:
    return lambda obj: then(first(obj))


def scoped(rt: Runtime, config: StandardConfig, *, resync: float) -> Runtime:
    """A view of `rt` for one group: same connections and event writers, `config`, a `ScopedFactory`."""
    factory = ScopedFactory(rt.factory, resync=resync)
    return dataclasses.replace(rt, config=config, factory=factory, recorders=rt.recorders)


def _group(view: Runtime, lock_name: str, controllers: Sequence[Controller]) -> ControllerGroup:
    return ControllerGroup(
        lock_name=lock_name, controllers=controllers, informers=view.factory.informers, config=view.config
    )


async def provisioner_group(rt: Runtime, config: ProvisionerConfig) -> ControllerGroup:
    """csi-provisioner's claim and volume controllers (its capability check included)."""
    view = scoped(rt, config.standard, resync=provisioner_main.RESYNC_PERIOD)
    config = await provisioner_main.settle_gates(view, config)
    driver = await provisioner_main.discover(view, config)
    provision = build_provisioner(view, config, driver)
    return _group(view, provisioner_lock(driver.name), provision.controllers)


async def attacher_group(rt: Runtime, config: AttacherConfig) -> ControllerGroup:
    """csi-attacher's controller, with the CSI or the trivial handler as the driver's capabilities say."""
    view = scoped(rt, config.standard, resync=config.resync)
    capabilities = await discover_attach(view.csi)
    controller = AttachController(config=config, conns=view, capabilities=capabilities)
    return _group(view, attacher_main.LOCK_PREFIX + rt.driver_name, [controller])


async def resizer_group(rt: Runtime, config: ResizerConfig) -> ControllerGroup:
    """csi-resizer's resize (and modify) controllers (its capability checks included)."""
    view = scoped(rt, config.standard, resync=config.resync_period)
    controllers = await resizer_main.build_controllers(view, config)
    return _group(view, RESIZER_LOCK_PREFIX + sanitize_name(rt.driver_name), controllers)


async def build_groups(rt: Runtime, config: CombinedConfig) -> list[ControllerGroup]:
    """The enabled groups, provisioner first (its PV and PVC transforms apply first)."""
    groups = []
    if config.provisioner is not None:
        groups.append(await provisioner_group(rt, config.provisioner))
    if config.attacher is not None:
        groups.append(await attacher_group(rt, config.attacher))
    if config.resizer is not None:
        groups.append(await resizer_group(rt, config.resizer))
    return groups
