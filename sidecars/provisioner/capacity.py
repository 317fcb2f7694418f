"""Capacity tracking (`--enable-capacity`): one CSIStorageCapacity per StorageClass and topology segment.

external-provisioner's `pkg/capacity` controller. Wanted objects: every StorageClass of this driver
(WaitForFirstConsumer only, unless `--capacity-for-immediate-binding`) x every topology segment
(sidecars.provisioner.segments). For each, GetCapacity{parameters = the class's parameters as they
are, accessible_topology = the segment, one Mount capability of access mode UNKNOWN} and then:

* no object yet: create `{generateName: csisc-, labels: csi.storage.k8s.io/drivername=<driver>,
  csi.storage.k8s.io/managed-by=external-provisioner[-<node>], ownerReferences: [owner],
  storageClassName, nodeTopology: {matchLabels: segment}, capacity, maximumVolumeSize}` in
  `$NAMESPACE` (capacity written even when it is 0);
* an object with the same capacity, maximumVolumeSize and owner: nothing (so a quiet poll makes no
  API call at all);
* otherwise update it (adding our owner reference if missing).

Objects are only ever learned through our own informer (namespace `$NAMESPACE`, label-selected), as
upstream, to avoid racing it: an object matching a wanted (class, segment) pair is adopted, a
duplicate or one whose class or segment went away is deleted, one deleted by someone else is
created again, and one whose labels someone changed is forgotten and replaced. Every
`--capacity-poll-interval` all wanted pairs are refreshed; after a provisioning the pairs of the new
PV's topology (or, without topology, of its class) are refreshed, after a failure those of its
class, after a deletion those of the PV's topology. Work queue `csistoragecapacity` (retries with
`--retry-interval-start`..`--retry-interval-max`), `--capacity-threads` workers, its own API client
(`--kube-api-capacity-qps/-burst`). Gauges `csistoragecapacities_desired_goal`, `_desired_current`
and `csistoragecapacities_obsolete` are computed at scrape time.

The owner (`--capacity-ownerref-level`, sidecars.provisioner.owner) is looked up when the controller
starts (upstream: before leader election); failing that, the process exits 1.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.backoff import ItemExponential
from common.controller import run_workers
from common.errors import ConfigError
from common.kube.client import ApiError, KubeClient
from common.kube.informer import FuncHandler, Informer, InformerFactory
from common.kube.resources import CSI_STORAGE_CAPACITIES, STORAGE_CLASSES
from common.logging import get_logger
from common.metrics import Metrics
from common.quantity import QuantityError, format_quantity, to_bytes
from common.workqueue import WorkQueue
from proto import csi_pb2
from sidecars.provisioner import names, owner
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.segments import Segment, Topology, segment_of, selector, term_segment

log = get_logger(__name__)

Obj = dict[str, Any]
CAPACITY_INFORMER_RESYNC = 3600.0


@dataclass(frozen=True)
class Item:
    """A wanted CSIStorageCapacity: one StorageClass in one segment (upstream `workItem`)."""

    segment: Segment
    storage_class: str


@dataclass(frozen=True)
class Obsolete:
    """A CSIStorageCapacity of ours (by name, in our namespace) that must go."""

    name: str


Key = Item | Obsolete


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _bytes(quantity: object) -> int | None:
    if quantity is None:
        return None
    try:
        return to_bytes(str(quantity))
    except QuantityError:
        return -1


def capacity_request(sc: Mapping[str, Any], segment: Segment) -> Any:
    """The GetCapacityRequest for a class in a segment (the csi_pb2 message)."""
    request = csi_pb2.GetCapacityRequest(parameters=dict(sc.get("parameters") or {}))
    capability = request.volume_capabilities.add()
    capability.mount.SetInParent()
    capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.UNKNOWN
    request.accessible_topology.SetInParent()
    request.accessible_topology.segments.update(dict(segment))
    return request


class CapacityController:
    """Keeps CSIStorageCapacity objects in step with GetCapacity (see the module docstring)."""

    name = "csistoragecapacity"

    def __init__(
        self,
        *,
        config: ProvisionerConfig,
        driver: str,
        csi: Any,
        kube: KubeClient,
        factory: InformerFactory,
        topology: Topology,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.driver = driver
        self.csi = csi
        """The csi.v1.Controller stub, for GetCapacity."""
        self.kube = kube
        self.topology = topology
        self.namespace = config.namespace
        self.managed_by = (
            names.name_with_max_length(names.MANAGED_BY, config.node_name, 63)
            if config.node_deployment
            else names.MANAGED_BY
        )
        self.labels = {names.CAPACITY_DRIVER_LABEL: driver, names.CAPACITY_MANAGED_BY_LABEL: self.managed_by}
        self.owner: Obj | None = None
        self.capacities: dict[Item, Obj | None] = {}
        """Every wanted pair → its object as our informer last showed it (None: none yet)."""
        self._by_uid: dict[str, Item] = {}
        self.classes = factory.informer(STORAGE_CLASSES)
        self.objects = Informer(
            kube,
            CSI_STORAGE_CAPACITIES,
            namespace=self.namespace,
            label_selector=",".join(f"{k}={v}" for k, v in sorted(self.labels.items())),
            resync=CAPACITY_INFORMER_RESYNC,
        )
        self.queue: WorkQueue[Key] = WorkQueue(
            self.name,
            limiter=ItemExponential(config.retry_interval_start, config.retry_interval_max),
            metrics=metrics.workqueue(self.name),
        )
        self.classes.add_handler(
            FuncHandler(
                add=self._class_changed,
                update=lambda _, new: self._class_changed(new),
                delete=self._class_deleted,
            )
        )
        topology.add_callback(self._topology_changed)
        metrics.watch_capacity(self.counts)

    # ------------------------------------------------------------------ what is wanted

    def _tracked(self, sc: Mapping[str, Any]) -> bool:
        if sc.get("provisioner") != self.driver:
            return False
        return self.config.capacity_for_immediate_binding or sc.get("volumeBindingMode") != "Immediate"

    def _add(self, segment: Segment, class_name: str) -> None:
        item = Item(segment, class_name)
        self.capacities.setdefault(item, None)
        self.queue.add(item)

    def _remove(self, segment: Segment, class_name: str) -> None:
        item = Item(segment, class_name)
        if item not in self.capacities:
            return
        obj = self.capacities.pop(item)
        if obj is not None:
            self._by_uid.pop(_uid(obj), None)
            self.queue.add(Obsolete(obj["metadata"]["name"]))

    def _class_changed(self, sc: Obj) -> None:
        if self._tracked(sc):
            for segment in self.topology.segments():
                self._add(segment, sc["metadata"]["name"])

    def _class_deleted(self, sc: Obj) -> None:
        if sc.get("provisioner") == self.driver:
            for segment in self.topology.segments():
                self._remove(segment, sc["metadata"]["name"])

    def _topology_changed(self, added: list[Segment], removed: list[Segment]) -> None:
        for sc in self.classes.store:
            if self._tracked(sc):
                for segment in added:
                    self._add(segment, sc["metadata"]["name"])
                for segment in removed:
                    self._remove(segment, sc["metadata"]["name"])

    def refresh_topology(self, node_affinity: Mapping[str, Any]) -> None:
        """upstream `refreshTopology`: refresh the pairs of each segment a PV's affinity names."""
        wanted = {
            term_segment(t) for t in ((node_affinity.get("required") or {}).get("nodeSelectorTerms") or [])
        }
        for item in self.capacities:
            if item.segment in wanted:
                self.queue.add(item)

    def refresh_class(self, class_name: str) -> None:
        """upstream `refreshSC`: refresh the pairs of one StorageClass."""
        for item in self.capacities:
            if item.storage_class == class_name:
                self.queue.add(item)

    def poll(self) -> None:
        for item in self.capacities:
            self.queue.add(item)

    # ------------------------------------------------------------------ what exists

    def _object_changed(self, obj: Obj) -> None:
        """upstream `onCAddOrUpdate`: remember our object, adopt a matching one, else delete it."""
        uid = _uid(obj)
        if not self._managed(obj):
            item = self._by_uid.pop(uid, None)
            if item is not None and item in self.capacities:
                self.capacities[item] = None
                self.queue.add(item)
            return
        known = self._by_uid.get(uid)
        if known is not None and known in self.capacities:
            self.capacities[known] = obj
            return
        segment = segment_of(obj.get("nodeTopology"))
        item = Item(segment, str(obj.get("storageClassName", ""))) if segment is not None else None
        if item is not None and item in self.capacities and self.capacities[item] is None:
            self.capacities[item] = obj
            self._by_uid[uid] = item
            return
        log.info("CSIStorageCapacity obsolete, enqueue for removal", capacity=obj["metadata"]["name"], v=5)
        self.queue.add(Obsolete(obj["metadata"]["name"]))

    def _object_deleted(self, obj: Obj) -> None:
        item = self._by_uid.pop(_uid(obj), None)
        if item is not None and item in self.capacities:
            log.info(
                "CSIStorageCapacity removed by someone, enqueue for re-creation",
                capacity=obj["metadata"]["name"],
                v=5,
            )
            self.capacities[item] = None
            self.queue.add(item)

    def _managed(self, obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in self.labels.items())

    def _owned(self, obj: Mapping[str, Any]) -> bool:
        """upstream `isOwnedByUs`: a controller reference with our owner's UID (no owner: True)."""
        if self.owner is None:
            return True
        uid = self.owner["uid"]
        return any(
            ref.get("controller") and ref.get("uid") == uid
            for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
        )

    def counts(self) -> tuple[int, int, int]:
        """(goal, current, obsolete) for the `csistoragecapacities_*` gauges."""
        current = sum(1 for obj in self.capacities.values() if obj is not None)
        obsolete = 0
        for obj in self.objects.store:
            segment = segment_of(obj.get("nodeTopology"))
            if self._managed(obj) and (
                segment is None or Item(segment, str(obj.get("storageClassName", ""))) not in self.capacities
            ):
                obsolete += 1
        return len(self.capacities), current, obsolete

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Owner lookup, informers, then workers and the poll, until cancelled."""
        if self.config.capacity_ownerref_level >= 0:
            try:
                self.owner = await owner.lookup(
                    self.kube, self.namespace, self.config.pod_name, self.config.capacity_ownerref_level
                )
            except owner.OwnerError as err:
                raise ConfigError(f"look up owner(s) of pod: {err}") from None
            log.info(
                "using owner for CSIStorageCapacity objects",
                api_version=self.owner["apiVersion"],
                kind=self.owner["kind"],
                name=self.owner["name"],
            )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.objects.run(), name="informer csistoragecapacities")
            group.create_task(self.objects.run_resync(), name="resync csistoragecapacities")
            group.create_task(self.topology.run(), name="capacity topology")
            await self.topology.wait_synced()
            await self.objects.wait_synced()
            self._topology_changed(self.topology.segments(), [])
            log.info(
                "initial state",
                segments=len(self.topology.segments()),
                potential_objects=len(self.capacities),
                v=3,
            )
            self.objects.add_handler(
                FuncHandler(
                    add=self._object_changed,
                    update=lambda _, new: self._object_changed(new),
                    delete=self._object_deleted,
                )
            )
            group.create_task(
                run_workers(self.queue, self.sync, name=self.name, count=self.config.capacity_threads),
                name="capacity workers",
            )
            while True:
                await asyncio.sleep(self.config.capacity_poll_interval)
                self.poll()

    async def sync(self, key: Key) -> None:
        if isinstance(key, Obsolete):
            await self.delete(key.name)
        else:
            await self.refresh(key)

    async def delete(self, name: str) -> None:
        log.info("removing CSIStorageCapacity", capacity=name, v=5)
        try:
            await self.kube.delete(CSI_STORAGE_CAPACITIES, name, namespace=self.namespace)
        except ApiError as err:
            if not err.not_found:
                raise

    async def refresh(self, item: Item) -> None:
        """upstream `syncCapacity`: GetCapacity, then create, update or leave the object."""
        if item not in self.capacities:
            return  # became obsolete meanwhile
        sc = self.classes.get(item.storage_class)
        if sc is None:
            return
        response = await self.csi.GetCapacity(
            capacity_request(sc, item.segment), timeout=self.config.standard.timeout
        )
        capacity = format_quantity(response.available_capacity, binary=True)
        maximum = (
            format_quantity(response.maximum_volume_size.value, binary=True)
            if response.HasField("maximum_volume_size")
            else None
        )
        current = self.capacities.get(item)
        if current is None:
            await self._create(item, capacity, maximum)
            return
        same_owner = self._owned(current)
        if (
            _bytes(current.get("capacity")) == response.available_capacity
            and _bytes(current.get("maximumVolumeSize"))
            == (None if maximum is None else response.maximum_volume_size.value)
            and same_owner
        ):
            log.info("no need to update CSIStorageCapacity", capacity=current["metadata"]["name"], v=5)
            return
        updated = copy.deepcopy(current)
        updated["capacity"] = capacity
        if maximum is None:
            updated.pop("maximumVolumeSize", None)
        else:
            updated["maximumVolumeSize"] = maximum
        if not same_owner and self.owner is not None:
            references = updated["metadata"].get("ownerReferences") or []
            updated["metadata"]["ownerReferences"] = [*references, dict(self.owner)]
        await self.kube.update(CSI_STORAGE_CAPACITIES, updated)
        log.info("updated CSIStorageCapacity", capacity=current["metadata"]["name"], quantity=capacity, v=5)

    async def _create(self, item: Item, capacity: str, maximum: str | None) -> None:
        meta: Obj = {"generateName": "csisc-", "namespace": self.namespace, "labels": dict(self.labels)}
        if self.owner is not None:
            meta["ownerReferences"] = [dict(self.owner)]
        obj: Obj = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIStorageCapacity",
            "metadata": meta,
            "storageClassName": item.storage_class,
            "nodeTopology": selector(item.segment),
            "capacity": capacity,
        }
        if maximum is not None:
            obj["maximumVolumeSize"] = maximum
        created = await self.kube.create(CSI_STORAGE_CAPACITIES, obj)
        # Not remembered here: the informer brings it (a duplicate created meanwhile is deleted then).
        log.info("created CSIStorageCapacity", capacity=created["metadata"]["name"], quantity=capacity, v=5)
