"""The provision controller: every controller of the provisioner wired to one driver, as the runtime runs it.

What external-provisioner's `main` assembles:

* informers: PVCs, PVs, StorageClasses; CSINodes and Nodes (slimmed to name and labels) when the
  driver supports topology (with `--node-deployment` a static Node and CSINode from NodeGetInfo
  instead); VolumeAttachments when it has PUBLISH_UNPUBLISH_VOLUME;
* one request builder (with the snapshot/clone resolver), one provisioner (CreateVolume/DeleteVolume
  with `--timeout`), the provisioning intent, and a topology cache shared by them;
* events from the library's recorder, component `<driver>_<hostname>_<uuid>` (as
  sig-storage-lib-external-provisioner names itself), and for the external-populator notice from
  external-provisioner's own recorder, component `external-provisioner`;
* queues `claims`, `unsavedpvs` (run by the claim controller) and `volumes`;
* with CLONE_VOLUME the cloning-protection controller (sidecars.provisioner.clone); with
  CREATE_DELETE_SNAPSHOT and a non-zero `--snapshot-orphan-sweep-interval` the snapshot-finalizer
  sweep (sidecars.provisioner.snapshots); with `--enable-capacity` the capacity controller
  (sidecars.provisioner.capacity) on its own API client, told about every provisioning and
  deletion; with `--node-deployment` the node check (sidecars.provisioner.nodedeployment) on claims
  and PVs, and the provisioner identity suffixed `-<node>`.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from common.kube.cache import Store
from common.kube.events import NORMAL
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUME_CLAIMS
from common.runtime import Controller, Runtime, token_bucket
from sidecars.provisioner import names
from sidecars.provisioner.capacity import CapacityController
from sidecars.provisioner.claim import ClaimController
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.clone import CloningProtectionController
from sidecars.provisioner.datasource import DataSources
from sidecars.provisioner.deleter import VolumeController
from sidecars.provisioner.intent import Intent
from sidecars.provisioner.nodedeployment import NodeDeployment, node_view
from sidecars.provisioner.provision import BeforeCreate, Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.segments import FixedTopology, NodeTopology, Topology
from sidecars.provisioner.snapshots import SnapshotSweeper
from sidecars.provisioner.state import ProvisionError, ProvisioningState
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings

POPULATOR_MESSAGE = "Assuming an external populator will provision the volume"
Obj = dict[str, Any]


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


class CapacityProvisioner(Provisioner):
    """A provisioner that tells capacity tracking where capacity changed (upstream `provisionWrapper`)."""

    capacity: CapacityController

    async def provision(
        self,
        claim: Obj,
        sc: Mapping[str, Any],
        selected_node: str,
        *,
        before_create: BeforeCreate | None = None,
    ) -> tuple[Obj, Obj]:
        class_name = str((sc.get("metadata") or {}).get("name", ""))
        try:
            pv, latest = await super().provision(claim, sc, selected_node, before_create=before_create)
        except ProvisionError as err:
            if err.state is not ProvisioningState.NO_CHANGE:
                self.capacity.refresh_class(class_name)
            raise
        affinity = (pv.get("spec") or {}).get("nodeAffinity")
        if affinity:
            self.capacity.refresh_topology(affinity)
        else:
            self.capacity.refresh_class(class_name)
        return pv, latest

    def deleted(self, pv: Mapping[str, Any]) -> None:
        affinity = (pv.get("spec") or {}).get("nodeAffinity")
        if affinity:
            self.capacity.refresh_topology(affinity)


@dataclass
class ProvisionController:
    """The provisioner's controllers, built from a runtime (`build`)."""

    claims: ClaimController
    volumes: VolumeController
    provisioner: Provisioner
    cloning_protection: CloningProtectionController | None = None
    snapshot_sweep: SnapshotSweeper | None = None
    capacity: CapacityController | None = None
    node_deployment: NodeDeployment | None = None

    @property
    def controllers(self) -> list[Controller]:
        optional = (self.cloning_protection, self.snapshot_sweep, self.capacity)
        return [self.claims, self.volumes, *(c for c in optional if c is not None)]


def capacity_topology(rt: Runtime, config: ProvisionerConfig, driver: Driver) -> Topology:
    """The segments capacity is tracked for: the cluster's nodes, or with `--node-deployment` this node's."""
    if config.node_deployment:
        return FixedTopology(driver.node_topology)
    return NodeTopology(
        driver=driver.name,
        csinodes=rt.factory.informer(CSI_NODES),
        nodes=rt.factory.informer(NODES, transform=names.slim_node),
        metrics=rt.metrics,
    )


def build(rt: Runtime, config: ProvisionerConfig, driver: Driver) -> ProvisionController:
    """Create the informers, recorders and controllers of one csi-provisioner process."""
    factory = rt.factory
    nodes: NodeView | None = None
    if driver.topology and config.node_deployment:
        nodes = node_view(driver.name, config.node_name, driver.node_id, dict(driver.node_topology))
    elif driver.topology:
        csinodes = factory.informer(CSI_NODES)
        node_informer = factory.informer(NODES, transform=names.slim_node)
        nodes = NodeView(StoreLookup(csinodes.store), StoreLookup(node_informer.store))
    recorder = rt.recorder(library_component(driver.name))
    populator_recorder = rt.recorder("external-provisioner")
    cache = TopologyCache()
    claim_informer = factory.informer(
        PERSISTENT_VOLUME_CLAIMS, transform=names.typed("v1", "PersistentVolumeClaim")
    )
    builder = RequestBuilder(
        config=config,
        driver=driver,
        kube=rt.kube,
        nodes=nodes,
        topology_cache=cache,
        on_populator=lambda claim: populator_recorder.event(claim, NORMAL, "Provisioning", POPULATOR_MESSAGE),
        sources=DataSources(
            kube=rt.kube,
            claims=claim_informer,
            prevent_volume_mode_conversion=config.prevent_volume_mode_conversion,
        ),
    )
    identity = names.provisioner_identity(driver.name)
    if config.node_deployment:
        identity += f"-{config.node_name}"
    settings = PVSettings(
        driver=driver.name,
        identity=identity,
        topology=driver.topology,
        controller_publish_readonly=config.controller_publish_readonly,
        volume_attributes_class=config.volume_attributes_class,
    )
    capacity: CapacityController | None = None
    if config.enable_capacity:
        capacity = CapacityController(
            config=config,
            driver=driver.name,
            csi=rt.csi.controller,
            kube=rt.kube.sibling(
                limiter=token_bucket(config.kube_api_capacity_qps, config.kube_api_capacity_burst)
            ),
            factory=factory,
            topology=capacity_topology(rt, config, driver),
            metrics=rt.metrics,
        )
    provisioner = (Provisioner if capacity is None else CapacityProvisioner)(
        controller=rt.csi.controller,
        builder=builder,
        settings=settings,
        timeout=config.standard.timeout,
        topology_cache=cache,
    )
    if isinstance(provisioner, CapacityProvisioner) and capacity is not None:
        provisioner.capacity = capacity
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
    result = ProvisionController(claims=claims, volumes=volumes, provisioner=provisioner, capacity=capacity)
    if config.node_deployment:
        result.node_deployment = NodeDeployment(
            config=config, provisioner=provisioner, claims=claims.claims, classes=claims.classes
        )
        claims.node_check = result.node_deployment.check
        volumes.node_topology = dict(driver.node_topology)
    if "CLONE_VOLUME" in driver.controller_capabilities:
        result.cloning_protection = CloningProtectionController(
            factory=factory,
            metrics=rt.metrics,
            threads=config.cloning_protection_threads,
            retry_start=config.retry_interval_start,
            retry_max=config.retry_interval_max,
        )
    if (
        "CREATE_DELETE_SNAPSHOT" in driver.controller_capabilities
        and config.snapshot_orphan_sweep_interval > 0
    ):
        result.snapshot_sweep = SnapshotSweeper(
            factory=factory, interval=config.snapshot_orphan_sweep_interval
        )
    return result
