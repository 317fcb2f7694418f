"""The claim controller: PVCs in, PVs out (sig-storage-lib-external-provisioner's claim half).

Informers: every PVC (indexed by UID), PV and StorageClass. The work queue `claims` is keyed by PVC
UID and retries every failure with per-claim backoff from `--retry-interval-start` doubling to
`--retry-interval-max`, forever (upstream's failure thresholds are 0). A claim is synced when it
is added or updated; `sync(uid)` takes it from the cache, or from `in_progress` — the in-memory copy
of claims whose CreateVolume may still be running — so a volume is finished even if its PVC was
deleted meanwhile (upstream's ProvisioningInBackground).

A claim is provisioned when it has no volumeName, the PV controller asked this driver for it, its
StorageClass exists (and names this driver), and for WaitForFirstConsumer the scheduler selected a
node. Then: `Provisioning` event → Provisioner (request, intent, CreateVolume, PV) → the volume
store saves the PV → `ProvisioningSucceeded` event. Failures are `ProvisioningFailed` events with
the cause; InvalidArgument is retried only every `--retry-interval-max` (reset when the
StorageClass UID changes); a reschedule removes `volume.kubernetes.io/selected-node`.

Claims carrying the provisioning intent (sidecars.provisioner.intent) also get: the intent cleared
once their PV exists, and, when deleted before any PV was saved, their volume found and deleted.

With `--node-deployment`, `node_check` (sidecars.provisioner.nodedeployment) decides after
`should_provision` whether this node takes the claim (and claims unselected Immediate ones).
"""

from __future__ import annotations

import asyncio
import copy
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

from common.backoff import ItemExponential
from common.controller import Requeue, run_workers
from common.kube.client import ApiError
from common.kube.events import NORMAL, WARNING, EventRecorder
from common.kube.informer import FuncHandler, InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, STORAGE_CLASSES
from common.logging import get_logger
from common.metrics import Metrics
from common.workqueue import WorkQueue
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.intent import Intent, recorded
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.volumestore import VolumeStore

log = get_logger(__name__)

Obj = dict[str, Any]
UID_INDEX = "uid"
DELETED_CLASSES_KEPT = 256
FINISHED = ProvisioningState.FINISHED


def _uid_index(obj: Obj) -> list[str]:
    return [names.claim_uid(obj)]


class ClaimController:
    """Provisions volumes for claims (see the module docstring). Build it, then `await run()`."""

    name = "claims"

    def __init__(
        self,
        *,
        config: ProvisionerConfig,
        provisioner: Provisioner,
        intent: Intent,
        factory: InformerFactory,
        recorder: EventRecorder,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.provisioner = provisioner
        self.intent = intent
        self.recorder = recorder
        self.metrics = metrics
        self.claims = factory.informer(
            PERSISTENT_VOLUME_CLAIMS, transform=names.typed("v1", "PersistentVolumeClaim")
        )
        self.claims.add_index(UID_INDEX, _uid_index)
        self.volumes = factory.informer(PERSISTENT_VOLUMES, transform=names.typed("v1", "PersistentVolume"))
        self.classes = factory.informer(STORAGE_CLASSES)
        self.deleted_classes: OrderedDict[str, Obj] = OrderedDict()
        """Name → the last copy of a StorageClass deleted while this process ran (at most
        DELETED_CLASSES_KEPT): a claim deleted together with its class can still have its volume
        looked up and deleted (abandoned) instead of staying Terminating on our intent finalizer."""
        self.classes.add_handler(FuncHandler(delete=self._class_deleted))
        self.queue: WorkQueue[str] = WorkQueue(
            "claims",
            limiter=ItemExponential(config.retry_interval_start, config.retry_interval_max),
            metrics=metrics.workqueue("claims"),
        )
        self.store = VolumeStore(
            kube=intent.kube, on_saved=self._on_saved, queue_metrics=metrics.workqueue(VolumeStore.name)
        )
        self.in_progress: dict[str, Obj] = {}
        """UID → claim whose CreateVolume may still be running on the storage side."""
        self.provisioned: dict[str, str] = {}
        """UID → PV name saved by this process, until the claim is bound (the cache may lag)."""
        self.cleared: set[str] = set()
        """UIDs of those whose intent this process cleared (the cache may still show it)."""
        self.slow: dict[str, tuple[float, str]] = {}
        """UID → (when CreateVolume said InvalidArgument, StorageClass UID then)."""
        self.node_check: Callable[[Obj], Awaitable[bool]] | None = None
        """`--node-deployment`: True when this node provisions the claim now (may raise Requeue)."""
        self._latest: dict[str, Obj] = {}
        """UID → the claim as our intent update left it, during its provisioning attempt (the cache
        may not show that resourceVersion yet)."""
        self.claims.add_handler(
            FuncHandler(add=self._enqueue, update=lambda _, new: self._enqueue(new), delete=self._forget)
        )

    # ------------------------------------------------------------------------ events and workers

    def _enqueue(self, claim: Obj) -> None:
        self.queue.add(names.claim_uid(claim))

    def _forget(self, claim: Obj) -> None:
        uid = names.claim_uid(claim)
        self.provisioned.pop(uid, None)
        self.cleared.discard(uid)
        self.slow.pop(uid, None)
        if uid in self.in_progress:
            self.queue.add(uid)  # finish it from the in-memory copy
        else:
            self.provisioner.topology_cache.delete(uid)

    async def run(self) -> None:
        """Claim workers (`--worker-threads`) and the volume store's save workers, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.store.run(), name="volume store")
            group.create_task(
                run_workers(self.queue, self.sync, name=self.name, count=self.config.worker_threads),
                name="claim workers",
            )

    def claim_by_uid(self, uid: str) -> Obj | None:
        found = self.claims.store.by_index(UID_INDEX, uid)
        return found[0] if len(found) == 1 else None

    def storage_class(self, claim: Mapping[str, Any]) -> Obj | None:
        return self.classes.store.get(names.claim_class(claim))

    def _class_deleted(self, sc: Obj) -> None:
        name = str((sc.get("metadata") or {}).get("name", ""))
        self.deleted_classes[name] = sc
        self.deleted_classes.move_to_end(name)
        while len(self.deleted_classes) > DELETED_CLASSES_KEPT:
            self.deleted_classes.popitem(last=False)

    # ------------------------------------------------------------------------ sync

    async def sync(self, uid: str) -> None:
        """Look at claim `uid` once; raising means "retry with backoff"."""
        claim = self.claim_by_uid(uid) or self.in_progress.get(uid)
        if claim is None:
            return
        if (claim.get("spec") or {}).get("volumeName") and not recorded(claim):
            self.provisioned.pop(uid, None)
            self.cleared.discard(uid)
            self.in_progress.pop(uid, None)
        if await self._follow_intent(claim):
            return
        self._delay_if_recently_infeasible(claim)
        if not self.should_provision(claim):
            return
        if self.node_check is not None and not await self.node_check(claim):
            return
        start = asyncio.get_running_loop().time()
        try:
            await self.provision_claim(claim)
        except ProvisionError as err:
            self._record_stats(claim, start, failed=True)
            if err.state is FINISHED or err.stop:
                self.in_progress.pop(uid, None)
            elif err.state is ProvisioningState.IN_BACKGROUND:
                self.in_progress[uid] = claim
            if err.stop:
                return
            raise
        except IgnoredClaim as ignored:
            self._record_stats(claim, start, failed=True)
            log.info("volume provision ignored", pvc=names.claim_key(claim), reason=str(ignored), v=4)
            self.in_progress.pop(uid, None)
            return
        self._record_stats(claim, start, failed=False)
        self.in_progress.pop(uid, None)

    async def _follow_intent(self, claim: Obj) -> bool:
        """Intent housekeeping; True when the claim needs nothing else now."""
        uid = names.claim_uid(claim)
        pv_name = self._pv_name(claim)
        saved = uid in self.provisioned or (pv_name is not None and self.volumes.get(pv_name) is not None)
        if recorded(claim) and uid not in self.cleared:
            if saved or (claim.get("spec") or {}).get("volumeName"):
                if pv_name is None or not self.store.pending(pv_name):
                    await self.intent.clear(claim)
                    self.cleared.add(uid)
            elif names.deleting(claim):
                if pv_name is not None and self.store.pending(pv_name):
                    raise Requeue(1.0, "PV of a deleted claim is still being saved")
                await self._abandon(claim)
                return True
        # Saved by us (the cache may not show the PV yet), or being saved: nothing to provision.
        return uid in self.provisioned or (pv_name is not None and self.store.pending(pv_name))

    async def _abandon(self, claim: Obj) -> None:
        uid = names.claim_uid(claim)
        try:
            sc = self.storage_class(claim) or self.deleted_classes.get(names.claim_class(claim))
            await self.intent.abandon(claim, sc)
        except ProvisionError as err:
            self.recorder.event(claim, WARNING, "ProvisioningFailed", str(err))
            raise
        self.in_progress.pop(uid, None)
        self.provisioner.topology_cache.delete(uid)

    def _pv_name(self, claim: Obj) -> str | None:
        try:
            return self.provisioner.builder.volume_name(claim)
        except ProvisionError:
            return None

    def _delay_if_recently_infeasible(self, claim: Obj) -> None:
        uid = names.claim_uid(claim)
        entry = self.slow.get(uid)
        if entry is None:
            return
        sc = self.storage_class(claim)
        if sc is None:
            return
        added, sc_uid = entry
        remaining = added + self.config.retry_interval_max - asyncio.get_running_loop().time()
        if sc_uid != str((sc.get("metadata") or {}).get("uid", "")) or remaining <= 0:
            del self.slow[uid]
            return
        raise Requeue(remaining, "provisioning previously failed with an infeasible error")

    def should_provision(self, claim: Obj) -> bool:
        """upstream `shouldProvision` (plus the csiProvisioner qualifier); raises for a missing class."""
        if (claim.get("spec") or {}).get("volumeName"):
            return False
        if names.deleting(claim) and names.claim_uid(claim) not in self.in_progress:
            return False  # nothing was created for it; upstream would still provision it
        if not self.provisioner.owns(claim) or names.storage_provisioner(claim) != self.provisioner.driver:
            return False
        sc = self.storage_class(claim)
        if sc is None:
            err = ProvisionError(f'storageClass "{names.claim_class(claim)}" not found', FINISHED)
            self._record_stats(claim, 0.0, failed=True)
            raise err
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer":
            return bool(names.annotations_of(claim).get(names.ANN_SELECTED_NODE))
        return True

    def preflight(self, claim: Obj, sc: Obj | None) -> ProvisionError | IgnoredClaim | None:
        """The checks of upstream `provisionClaimOperation` before it provisions, in its order and with
        its texts; None when all pass. Pure: `provision_claim` and `explain` both decide with it."""
        pv_name = self._pv_name(claim)
        if pv_name is not None and self.volumes.get(pv_name) is not None:
            return ProvisionError(f"PersistentVolume {pv_name} already exists", FINISHED, stop=True)
        if sc is None:
            return ProvisionError(f'storageClass "{names.claim_class(claim)}" not found', FINISHED)
        if sc.get("provisioner") != self.provisioner.driver:
            return IgnoredClaim(
                f"unknown provisioner {sc.get('provisioner')!r} requested in the StorageClass"
            )
        node = names.selected_node(claim) or ""
        nodes = self.provisioner.builder.nodes
        if node and nodes is not None and nodes.nodes.get(node) is None:
            return ProvisionError(f'node "{node}" not found', ProvisioningState.RESCHEDULE)
        return None

    async def provision_claim(self, claim: Obj) -> None:
        """upstream `provisionClaimOperation`: raises ProvisionError/IgnoredClaim on failure."""
        key = names.claim_key(claim)
        sc = self.storage_class(claim)
        blocked = self.preflight(claim, sc)
        if isinstance(blocked, ProvisionError) and blocked.state is ProvisioningState.RESCHEDULE:
            await self._failed(claim, blocked)
        if blocked is not None:
            raise blocked
        assert sc is not None  # preflight refuses a claim without a StorageClass
        node = names.selected_node(claim) or ""
        self.recorder.event(
            claim, NORMAL, "Provisioning", f'External provisioner is provisioning volume for claim "{key}"'
        )
        uid = names.claim_uid(claim)
        try:
            pv, _ = await self.provisioner.provision(claim, sc, node, before_create=self._record_intent)
            log.info("volume is provisioned", pvc=key, pv=pv["metadata"]["name"], v=4)
            self.in_progress.pop(uid, None)
            await self.store.store(pv)
        except ProvisionError as err:
            await self._failed(self._latest.get(uid, claim), err)
        finally:
            self._latest.pop(uid, None)

    async def _record_intent(self, claim: Obj) -> Obj:
        latest = await self.intent.record(claim)
        self._latest[names.claim_uid(claim)] = latest
        return latest

    async def _failed(self, claim: Obj, err: ProvisionError) -> NoReturn:
        """upstream `provisionVolumeErrorHandling` and the infeasible branch; always raises."""
        if err.infeasible:
            sc = self.storage_class(claim) or {}
            self.slow[names.claim_uid(claim)] = (
                asyncio.get_running_loop().time(),
                str((sc.get("metadata") or {}).get("uid", "")),
            )
            message = f"Volume provisioning failed with infeasible error. Retries will be delayed. {err}"
            self.recorder.event(claim, WARNING, "ProvisioningFailed", message)
            raise ProvisionError(str(err), FINISHED, infeasible=True)
        self.recorder.event(claim, WARNING, "ProvisioningFailed", str(err))
        if err.state is ProvisioningState.RESCHEDULE:
            if names.ANN_SELECTED_NODE in names.annotations_of(claim):
                try:
                    await self._reschedule(claim)
                except ApiError as exc:
                    log.info("volume rescheduling failed", pvc=names.claim_key(claim), error=str(exc))
                    raise ProvisionError(str(err), FINISHED) from None
                log.info("volume rescheduled", pvc=names.claim_key(claim), reason=str(err), v=2)
                raise ProvisionError(str(err), FINISHED, stop=True)
            raise ProvisionError(str(err), FINISHED)
        raise err

    async def _reschedule(self, claim: Obj) -> None:
        """Remove `volume.kubernetes.io/selected-node` (a PVC update) so the scheduler tries again."""
        updated = copy.deepcopy(claim)
        updated["metadata"]["annotations"].pop(names.ANN_SELECTED_NODE, None)
        await self.intent.kube.update(PERSISTENT_VOLUME_CLAIMS, updated)

    async def _on_saved(self, pv: Obj) -> None:
        """A PV was saved: `ProvisioningSucceeded` on its claim, and the intent cleared."""
        uid = str(((pv.get("spec") or {}).get("claimRef") or {}).get("uid", ""))
        name = pv["metadata"]["name"]
        self.provisioned[uid] = name
        claim = self.claim_by_uid(uid)
        if claim is not None:
            self.recorder.event(
                claim, NORMAL, "ProvisioningSucceeded", f"Successfully provisioned volume {name}"
            )
        latest = self._latest.get(uid) or claim
        if latest is not None and recorded(latest):
            try:
                await self.intent.clear(latest)
                self.cleared.add(uid)
            except ApiError as err:
                log.info("clearing the provisioning intent failed, will retry", pv=name, error=str(err))
                self.queue.add_after(uid, self.config.retry_interval_start)

    def _record_stats(self, claim: Obj, start: float, *, failed: bool) -> None:
        spec = claim.get("spec") or {}
        class_name = str(spec.get("storageClassName") or "")
        source = str((spec.get("dataSource") or {}).get("kind", ""))
        if failed:
            self.metrics.record_provision_failed(class_name=class_name, source=source)
        else:
            seconds = asyncio.get_running_loop().time() - start
            self.metrics.record_provisioned(class_name=class_name, source=source, seconds=seconds)
