"""Source protection with fakes: the cloning-protection controller, the snapshot sweep, the VAC gate."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from common.kube.client import ApiError, KubeClient
from common.kube.informer import InformerFactory
from common.metrics import Metrics
from common.runtime import StandardConfig
from sidecars.provisioner import names
from sidecars.provisioner.__main__ import settle_gates
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.clone import CloningInProgress, CloningProtectionController
from sidecars.provisioner.snapshots import SnapshotSweeper, snapshot_of

Obj = dict[str, Any]


class Kube:
    def __init__(self) -> None:
        self.updates: list[Obj] = []
        self.fail: list[ApiError] = []
        self.discovery: Obj | ApiError = {"resources": [{"name": "volumeattributesclasses"}]}

    async def update(self, resource: Any, obj: Obj, **kw: Any) -> Obj:
        if self.fail:
            raise self.fail.pop(0)
        self.updates.append(copy.deepcopy(obj))
        return obj

    async def request(self, method: str, path: str, **kw: Any) -> Obj:
        assert (method, path) == ("GET", "/apis/storage.k8s.io/v1")
        if isinstance(self.discovery, ApiError):
            raise self.discovery
        return self.discovery

    serves = KubeClient.serves  # the real discovery check, over the `request` above


def pvc(
    name: str,
    *,
    phase: str = "Bound",
    source: Obj | None = None,
    deleting: bool = False,
    finalizers: list[str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "uid": f"u-{name}", "finalizers": finalizers or []}
    if deleting:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    spec: Obj = {}
    if source is not None:
        spec["dataSource"] = source
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


CLONE_OF_SRC = {"kind": "PersistentVolumeClaim", "name": "src"}


async def test_clone_finalizer_leaves_a_deleted_source_once_no_clone_is_pending() -> None:
    kube = Kube()
    c = CloningProtectionController(
        factory=InformerFactory(kube),  # type: ignore[arg-type]
        metrics=Metrics(process_collector=False),
        threads=1,
        retry_start=0.01,
        retry_max=0.1,
    )
    source = pvc("src", deleting=True, finalizers=["kubernetes.io/pvc-protection", names.CLONE_FINALIZER])
    pending = pvc("copy", phase="Pending", source=CLONE_OF_SRC)
    elsewhere = pvc("other-ns-copy", phase="Pending", source=CLONE_OF_SRC)
    elsewhere["metadata"]["namespace"] = "other"
    for obj in (source, pending, elsewhere, pvc("done", source=CLONE_OF_SRC)):
        c.claims.store.put(obj)
    with pytest.raises(CloningInProgress, match="PVC 'copy' is in 'Pending' state, cloning in progress"):
        await c.sync("default/src")
    assert kube.updates == []
    bound = pvc("copy", phase="Bound", source=CLONE_OF_SRC)
    c.claims.store.put(bound)
    c._updated(pending, bound)  # the clone left Pending: its deleted source is looked at again now
    assert c.queue.len() == 1
    await c.sync("default/src")
    [updated] = kube.updates
    assert updated["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    # Not being deleted: only queued by events when it is; a NotFound update counts as done.
    c._added(pvc("live", finalizers=[names.CLONE_FINALIZER]))
    assert c.queue.len() == 1
    kube.fail.append(ApiError(404, "NotFound", "gone"))
    await c.sync("default/src")


def snapshot(name: str, *finalizers: str, namespace: str = "default") -> Obj:
    return {"metadata": {"name": name, "namespace": namespace, "finalizers": list(finalizers)}}


async def test_sweep_removes_only_orphaned_snapshot_finalizers() -> None:
    kube = Kube()
    sweeper = SnapshotSweeper(factory=InformerFactory(kube), interval=300.0)  # type: ignore[arg-type]
    group = "snapshot.storage.k8s.io"
    wanted = snapshot("wanted", names.SNAPSHOT_FINALIZER)
    orphan = snapshot(
        "orphan", "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection", names.SNAPSHOT_FINALIZER
    )
    cross = snapshot("cross", names.SNAPSHOT_FINALIZER, namespace="shared")
    for obj in (wanted, orphan, cross, snapshot("plain")):
        sweeper.snapshots.store.put(obj)
    restoring = pvc(
        "r1", phase="Pending", source={"apiGroup": group, "kind": "VolumeSnapshot", "name": "wanted"}
    )
    via_ref = pvc("r2", phase="Pending")
    via_ref["spec"]["dataSourceRef"] = {
        "apiGroup": group,
        "kind": "VolumeSnapshot",
        "name": "cross",
        "namespace": "shared",
    }
    done = pvc("r3", phase="Bound", source={"apiGroup": group, "kind": "VolumeSnapshot", "name": "orphan"})
    for obj in (restoring, via_ref, done):
        sweeper.claims.store.put(obj)
    assert snapshot_of(via_ref) == "shared/cross" and snapshot_of(pvc("x")) is None
    assert await sweeper.sweep() == 1
    [updated] = kube.updates
    assert updated["metadata"]["name"] == "orphan"
    assert updated["metadata"]["finalizers"] == [
        "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection"
    ]
    # Errors are logged and left to the next sweep.
    sweeper.snapshots.store.put(updated)  # as the informer would show it
    kube.fail = [ApiError(403, "Forbidden", "no RBAC")]
    sweeper.claims.store.remove("default/r1")
    assert await sweeper.sweep() == 0


async def test_volume_attributes_class_gate_turns_off_without_the_api() -> None:
    kube = Kube()
    rt: Any = type("Rt", (), {"kube": kube})()
    on = ProvisionerConfig(standard=StandardConfig())
    assert (await settle_gates(rt, on)).volume_attributes_class
    kube.discovery = {"resources": [{"name": "storageclasses"}]}
    assert not (await settle_gates(rt, on)).volume_attributes_class
    kube.discovery = ApiError(404, "NotFound", "the server could not find the requested resource")
    assert not (await settle_gates(rt, on)).volume_attributes_class
    explicit = dataclasses.replace(on, volume_attributes_class_explicit=True)
    assert (await settle_gates(rt, explicit)).volume_attributes_class  # set on the command line: kept
    off = dataclasses.replace(on, volume_attributes_class=False)
    assert not (await settle_gates(rt, off)).volume_attributes_class
