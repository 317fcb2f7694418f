"""The provision controller: the claim and volume controllers wired to one driver, as the runtime runs them.

What external-provisioner's `main` assembles, minus what "csi-provisioner II" adds (clone and
snapshot protection, capacity tracking, node deployment):

* informers: PVCs, PVs, StorageClasses; CSINodes and Nodes (slimmed to name and labels) when the
  driver supports topology; VolumeAttachments when it has PUBLISH_UNPUBLISH_VOLUME;
* one request builder, one provisioner (CreateVolume/DeleteVolume with `--timeout`), the
  provisioning intent, and a topology cache shared by them;
* events from the library's recorder, component `<driver>_<hostname>_<uuid>` (as
  sig-storage-lib-external-provisioner names itself), and for the external-populator notice from
  external-provisioner's own recorder, component `external-provisioner`;
* queues `claims`, `unsavedpvs` (run by the claim controller) and `volumes`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.kube.cache import Store
from common.kube.events import NORMAL
from common.kube.resources import CSI_NODES, NODES
from common.runtime import Controller, Runtime
from sidecars.provisioner import names
from sidecars.provisioner.claim import ClaimController
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.deleter import VolumeController
from sidecars.provisioner.intent import Intent
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings

POPULATOR_MESSAGE = "Assuming an external populator will provision the volume"


class StoreLookup:
    """An informer cache of cluster-scoped objects seen as a `topology.Lookup`."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, name: str) -> Any:
        return self._store.get(name)

    def values(self) -> Iterable[Any]:
        return self._store.list()


def library_component(driver: str) -> str:
    """sig-storage-lib-external-provisioner's event source: `<driver>_<hostname>_<uuid>`."""
    return f"{driver}_{socket.gethostname()}_{uuid.uuid4()}"


def lock_name(driver: str) -> str:
    """The leader-election lock: the driver name with "/" replaced (the runtime sanitizes the rest)."""
    return driver.replace("/", "-")


@dataclass
class ProvisionController:
    """Both halves of the provisioner, built from a runtime (`build`)."""

    claims: ClaimController
    volumes: VolumeController
    provisioner: Provisioner

    @property
    def controllers(self) -> list[Controller]:
        return [self.claims, self.volumes]


def build(rt: Runtime, config: ProvisionerConfig, driver: Driver) -> ProvisionController:
    """Create the informers, recorders and controllers of one csi-provisioner process."""
    factory = rt.factory
    nodes: NodeView | None = None
    if driver.topology:
        csinodes = factory.informer(CSI_NODES)
        node_informer = factory.informer(NODES, transform=names.slim_node)
        nodes = NodeView(StoreLookup(csinodes.store), StoreLookup(node_informer.store))
    recorder = rt.recorder(library_component(driver.name))
    populator_recorder = rt.recorder("external-provisioner")
    cache = TopologyCache()
    builder = RequestBuilder(
        config=config,
        driver=driver,
        kube=rt.kube,
        nodes=nodes,
        topology_cache=cache,
        on_populator=lambda claim: populator_recorder.event(claim, NORMAL, "Provisioning", POPULATOR_MESSAGE),
    )
    settings = PVSettings(
        driver=driver.name,
        identity=names.provisioner_identity(driver.name),
        topology=driver.topology,
        controller_publish_readonly=config.controller_publish_readonly,
        volume_attributes_class=config.volume_attributes_class,
    )
    provisioner = Provisioner(
        controller=rt.csi.controller,
        builder=builder,
        settings=settings,
        timeout=config.standard.timeout,
        topology_cache=cache,
    )
    intent = Intent(kube=rt.kube, provisioner=provisioner, enabled=config.persist_provisioning_intent)
    claims = ClaimController(
        config=config,
        provisioner=provisioner,
        intent=intent,
        factory=factory,
        recorder=recorder,
        metrics=rt.metrics,
    )
    volumes = VolumeController(
        config=config, provisioner=provisioner, factory=factory, recorder=recorder, metrics=rt.metrics
    )
    return ProvisionController(claims=claims, volumes=volumes, provisioner=provisioner)
