"""Snapshot protection: the snapshot-as-source finalizer's removal and its periodic orphan sweep.

external-provisioner's `SnapshotFinalizerController` and `removeSnapshotFinalizer`. The finalizer
`provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection` goes on a VolumeSnapshot
before a volume is restored from it (sidecars.provisioner.datasource) and comes off once that volume
is provisioned. When that removal never happens (a crash in between, a claim deleted while
provisioning, a second attempt that fails for good), the sweep finds it: every
`--snapshot-orphan-sweep-interval` (5m; 0 disables it; only for drivers with
CREATE_DELETE_SNAPSHOT), each VolumeSnapshot carrying the finalizer that no Pending (or phase-less)
PVC names as its data source — `dataSource`, or `dataSourceRef` with its namespace — loses it with an
update. NotFound and Conflict wait for the next sweep; Forbidden (missing RBAC) is logged and left.

The sweep runs its own VolumeSnapshot informer (resync 10 minutes, as upstream), so a cluster
without the snapshot CRDs only stalls the sweep, never the provisioner.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterable, Mapping
from typing import Any

from common.kube.client import ApiError, KubeClient
from common.kube.informer import Informer, InformerFactory
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, VOLUME_SNAPSHOTS
from common.logging import get_logger
from sidecars.provisioner import names

log = get_logger(__name__)

Obj = dict[str, Any]
SNAPSHOT_INFORMER_RESYNC = 600.0
SOURCE_INDEX = "snapshot-source"


def _is_snapshot_ref(ref: Mapping[str, Any] | None) -> bool:
    if not ref:
        return False
    return ref.get("kind") == names.SNAPSHOT_KIND and ref.get("apiGroup") in (None, names.SNAPSHOT_GROUP)


def snapshot_of(claim: Mapping[str, Any]) -> str | None:
    """upstream `snapshotNameFromPVC`: `namespace/name` of the VolumeSnapshot the claim restores, if any."""
    spec = claim.get("spec") or {}
    namespace = str((claim.get("metadata") or {}).get("namespace", ""))
    if _is_snapshot_ref(spec.get("dataSource")):
        return f"{namespace}/{spec['dataSource'].get('name', '')}"
    ref = spec.get("dataSourceRef") or {}
    if _is_snapshot_ref(ref):
        return f"{ref.get('namespace') or namespace}/{ref.get('name', '')}"
    return None


def pending(claim: Mapping[str, Any]) -> bool:
    return (claim.get("status") or {}).get("phase") in (None, "", "Pending")


def _source_index(claim: Obj) -> Iterable[str]:
    key = snapshot_of(claim)
    return [key] if key is not None and pending(claim) else []


async def remove_snapshot_finalizer(kube: KubeClient, snapshot: Obj) -> bool:
    """Update `snapshot` without our finalizer; True when removed (NotFound counts as done)."""
    if names.SNAPSHOT_FINALIZER not in names.finalizers(snapshot):
        return False
    updated = copy.deepcopy(snapshot)
    updated["metadata"]["finalizers"] = [
        f for f in names.finalizers(snapshot) if f != names.SNAPSHOT_FINALIZER
    ]
    try:
        await kube.update(VOLUME_SNAPSHOTS, updated)
    except ApiError as err:
        if err.not_found:
            return False
        raise
    meta = snapshot["metadata"]
    log.info(
        "removed finalizer",
        finalizer=names.SNAPSHOT_FINALIZER,
        snapshot=f"{meta.get('namespace')}/{meta.get('name')}",
        v=3,
    )
    return True


async def release_snapshot(kube: KubeClient, claim: Mapping[str, Any]) -> None:
    """After provisioning from a snapshot (`dataSource`): GET it and remove our finalizer; failures are
    only logged, the sweep will get it."""
    source = (claim.get("spec") or {}).get("dataSource") or {}
    if source.get("kind") != names.SNAPSHOT_KIND:
        return
    namespace = str((claim.get("metadata") or {}).get("namespace", ""))
    name = str(source.get("name", ""))
    try:
        snapshot = await kube.get(VOLUME_SNAPSHOTS, name, namespace=namespace)
        await remove_snapshot_finalizer(kube, snapshot)
    except ApiError as err:
        if not err.not_found:
            log.warning(
                "failed to remove the snapshot finalizer, the sweep will",
                snapshot=f"{namespace}/{name}",
                error=str(err),
            )


class SnapshotSweeper:
    """Removes orphaned snapshot-protection finalizers (see the module docstring)."""

    name = "snapshot-finalizer-sweep"

    def __init__(self, *, factory: InformerFactory, interval: float) -> None:
        self.kube = factory.client
        self.interval = interval
        self.claims = factory.informer(
            PERSISTENT_VOLUME_CLAIMS, transform=names.typed("v1", "PersistentVolumeClaim")
        )
        self.claims.add_index(SOURCE_INDEX, _source_index)
        self.snapshots = Informer(self.kube, VOLUME_SNAPSHOTS, resync=SNAPSHOT_INFORMER_RESYNC)

    async def run(self) -> None:
        """The snapshot informer, and a sweep right after it synced and then every interval."""
        log.info("Starting SnapshotFinalizerProtection controller")
        async with asyncio.TaskGroup() as group:
            group.create_task(self.snapshots.run(), name="informer volumesnapshots (sweep)")
            group.create_task(self.snapshots.run_resync(), name="resync volumesnapshots (sweep)")
            await self.snapshots.wait_synced()
            while True:
                await self.sweep()
                await asyncio.sleep(self.interval)

    def orphans(self) -> list[Obj]:
        """Snapshots with our finalizer that no Pending claim restores."""
        return [
            snapshot
            for snapshot in self.snapshots.store
            if names.SNAPSHOT_FINALIZER in names.finalizers(snapshot)
            and not self.claims.store.by_index(SOURCE_INDEX, names.claim_key(snapshot))
        ]

    async def sweep(self) -> int:
        """One sweep; the number of finalizers removed."""
        removed = 0
        for snapshot in self.orphans():
            key = names.claim_key(snapshot)
            try:
                if not await remove_snapshot_finalizer(self.kube, snapshot):
                    continue
            except ApiError as err:
                if err.conflict:
                    log.info(
                        "transient error removing finalizer from snapshot, will retry",
                        snapshot=key,
                        error=str(err),
                        v=4,
                    )
                elif err.forbidden:
                    log.info(
                        "unable to remove finalizer from snapshot: missing RBAC permissions",
                        snapshot=key,
                        error=str(err),
                        v=3,
                    )
                else:
                    log.warning("failed to remove finalizer from snapshot", snapshot=key, error=str(err))
                continue
            log.info("removed orphaned finalizer from snapshot", snapshot=key)
            removed += 1
        return removed
