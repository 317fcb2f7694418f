"""The resize controller: watches PVCs and expands the volumes of this driver whose claims ask for more.

external-resizer's `resizeController`. Informers: every PVC and PV in the cluster, plus (with
`--handle-volume-inuse-error`, the default) every Pod, slimmed by `inuse.slim_pod`. One work queue
named `<driver>-pvc` keyed `namespace/name`, retried per key from `--retry-interval-start` doubling
up to `--retry-interval-max`.

A PVC is queued when it is added, and on an update when (RecoverVolumeExpansionFailure on) its
request changed in either direction, its `volume.kubernetes.io/storage-resizer` annotation changed,
its resourceVersion did not (a resync), its status capacity grew, or its allocatedResourceStatus
changed. `sync` then looks at the claim and its PV from the caches:

* a PV of another driver or not bound to this claim is left alone;
* `volume.alpha.kubernetes.io/pre-resize-capacity` is removed from the PV once the claim's capacity
  caught up (AnnotateFsResize);
* a Bound claim asking for more than its status capacity is expanded by `expansion.Expander`.

Bad input never crash-loops: a size that is not a quantity gets a `VolumeResizeFailed` event and is
not retried until the claim changes; a PV without a CSI source whose claim names this driver as its
resizer gets an event saying why it cannot be expanded.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from common.backoff import ItemExponential
from common.controller import run_workers
from common.kube.events import WARNING, EventRecorder
from common.kube.informer import FuncHandler, InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS, object_key
from common.logging import get_logger
from common.metrics import QueueMetrics
from common.quantity import QuantityError
from common.workqueue import WorkQueue
from sidecars.resizer import claims as c
from sidecars.resizer.cli import ResizerConfig
from sidecars.resizer.expansion import VOLUME_RESIZE_FAILED, Expander
from sidecars.resizer.inuse import InUseTracker, slim_pod
from sidecars.resizer.resizer import Resizer
from sidecars.resizer.slowset import SlowSet
from sidecars.resizer.writer import Writer

log = get_logger(__name__)

Obj = dict[str, Any]

POD_PAGE_SIZE = 200
"""Pods per list page: a page is parsed whole before it is slimmed, so pages of 200 instead of 500
keep the resizer's peak memory with 10,000 pods about 8 MiB lower (bench/resizer_bench.py)."""


def _size_changed(old: str | None, new: str | None, *, grew_only: bool) -> bool:
    try:
        diff = c.cmp(new, old)
    except QuantityError:
        return old != new
    return diff > 0 if grew_only else diff != 0


def should_enqueue(old: Mapping[str, Any], new: Mapping[str, Any], *, recovery: bool) -> bool:
    """The update filter of `updatePVC` (see the module docstring)."""
    if _size_changed(c.request_size(old), c.request_size(new), grew_only=not recovery):
        return True
    if c.annotations_of(old).get(c.ANN_STORAGE_RESIZER) != c.annotations_of(new).get(c.ANN_STORAGE_RESIZER):
        return True
    old_rv = (old.get("metadata") or {}).get("resourceVersion")
    if old_rv == (new.get("metadata") or {}).get("resourceVersion"):
        return True  # a resync
    if _size_changed(c.status_capacity(old), c.status_capacity(new), grew_only=True):
        return True  # the node finished: drop the pre-resize annotation
    return recovery and c.resize_status(old) != c.resize_status(new)


class Look(Enum):
    """What `sync` does with a claim, given its PV (`look_at`)."""

    UNBOUND = "the claim is not bound to a volume yet"
    PV_MISSING = "its PersistentVolume does not exist"
    NOT_OURS = "its PersistentVolume is not a CSI volume of this driver"
    OTHER_CLAIM = "its PersistentVolume is not bound to this claim"
    SIZES = "compare the sizes"


def look_at(pvc: Mapping[str, Any], pv: Mapping[str, Any] | None, resizer: Resizer) -> Look:
    """syncPVC's checks before the sizes, in its order (`pv` is the claim's volume from the cache)."""
    if not (pvc.get("spec") or {}).get("volumeName"):
        return Look.UNBOUND
    if pv is None:
        return Look.PV_MISSING
    if not resizer.can_support(pv):
        return Look.NOT_OURS
    if not c.bound_to(pv, pvc):
        return Look.OTHER_CLAIM
    return Look.SIZES


def drops_pre_resize_annotation(
    pvc: Mapping[str, Any], pv: Mapping[str, Any], *, annotate_fs_resize: bool
) -> bool:
    """AnnotateFsResize: the PV's pre-resize-capacity annotation goes once the claim caught up."""
    return (
        annotate_fs_resize
        and c.ANN_PRE_RESIZE_CAPACITY in c.annotations_of(pv)
        and c.node_expand_complete(pvc, pv)
    )


class ResizeController:
    """Expands volumes for PVCs (see the module docstring). Build it, then `await run()` while leading."""

    name = "resize"

    def __init__(
        self,
        *,
        config: ResizerConfig,
        resizer: Resizer,
        factory: InformerFactory,
        recorder: EventRecorder,
        queue_metrics: QueueMetrics | None = None,
    ) -> None:
        self.config = config
        self.resizer = resizer
        self.recorder = recorder
        self.claims = factory.informer(PERSISTENT_VOLUME_CLAIMS)
        self.volumes = factory.informer(PERSISTENT_VOLUMES)
        pods = factory.informer(PODS, transform=slim_pod) if config.handle_volume_inuse_error else None
        if pods is not None:
            log.info("register Pod informer for resizer", controller=resizer.name)
            pods.page_size = POD_PAGE_SIZE
        self.in_use = InUseTracker(pods)
        self.queue: WorkQueue[str] = WorkQueue(
            f"{resizer.name}-pvc",
            limiter=ItemExponential(config.retry_interval_start, config.retry_interval_max),
            metrics=queue_metrics,
        )
        self.expander = Expander(
            resizer=resizer,
            writer=Writer(factory.client, claims=self.claims, volumes=self.volumes),
            recorder=recorder,
            in_use=self.in_use,
            slow=SlowSet(config.retry_interval_max),
            annotate_fs_resize=config.annotate_fs_resize,
        )
        self.claims.add_handler(
            FuncHandler(add=self._enqueue, update=self._on_update, delete=self._on_delete)
        )

    # ------------------------------------------------------------------------ events

    def _enqueue(self, pvc: Obj) -> None:
        self.queue.add(object_key(pvc))

    def _on_update(self, old: Obj, new: Obj) -> None:
        if should_enqueue(old, new, recovery=self.config.recover_volume_expansion_failure):
            self._enqueue(new)

    def _on_delete(self, pvc: Obj) -> None:
        key = object_key(pvc)
        self.queue.forget(key)
        self.expander.forget(key)

    async def resync_all(self) -> None:
        """Look at every claim again (after the driver came back)."""
        for key in self.claims.store.list_keys():
            self.queue.add(key)

    # ------------------------------------------------------------------------ running

    async def run(self) -> None:
        log.info("starting external resizer", controller=self.resizer.name)
        try:
            await run_workers(self.queue, self.sync, name=self.name, count=self.config.workers)
        finally:
            log.info("shutting down external resizer", controller=self.resizer.name)

    async def sync(self, key: str) -> None:
        """syncPVC: one look at one claim (see the module docstring)."""
        log.info("started PVC processing for resize controller", key=key, v=4)
        pvc = self.claims.store.get(key)
        if pvc is None:
            log.info("PVC is deleted or does not exist", pvc=key, v=3)
            return
        volume_name = (pvc.get("spec") or {}).get("volumeName")
        pv = self.volumes.get(str(volume_name)) if volume_name else None
        look = look_at(pvc, pv, self.resizer)
        if look is Look.UNBOUND:
            log.info("PV bound to PVC is not created yet", pvc=key, v=4)
            return
        if pv is None:
            log.info("PV bound to PVC not found", pv=volume_name, pvc=key)
            return
        if look is Look.NOT_OURS:
            self._not_ours(pvc, pv)
            return
        if look is Look.OTHER_CLAIM:
            log.info("persistent volume is not bound to PVC being updated", pvc=key, v=4)
            return
        try:
            await self._sync_claim(pvc, pv)
        except QuantityError as exc:
            # The API server never stores such sizes; if one gets through, say so once per change.
            self.recorder.event(pvc, WARNING, VOLUME_RESIZE_FAILED, f"invalid storage size: {exc}")
            log.error("invalid storage size", pvc=key, error=str(exc))

    async def _sync_claim(self, pvc: Obj, pv: Obj) -> None:
        if drops_pre_resize_annotation(pvc, pv, annotate_fs_resize=self.config.annotate_fs_resize):
            await self.expander.writer.patch_volume(pv, c.without_pre_resize_annotation(pv))
        if not c.needs_resize(pvc):
            log.info("no need to resize PVC", pvc=c.key_of(pvc), v=4)
            return
        if self.config.recover_volume_expansion_failure:
            await self.expander.expand_and_recover(pvc, pv)
        else:
            await self.expander.legacy_resize(pvc, pv)

    def _not_ours(self, pvc: Obj, pv: Obj) -> None:
        """Skip a PV of another driver; complain only if the claim names us as its resizer."""
        key = c.key_of(pvc)
        log.info("resizer does not support the PV, skipping", pvc=key, pv=object_key(pv), v=4)
        named_us = c.annotations_of(pvc).get(c.ANN_STORAGE_RESIZER) == self.resizer.name
        has_csi = isinstance((pv.get("spec") or {}).get("csi"), Mapping)
        try:
            wants_more = c.needs_resize(pvc)
        except QuantityError:
            wants_more = True
        if named_us and not has_csi and wants_more:
            self.recorder.event(
                pvc,
                WARNING,
                VOLUME_RESIZE_FAILED,
                f"PersistentVolume {object_key(pv)} has no CSI source: in-tree volumes migrated to CSI "
                "cannot be expanded by this resizer",
            )
