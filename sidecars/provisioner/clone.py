"""Clone protection: the cloning-protection finalizer leaves a deleted source PVC once no clone is pending.

external-provisioner's `CloningProtectionController` (only for drivers with CLONE_VOLUME). The
finalizer `provisioner.storage.kubernetes.io/cloning-protection` is put on a source PVC when a clone
of it is provisioned (sidecars.provisioner.datasource); it keeps a source the user deletes from
going away while a clone may still be copying it. Here, for a source PVC *being deleted* that carries
the finalizer: while any PVC in its namespace with `dataSource` kind PersistentVolumeClaim naming it
is Pending, the sync fails ("PVC 'x' is in 'Pending' state, cloning in progress") and is retried with
the claims' backoff (`--retry-interval-start` to `--retry-interval-max`); otherwise the finalizer is
removed with an update (NotFound: done). Workers: `--cloning-protection-threads`; the work queue is
named `claims`, as upstream's.

One addition: a clone leaving Pending re-queues its (deleted) source at once, so the finalizer goes
as soon as the clone is bound instead of at the next backoff step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from common.backoff import ItemExponential
from common.controller import run_workers
from common.kube.client import ApiError
from common.kube.informer import FuncHandler, InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, object_key, split_key
from common.logging import get_logger
from common.metrics import Metrics
from common.workqueue import WorkQueue
from sidecars.provisioner import names

log = get_logger(__name__)

Obj = dict[str, Any]
CLONES_INDEX = "clone-source"


def clone_source(claim: Mapping[str, Any]) -> str | None:
    """`namespace/name` of the PVC that `claim` clones (its `dataSource`), if any."""
    source = (claim.get("spec") or {}).get("dataSource") or {}
    if source.get("kind") != names.PVC_KIND:
        return None
    return f"{(claim.get('metadata') or {}).get('namespace', '')}/{source.get('name', '')}"


def _pending_clones_index(claim: Obj) -> Iterable[str]:
    source = clone_source(claim)
    return [source] if source is not None and (claim.get("status") or {}).get("phase") == "Pending" else []


class CloningProtectionController:
    """Removes the cloning-protection finalizer from deleted sources (see the module docstring)."""

    name = "cloning-protection"

    def __init__(
        self,
        *,
        factory: InformerFactory,
        metrics: Metrics,
        threads: int,
        retry_start: float,
        retry_max: float,
    ) -> None:
        self.kube = factory.client
        self.threads = threads
        self.claims = factory.informer(
            PERSISTENT_VOLUME_CLAIMS, transform=names.typed("v1", "PersistentVolumeClaim")
        )
        self.claims.add_index(CLONES_INDEX, _pending_clones_index)
        self.queue: WorkQueue[str] = WorkQueue(
            "claims", limiter=ItemExponential(retry_start, retry_max), metrics=metrics.workqueue("claims")
        )
        self.claims.add_handler(FuncHandler(add=self._added, update=self._updated))

    def _added(self, claim: Obj) -> None:
        if names.deleting(claim):
            self.queue.add(object_key(claim))

    def _updated(self, old: Obj, new: Obj) -> None:
        self._added(new)
        source = clone_source(old)
        was, now = ((c.get("status") or {}).get("phase") for c in (old, new))
        if source is not None and was == "Pending" and now != "Pending":
            namespace, name = split_key(source)
            found = self.claims.get(name, namespace)
            if found is not None and names.deleting(found):
                self.queue.add(source)

    async def run(self) -> None:
        log.info("Starting CloningProtection controller")
        await run_workers(self.queue, self.sync, name=self.name, count=self.threads)

    def pending_clones(self, claim: Mapping[str, Any]) -> list[Obj]:
        return self.claims.store.by_index(CLONES_INDEX, names.claim_key(claim))

    async def sync(self, key: str) -> None:
        """upstream `syncClaim`; raising means "cloning in progress, retry with backoff"."""
        namespace, name = split_key(key)
        claim = self.claims.get(name, namespace)
        if claim is None or names.CLONE_FINALIZER not in names.finalizers(claim):
            return
        clones = self.pending_clones(claim)
        if clones:
            clone = clones[0]["metadata"]["name"]
            raise CloningInProgress(f"PVC '{clone}' is in 'Pending' state, cloning in progress")
        updated = copy.deepcopy(claim)
        updated["metadata"]["finalizers"] = [f for f in names.finalizers(claim) if f != names.CLONE_FINALIZER]
        try:
            await self.kube.update(PERSISTENT_VOLUME_CLAIMS, updated)
        except ApiError as err:
            if err.not_found:
                return
            log.info("failed to remove clone finalizer from PVC", pvc=key, error=str(err))
            raise
        log.info("removed the cloning-protection finalizer", pvc=key, v=3)


class CloningInProgress(Exception):
    """A clone of the deleted source is still Pending: look again later."""
