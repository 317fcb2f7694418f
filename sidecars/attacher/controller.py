"""The attach controller: informers and queues feeding the attach handler, plus the ListVolumes reconciler.

external-attacher's `CSIAttachController`:

* informers on VolumeAttachments (all of them; only `spec.attacher == <driver>` are queued) and
  PersistentVolumes, and — with the CSI handler — CSINodes;
* two rate-limited queues, `csi-attacher-va` and `csi-attacher-pv` (their `workqueue_*` metric
  names), each with per-key exponential backoff from `--retry-interval-start` to
  `--retry-interval-max`, and `--worker-threads` workers each;
* VA updates that only changed attachError/detachError are not queued (`should_enqueue`); a deleted
  VA queues its PV; a PV is queued when it carries our finalizer and is being deleted;
* with LIST_VOLUMES_PUBLISHED_NODES the reconciler runs every `--reconcile-sync`, first at once.

Beyond upstream: a PV that appears, or a CSINode that appears or gains our driver, queues the
unattached VAs waiting for it (upstream waits for their backoff to expire, up to 5 minutes), and a
re-established connection to the driver (upstream exits instead) queues every VA with work left and
runs the reconciler.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from common.backoff import ItemExponential
from common.controller import run_workers
from common.csi import CSIConnection
from common.kube.client import KubeClient
from common.kube.informer import FuncHandler, Informer, InformerFactory
from common.kube.resources import CSI_NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from common.logging import get_logger
from common.metrics import Metrics
from common.workqueue import WorkQueue
from sidecars.attacher.cli import AttacherConfig
from sidecars.attacher.csi_handler import CSIHandler
from sidecars.attacher.handler import (
    PV_INDEX,
    Capabilities,
    Handler,
    Listers,
    Settings,
    TrivialHandler,
    name_of,
    pv_index,
)
from sidecars.attacher.reconciler import list_published, mismatches
from sidecars.attacher.request import finalizer_name, is_for, node_id_from_csinode
from sidecars.attacher.status import has_finalizer, is_attached, is_deleting, should_enqueue

log = get_logger(__name__)

Object = dict[str, Any]
VA_QUEUE = "csi-attacher-va"
PV_QUEUE = "csi-attacher-pv"
NODE_INDEX = "node"
"""The VolumeAttachment cache index: `spec.nodeName` → VAs of this driver on that node."""


class Connections(Protocol):
    """What the controller uses of the process runtime (common.runtime.Runtime has all of it)."""

    kube: KubeClient
    csi: CSIConnection
    factory: InformerFactory
    metrics: Metrics
    driver_name: str


class AttachController:
    """Attaches and detaches this driver's VolumeAttachments (see the module docstring)."""

    name = "csi-attacher"

    def __init__(
        self, *, config: AttacherConfig, conns: Connections, capabilities: Capabilities | None
    ) -> None:
        """`capabilities` None means the trivial handler (no ControllerPublishVolume)."""
        self.config = config
        self.driver = conns.driver_name
        self.finalizer = finalizer_name(self.driver)
        self._csi = conns.csi
        factory = conns.factory
        self.vas = factory.informer(VOLUME_ATTACHMENTS)
        self.vas.add_index(PV_INDEX, pv_index)
        self.vas.add_index(NODE_INDEX, self._node_index)
        self.va_queue: WorkQueue[str] = self._queue(VA_QUEUE, conns.metrics)
        self.pv_queue: WorkQueue[str] = self._queue(PV_QUEUE, conns.metrics)
        self.csi_handler: CSIHandler | None = None
        self.pvs: Informer | None = None
        self.handler: Handler
        if capabilities is None:
            self.handler = TrivialHandler(kube=conns.kube)
        else:
            pvs = self.pvs = factory.informer(PERSISTENT_VOLUMES)
            csinodes = factory.informer(CSI_NODES)
            self.csi_handler = CSIHandler(
                driver=self.driver,
                kube=conns.kube,
                csi=conns.csi,
                listers=Listers(vas=self.vas, pvs=pvs, csinodes=csinodes),
                capabilities=capabilities,
                settings=Settings(
                    timeout=config.timeout,
                    default_fstype=config.default_fstype,
                    error_codes=config.error_code_on_attach_error,
                ),
            )
            self.handler = self.csi_handler
            pvs.add_handler(FuncHandler(add=self._pv_added, update=lambda _, new: self._pv_changed(new)))
            csinodes.add_handler(FuncHandler(add=self._csinode_added, update=self._csinode_updated))
            conns.csi.on_reconnect(self._reconnected)
        self.reconciles = capabilities is not None and capabilities.list_published_nodes
        self._reconcile_now = asyncio.Event()
        self.vas.add_handler(
            FuncHandler(add=self._va_added, update=self._va_updated, delete=self._va_deleted)
        )

    def _queue(self, name: str, metrics: Metrics) -> WorkQueue[str]:
        limiter: ItemExponential[str] = ItemExponential(
            self.config.retry_interval_start, self.config.retry_interval_max
        )
        return WorkQueue(name, limiter=limiter, metrics=metrics.workqueue(name))

    def _ours(self, va: Object) -> bool:
        return is_for(va, self.driver)

    def _node_index(self, va: Object) -> list[str]:
        node = (va.get("spec") or {}).get("nodeName")
        return [str(node)] if node and self._ours(va) else []

    # -- informer events (quick: they only queue keys) -------------------------------------------

    def _va_added(self, va: Object) -> None:
        if self._ours(va):
            self.va_queue.add(name_of(va))

    def _va_updated(self, old: Object, new: Object) -> None:
        if not self._ours(new):
            return
        self.handler.latest.seen(new)
        if should_enqueue(old, new):
            self.va_queue.add(name_of(new))
        else:
            log.info("ignoring VolumeAttachment change", va=name_of(new), v=3)

    def _va_deleted(self, va: Object) -> None:
        self.handler.latest.forget(name_of(va))
        if self.csi_handler is not None:
            self.csi_handler.forget(name_of(va))
        for pv in pv_index(va):
            self.pv_queue.add(pv)  # it may have been the PV's last user

    def _pv_changed(self, pv: Object) -> None:
        if has_finalizer(pv, self.finalizer) and is_deleting(pv):
            self.pv_queue.add(name_of(pv))

    def _pv_added(self, pv: Object) -> None:
        """A new PV: its VAs that failed for want of it (created first, or seen first) go again now."""
        self._pv_changed(pv)
        for va in self.vas.store.by_index(PV_INDEX, name_of(pv)):
            if self._ours(va) and not is_attached(va) and not is_deleting(va):
                self.va_queue.add(name_of(va))

    def _csinode_added(self, csinode: Object) -> None:
        if node_id_from_csinode(csinode, self.driver) is not None:
            self._queue_waiting(name_of(csinode))

    def _csinode_updated(self, old: Object, new: Object) -> None:
        if node_id_from_csinode(new, self.driver) not in (None, node_id_from_csinode(old, self.driver)):
            self._queue_waiting(name_of(new))

    def _queue_waiting(self, node: str) -> None:
        """Queue the node's VAs that still wait to be attached (their last try lacked a node ID)."""
        for va in self.vas.store.by_index(NODE_INDEX, node):
            if not is_attached(va) and not is_deleting(va):
                self.va_queue.add(name_of(va))

    async def _reconnected(self) -> None:
        """After the driver came back: retry every VA with work left now, and reconcile."""
        for va in self.vas.store:
            pending = has_finalizer(va, self.finalizer) if is_deleting(va) else not is_attached(va)
            if pending and self._ours(va):
                self.va_queue.add(name_of(va))
        self._reconcile_now.set()

    # -- workers ---------------------------------------------------------------------------------

    async def sync_va(self, name: str) -> None:
        """One VolumeAttachment key: attach or detach (the handler raises to be retried)."""
        va = self.vas.get(name)
        if va is None:
            log.info("VolumeAttachment was deleted, ignoring", va=name, v=3)
            return
        if not self._ours(va):
            return
        await self.handler.sync_va(self.handler.latest.freshest(va))

    async def sync_pv(self, name: str) -> None:
        """One PersistentVolume key: maybe drop our finalizer."""
        pv = self.pvs.get(name) if self.pvs is not None else None
        if pv is None:
            return
        await self.handler.sync_pv(pv)

    async def reconcile(self) -> None:
        """One pass of the ListVolumes reconciler; raises VolumeError when ListVolumes fails."""
        assert self.csi_handler is not None and self.pvs is not None
        log.info("reconciling VolumeAttachments with driver backend state", v=4)
        published = await list_published(
            self._csi.controller, max_entries=self.config.max_entries, timeout=self.config.timeout
        )
        found = mismatches(
            self.vas.store,
            published,
            driver=self.driver,
            node_id=self.csi_handler.detach_node_id,
            pvs=self.pvs.get,
        )
        for item in found:
            log.warning(
                "VolumeAttachment attached status and actual state do not match, forcing a sync",
                va=item.name,
                volume=item.volume_id,
                node_id=item.node_id,
                published=item.published,
            )
            self.csi_handler.force_sync(item.name, published=item.published)
            self.va_queue.add(item.name)

    async def _reconcile_forever(self) -> None:
        while True:
            self._reconcile_now.clear()
            try:
                await self.reconcile()
            except Exception as err:  # never let one bad pass stop the reconciler (or the workers)
                log.error("failed to reconcile VolumeAttachments", error=str(err) or repr(err))
            try:
                async with asyncio.timeout(self.config.reconcile_sync):
                    await self._reconcile_now.wait()
            except TimeoutError:
                pass

    async def run(self) -> None:
        """Workers for both queues (and the reconciler) until cancelled; the queues drain first."""
        count = self.config.worker_threads
        log.info("starting CSI attacher", driver=self.driver, workers=count, reconcile=self.reconciles)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    run_workers(self.va_queue, self.sync_va, name=VA_QUEUE, count=count),
                    name=f"workers {VA_QUEUE}",
                )
                group.create_task(
                    run_workers(self.pv_queue, self.sync_pv, name=PV_QUEUE, count=count),
                    name=f"workers {PV_QUEUE}",
                )
                if self.reconciles:
                    group.create_task(self._reconcile_forever(), name="reconciler")
        finally:
            log.info("shutting down CSI attacher", driver=self.driver)
