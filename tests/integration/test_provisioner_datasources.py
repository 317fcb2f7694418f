"""csi-provisioner volume data sources end to end: restore from a VolumeSnapshot, clone a PVC, populators.

The real `python -m sidecars.provisioner` against the test bed (API server, PV controller stand-ins,
CSI test driver with snapshots and clones). There is no snapshot controller: each test makes the CSI
snapshot in the driver and the bound VolumeSnapshot/VolumeSnapshotContent pair itself
(`make_snapshot`). Asserted: CreateVolume's content source, the refusals with upstream's texts (and
that fixing the cause lets the claim through), the protection finalizers put on and taken off at the
right moments — also when the source is deleted meanwhile — and the orphan sweep.
"""

from __future__ import annotations

import copy
from typing import Any

from kit import eventually
from provisioner_fixtures import (
    CLONE_FINALIZER,
    SNAPSHOT_FINALIZER,
    Bed,
    claim,
    finalizers_of,
    make_snapshot,
    provisioner_bed,
    set_snapshot_ready,
    snapshot_source,
    stop_cleanly,
    storage_class,
)

from testbed.apiserver import ApiServer
from testbed.csidriver import FaultKind, TestDriver

Obj = dict[str, Any]
HANDLE_ERROR = "error getting handle for DataSource Type {kind} by Name {name}: "
QPS = ("--kube-api-qps=100", "--kube-api-burst=200")  # refused claims retry every <= 2 s: not throttled


async def create(bed: Bed, name: str, *, source: Obj | None = None, ref: Obj | None = None, **kw: Any) -> Obj:
    """A claim of StorageClass `golden` with `spec.dataSource` (or `dataSourceRef`) and extra spec fields."""
    mode = kw.pop("volume_mode", None)
    body = claim(name, **{k: v for k, v in kw.items() if k in ("sc", "size", "namespace")})
    if source is not None:
        body["spec"]["dataSource"] = source
    if ref is not None:
        body["spec"]["dataSourceRef"] = ref
    if mode is not None:
        body["spec"]["volumeMode"] = mode
    return await bed.store.create("persistentvolumeclaims", body, namespace=body["metadata"]["namespace"])


async def source_volume(bed: Bed, name: str = "src") -> str:
    await bed.create_claim(name)
    pvc = await bed.wait_bound(name)
    pv = await bed.get("persistentvolumes", pvc["spec"]["volumeName"])
    assert pv is not None
    return str(pv["spec"]["csi"]["volumeHandle"])


def create_calls(driver: TestDriver, pvc: Obj) -> list[Any]:
    return [c for c in driver.calls.of("CreateVolume") if c.request.name == f"pvc-{pvc['metadata']['uid']}"]


async def test_restore_from_snapshot_and_its_refusals(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        process = bed.start("--snapshot-orphan-sweep-interval=0", *QPS)
        await source_volume(bed)
        vs, content = await make_snapshot(bed, "snap", "src", ready=False)
        snapshot_id = content["status"]["snapshotHandle"]

        # Not ready: refused (NoChange), retried; ready: restored.
        restored = await create(bed, "restored", source=snapshot_source("snap"))
        not_ready = HANDLE_ERROR.format(kind="VolumeSnapshot", name="snap") + "snapshot snap is not Ready"
        await bed.wait_event("restored", "ProvisioningFailed", contains=not_ready)
        assert not create_calls(driver, restored)
        await set_snapshot_ready(bed, "snap")
        pvc = await bed.wait_bound("restored")
        [call] = create_calls(driver, restored)
        assert call.request.volume_content_source.snapshot.snapshot_id == snapshot_id
        volume = next(v for v in driver.volumes.values() if v.name == pvc["spec"]["volumeName"])
        assert volume.source_snapshot == snapshot_id
        # The protection finalizer was put on with an update and taken off once provisioned.
        assert finalizers_of(await bed.get("volumesnapshots", "snap", "default")) == []
        updates = [
            r
            for r in apiserver.requests.records()
            if r.resource == "volumesnapshots" and r.verb == "update" and r.name == "snap"
        ]
        assert len(updates) == 2 and all(r.user_agent.startswith("csi-provisioner") for r in updates)

        # Too small for the snapshot's restoreSize.
        small = await create(bed, "small", source=snapshot_source("snap"), size="512Mi")
        await bed.wait_event(
            "small",
            "ProvisioningFailed",
            contains="requested volume size 536870912 is less than the size 1073741824 for the source "
            "snapshot snap",
        )
        # Content of another driver: "not bound", as upstream.
        await make_snapshot(bed, "alien", "src", driver="other.csi.example.com")
        await create(bed, "from-alien", source=snapshot_source("alien"))
        await bed.wait_event(
            "from-alien",
            "ProvisioningFailed",
            contains=HANDLE_ERROR.format(kind="VolumeSnapshot", name="alien") + "snapshot alien not bound",
        )
        # Block restore of a Filesystem snapshot: refused without the annotation, allowed with it.
        _, fs_content = await make_snapshot(bed, "fs", "src")
        block = await create(bed, "as-block", source=snapshot_source("fs"), volume_mode="Block")
        await bed.wait_event(
            "as-block",
            "ProvisioningFailed",
            contains="requested volume default/as-block modifies the mode of the source volume but does not "
            "have permission to do so. snapshot.storage.kubernetes.io/allow-volume-mode-change annotation "
            f"is not present on snapshotcontent {fs_content['metadata']['name']}",
        )
        current = await bed.store.get("volumesnapshotcontents", fs_content["metadata"]["name"])
        current["metadata"].setdefault("annotations", {})[
            "snapshot.storage.kubernetes.io/allow-volume-mode-change"
        ] = "true"
        await bed.store.update("volumesnapshotcontents", current)
        await bed.wait_bound("as-block")
        [call] = create_calls(driver, block)
        assert call.request.volume_capabilities[0].HasField("block")
        # A missing snapshot is refused too, and nothing was created for any refusal.
        await create(bed, "no-snap", source=snapshot_source("nothing"))
        await bed.wait_event(
            "no-snap", "ProvisioningFailed", contains="error getting snapshot nothing from api server"
        )
        assert not create_calls(driver, small)
        pending = await bed.get("persistentvolumeclaims", "from-alien", "default")
        assert pending is not None and pending["status"]["phase"] == "Pending"
        assert vs["metadata"]["name"] == "snap"
        await stop_cleanly(process)


async def test_snapshot_deleted_while_restoring_stays_until_provisioned(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        process = bed.start(*QPS)
        await source_volume(bed)
        _, content = await make_snapshot(bed, "snap", "src")
        driver.faults.add(
            "CreateVolume",
            FaultKind.DELAY,
            delay=1.5,
            match=lambda request: request.HasField("volume_content_source"),
        )
        await create(bed, "restored", source=snapshot_source("snap"))

        async def protected() -> bool:
            return SNAPSHOT_FINALIZER in finalizers_of(await bed.get("volumesnapshots", "snap", "default"))

        await eventually(protected, timeout=10, message="snapshot protection finalizer")
        await bed.store.delete("volumesnapshots", "snap", namespace="default")
        deleting = await bed.get("volumesnapshots", "snap", "default")
        assert deleting is not None and deleting["metadata"].get("deletionTimestamp")
        # Provisioning continues from the snapshot being deleted (it carries our finalizer) ...
        pvc = await bed.wait_bound("restored")
        volume = next(v for v in driver.volumes.values() if v.name == pvc["spec"]["volumeName"])
        assert volume.source_snapshot == content["status"]["snapshotHandle"]
        # ... and the finalizer goes with it, so the snapshot is gone.
        await bed.wait_gone("volumesnapshots", "snap", "default")
        # A new claim from a snapshot being deleted without our finalizer is refused.
        await make_snapshot(bed, "doomed", "src")
        doomed = await bed.store.get("volumesnapshots", "doomed", namespace="default")
        doomed["metadata"]["finalizers"] = ["test/hold"]
        await bed.store.update("volumesnapshots", doomed, namespace="default")
        await bed.store.delete("volumesnapshots", "doomed", namespace="default")
        await create(bed, "late", source=snapshot_source("doomed"))
        await bed.wait_event(
            "late",
            "ProvisioningFailed",
            contains=HANDLE_ERROR.format(kind="VolumeSnapshot", name="doomed")
            + "snapshot doomed is being deleted",
        )
        await stop_cleanly(process)


async def test_orphaned_snapshot_finalizers_are_swept(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        await bed.store.create(
            "storageclasses", storage_class("elsewhere", provisioner="other.csi.example.com")
        )
        process = bed.start("--snapshot-orphan-sweep-interval=1s", *QPS)
        await source_volume(bed)
        for name in ("orphan", "wanted"):
            await make_snapshot(bed, name, "src")
            vs = await bed.store.get("volumesnapshots", name, namespace="default")
            vs["metadata"]["finalizers"] = [SNAPSHOT_FINALIZER]  # as left by a crash mid-provisioning
            await bed.store.update("volumesnapshots", vs, namespace="default")
        # A Pending claim (of another provisioner, so it stays Pending) still restores "wanted".
        await create(bed, "waiting", source=snapshot_source("wanted"), sc="elsewhere")

        async def swept() -> bool:
            return finalizers_of(await bed.get("volumesnapshots", "orphan", "default")) == []

        await eventually(swept, timeout=10, message="orphaned finalizer swept")
        assert finalizers_of(await bed.get("volumesnapshots", "wanted", "default")) == [SNAPSHOT_FINALIZER]
        await bed.delete_claim("waiting")
        await bed.wait_gone("persistentvolumeclaims", "waiting", "default")

        async def released() -> bool:
            return finalizers_of(await bed.get("volumesnapshots", "wanted", "default")) == []

        await eventually(released, timeout=10, message="finalizer of a no longer wanted snapshot swept")
        await stop_cleanly(process)


async def test_clone_protection_and_refusals(apiserver: ApiServer, driver: TestDriver, sidecar: Any) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        await bed.store.create(
            "storageclasses", storage_class("elsewhere", provisioner="other.csi.example.com")
        )
        process = bed.start(*QPS)
        handle = await source_volume(bed)
        # A clone: the source's volume id as content source, the source protected.
        copy_pvc = await create(bed, "copy", source={"kind": "PersistentVolumeClaim", "name": "src"})
        await bed.wait_bound("copy")
        [call] = create_calls(driver, copy_pvc)
        assert call.request.volume_content_source.volume.volume_id == handle
        assert CLONE_FINALIZER in finalizers_of(await bed.get("persistentvolumeclaims", "src", "default"))

        # Refusals: too small, Block from Filesystem, a source that is not Bound.
        await create(bed, "tiny", source={"kind": "PersistentVolumeClaim", "name": "src"}, size="512Mi")
        await bed.wait_event(
            "tiny",
            "ProvisioningFailed",
            contains=HANDLE_ERROR.format(kind="PersistentVolumeClaim", name="src")
            + "error, new PVC request must be greater than or equal in size to the specified PVC data "
            "source, requested 536870912 but source is 1073741824",
        )
        await create(
            bed, "blocky", source={"kind": "PersistentVolumeClaim", "name": "src"}, volume_mode="Block"
        )
        await bed.wait_event(
            "blocky",
            "ProvisioningFailed",
            contains="the source PVC and destination PVCs must have the same volume mode for cloning.  "
            "Source is Filesystem, but new PVC requested Block",
        )
        await bed.create_claim("unbound", sc="elsewhere")
        await create(bed, "of-unbound", source={"kind": "PersistentVolumeClaim", "name": "unbound"})
        await bed.wait_event(
            "of-unbound",
            "ProvisioningFailed",
            contains="the PVC DataSource unbound must have a status of Bound.",
        )
        assert CLONE_FINALIZER not in finalizers_of(
            await bed.get("persistentvolumeclaims", "unbound", "default")
        )

        # The source deleted while a clone is still Pending stays, with our finalizer, until it is not.
        fault = driver.faults.add(
            "CreateVolume",
            FaultKind.DELAY,
            delay=1.5,
            count=1,
            match=lambda r: r.HasField("volume_content_source"),
        )
        await create(bed, "slow-copy", source={"kind": "PersistentVolumeClaim", "name": "src"})
        await eventually(lambda: fault.hits == 1, timeout=5, message="the clone's CreateVolume in flight")
        await bed.delete_claim("tiny")
        await bed.delete_claim("blocky")
        await bed.delete_claim("src")
        source = await bed.get("persistentvolumeclaims", "src", "default")
        assert source is not None and source["metadata"].get("deletionTimestamp")
        assert CLONE_FINALIZER in finalizers_of(source)
        await bed.wait_bound("slow-copy")
        await bed.wait_gone("persistentvolumeclaims", "src", "default")
        # A source being deleted is refused for a new clone.
        held = await bed.store.get("persistentvolumeclaims", "copy", namespace="default")
        held["metadata"]["finalizers"] = [*finalizers_of(held), "test/hold"]
        await bed.store.update("persistentvolumeclaims", held, namespace="default")
        await bed.delete_claim("copy")
        await create(bed, "too-late", source={"kind": "PersistentVolumeClaim", "name": "copy"})
        await bed.wait_event(
            "too-late", "ProvisioningFailed", contains="the PVC DataSource copy is currently being deleted"
        )
        assert CLONE_FINALIZER not in finalizers_of(
            await bed.get("persistentvolumeclaims", "copy", "default")
        )
        await stop_cleanly(process)


async def test_external_populator_source_is_left_alone(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        process = bed.start(*QPS)
        await create(
            bed, "populated", ref={"apiGroup": "populator.example.com", "kind": "Thing", "name": "x"}
        )
        event = await bed.wait_event(
            "populated", "Provisioning", contains="Assuming an external populator will provision the volume"
        )
        assert event["type"] == "Normal" and event["source"]["component"] == "external-provisioner"
        await bed.create_claim("plain")
        await bed.wait_bound("plain")
        assert len(driver.calls.of("CreateVolume")) == 1
        populated = await bed.get("persistentvolumeclaims", "populated", "default")
        assert populated is not None and populated["status"]["phase"] == "Pending"
        assert not await bed.events("populated", "ProvisioningFailed")
        assert copy.deepcopy(populated)["spec"]["dataSourceRef"]["kind"] == "Thing"
        await stop_cleanly(process)
