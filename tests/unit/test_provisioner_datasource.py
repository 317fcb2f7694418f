"""Snapshot and clone sources: each check with upstream's text, the finalizers, a missing content source."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.kube.client import ApiError
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.datasource import DataSources
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.state import ProvisionError, ProvisioningState
from sidecars.provisioner.topology import TopologyCache
from sidecars.provisioner.volume import PVSettings

DRIVER = "hostpath.csi.k8s.io"
GROUP = "snapshot.storage.k8s.io"
Obj = dict[str, Any]


class FakeKube:
    """GETs of snapshots, contents and PVs; updates recorded (and stored)."""

    def __init__(self, *objects: tuple[str, Obj]) -> None:
        self.objects = {
            (plural, o["metadata"].get("namespace"), o["metadata"]["name"]): o for plural, o in objects
        }
        self.updates: list[tuple[str, Obj]] = []
        self.gets: list[str] = []
        self.fail_update: ApiError | None = None

    async def get(self, resource: Any, name: str, *, namespace: str | None = None) -> Obj:
        self.gets.append(f"{resource.plural}/{name}")
        found = self.objects.get((resource.plural, namespace, name))
        if found is None:
            raise ApiError(
                404, "NotFound", f'{resource.plural}.{resource.group} "{name}" not found'.replace("..", ".")
            )
        return copy.deepcopy(found)

    async def update(self, resource: Any, obj: Obj, **kw: Any) -> Obj:
        if self.fail_update is not None:
            raise self.fail_update
        self.updates.append((resource.plural, copy.deepcopy(obj)))
        meta = obj["metadata"]
        self.objects[(resource.plural, meta.get("namespace"), meta["name"])] = obj
        return obj


class Claims:
    def __init__(self, *claims: Obj) -> None:
        self.claims = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in claims}

    def get(self, name: str, namespace: str | None = None) -> Any:
        return self.claims.get((namespace or "", name))


def snapshot(**status: Any) -> Obj:
    return {
        "metadata": {"name": "snap", "namespace": "default", "uid": "vs-uid"},
        "status": {
            "boundVolumeSnapshotContentName": "content",
            "readyToUse": True,
            "restoreSize": "1Gi",
            **status,
        },
    }


def content(**spec: Any) -> Obj:
    return {
        "metadata": {"name": "content", "annotations": spec.pop("annotations", {})},
        "spec": {
            "driver": DRIVER,
            "sourceVolumeMode": "Filesystem",
            "volumeSnapshotRef": {"name": "snap", "namespace": "default", "uid": "vs-uid"},
            **spec,
        },
        "status": {"snapshotHandle": "snap-id-1", "readyToUse": True, "restoreSize": 2**30},
    }


def new_claim(source: Obj, *, size: str = "1Gi", mode: str = "Filesystem") -> Obj:
    return {
        "metadata": {"name": "data", "namespace": "default", "uid": "u-1"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "sc",
            "volumeMode": mode,
            "dataSource": source,
        },
    }


NO_PERMISSION = (
    "requested volume default/data modifies the mode of the source volume but does not have permission "
    "to do so. "
)
MODE_CLONE = "the source PVC and destination PVCs must have the same volume mode for cloning.  "
SNAP = {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": "snap"}
CLONE = {"kind": "PersistentVolumeClaim", "name": "src"}
SC = {"metadata": {"name": "sc"}, "provisioner": DRIVER}
FULL = Driver(
    name=DRIVER,
    controller_capabilities=frozenset({"CREATE_DELETE_VOLUME", "CREATE_DELETE_SNAPSHOT", "CLONE_VOLUME"}),
)


def builder(kube: FakeKube, claims: Claims | None = None, *, prevent: bool = True) -> RequestBuilder:
    sources = DataSources(kube=kube, claims=claims or Claims(), prevent_volume_mode_conversion=prevent)  # type: ignore[arg-type]
    return RequestBuilder(
        config=ProvisionerConfig(standard=StandardConfig()),
        driver=FULL,
        kube=kube,  # type: ignore[arg-type]
        nodes=None,
        topology_cache=TopologyCache(),
        sources=sources,
    )


async def refused(
    b: RequestBuilder, claim: Obj, text: str, kind: str = "VolumeSnapshot", name: str = "snap"
) -> None:
    with pytest.raises(ProvisionError) as err:
        await b.prepare(claim, SC, "")
    assert str(err.value) == f"error getting handle for DataSource Type {kind} by Name {name}: {text}"
    assert err.value.state is ProvisioningState.NO_CHANGE


async def test_snapshot_restore_request_and_protection_finalizer() -> None:
    kube = FakeKube(("volumesnapshots", snapshot()), ("volumesnapshotcontents", content()))
    prepared = await builder(kube).prepare(new_claim(SNAP), SC, "")
    assert prepared.request.volume_content_source.snapshot.snapshot_id == "snap-id-1"
    [(plural, updated)] = kube.updates
    assert plural == "volumesnapshots" and updated["metadata"]["finalizers"] == [names.SNAPSHOT_FINALIZER]
    # Already protected: no second update; a look-up without protection changes nothing.
    await builder(kube).prepare(new_claim(SNAP), SC, "")
    await builder(kube).prepare(new_claim(SNAP), SC, "", protect=False)
    assert len(kube.updates) == 1


@pytest.mark.parametrize(
    ("vs", "vsc", "claim_kw", "text"),
    [
        (snapshot(readyToUse=False), content(), {}, "snapshot snap is not Ready"),
        (snapshot(), content(driver="other.csi"), {}, "snapshot snap not bound"),
        (
            snapshot(),
            content(volumeSnapshotRef={"name": "snap", "namespace": "default", "uid": "x"}),
            {},
            "snapshot snap not bound",
        ),
        ({**snapshot(), "status": {"readyToUse": True}}, content(), {}, "snapshot snap not bound"),
        (
            snapshot(),
            content(),
            {"size": "512Mi"},
            "requested volume size 536870912 is less than the size 1073741824 for the source snapshot snap",
        ),
        (
            snapshot(),
            content(),
            {"mode": "Block"},
            NO_PERMISSION
            + "snapshot.storage.kubernetes.io/allow-volume-mode-change annotation is not present on "
            "snapshotcontent content",
        ),
        (
            snapshot(),
            content(annotations={names.ANN_ALLOW_VOLUME_MODE_CHANGE: "nope"}),
            {"mode": "Block"},
            NO_PERMISSION
            + "failed to convert snapshot.storage.kubernetes.io/allow-volume-mode-change annotation value "
            'to boolean with error: strconv.ParseBool: parsing "nope": invalid syntax',
        ),
        (
            snapshot(),
            content(annotations={names.ANN_ALLOW_VOLUME_MODE_CHANGE: "false"}),
            {"mode": "Block"},
            NO_PERMISSION + "snapshot.storage.kubernetes.io/allow-volume-mode-change is set to false on "
            "snapshotcontent content",
        ),
    ],
)
async def test_snapshot_refusals(vs: Obj, vsc: Obj, claim_kw: dict[str, str], text: str) -> None:
    kube = FakeKube(("volumesnapshots", vs), ("volumesnapshotcontents", vsc))
    await refused(builder(kube), new_claim(SNAP, **claim_kw), text)
    assert kube.updates == []


async def test_volume_mode_change_allowed_by_annotation_or_flag_and_missing_objects() -> None:
    allowed = content(annotations={names.ANN_ALLOW_VOLUME_MODE_CHANGE: "true"})
    kube = FakeKube(("volumesnapshots", snapshot()), ("volumesnapshotcontents", allowed))
    await builder(kube).prepare(new_claim(SNAP, mode="Block"), SC, "")
    kube = FakeKube(("volumesnapshots", snapshot()), ("volumesnapshotcontents", content()))
    await builder(kube, prevent=False).prepare(new_claim(SNAP, mode="Block"), SC, "")
    await refused(
        builder(FakeKube()),
        new_claim(SNAP),
        "error getting snapshot snap from api server: "
        'volumesnapshots.snapshot.storage.k8s.io "snap" not found',
    )
    only_vs = FakeKube(("volumesnapshots", snapshot()))
    await refused(builder(only_vs), new_claim(SNAP), "snapshot snap not bound")


async def test_snapshot_being_deleted_needs_our_finalizer() -> None:
    deleting = snapshot()
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    kube = FakeKube(("volumesnapshots", deleting), ("volumesnapshotcontents", content()))
    await refused(builder(kube), new_claim(SNAP), "snapshot snap is being deleted")
    deleting["metadata"]["finalizers"] = [names.SNAPSHOT_FINALIZER]
    kube = FakeKube(("volumesnapshots", deleting), ("volumesnapshotcontents", content()))
    prepared = await builder(kube).prepare(new_claim(SNAP), SC, "")
    assert prepared.request.volume_content_source.snapshot.snapshot_id == "snap-id-1"


def source_claim(**status: Any) -> Obj:
    return {
        "metadata": {"name": "src", "namespace": "default", "uid": "src-uid", "resourceVersion": "3"},
        "spec": {
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "sc",
            "volumeName": "pv-src",
        },
        "status": {"phase": "Bound", **status},
    }


def source_pv(**spec: Any) -> Obj:
    return {
        "metadata": {"name": "pv-src"},
        "spec": {
            "csi": {"driver": DRIVER, "volumeHandle": "vol-src"},
            "claimRef": {"name": "src", "namespace": "default", "uid": "src-uid"},
            "volumeMode": "Filesystem",
            **spec,
        },
        "status": {"phase": "Bound"},
    }


async def test_clone_request_and_protection_finalizer() -> None:
    kube = FakeKube(("persistentvolumes", source_pv()))
    prepared = await builder(kube, Claims(source_claim())).prepare(new_claim(CLONE), SC, "")
    assert prepared.request.volume_content_source.volume.volume_id == "vol-src"
    [(plural, updated)] = kube.updates
    assert plural == "persistentvolumeclaims" and updated["metadata"]["finalizers"] == [names.CLONE_FINALIZER]
    assert updated["metadata"]["resourceVersion"] == "3"  # guarded by the cached copy, as upstream


@pytest.mark.parametrize(
    ("src", "pv", "claim_kw", "text"),
    [
        (
            source_claim(phase="Pending"),
            source_pv(),
            {},
            "the PVC DataSource src must have a status of Bound.  "
            "Got {Pending [] map[] [] map[] map[] <nil> <nil>}",
        ),
        (
            {**source_claim(), "metadata": {**source_claim()["metadata"], "deletionTimestamp": "t"}},
            source_pv(),
            {},
            "the PVC DataSource src is currently being deleted",
        ),
        (
            source_claim(),
            source_pv(),
            {"size": "512Mi"},
            "error, new PVC request must be greater than or equal in size to the specified PVC data source, "
            "requested 536870912 but source is 1073741824",
        ),
        (
            source_claim(),
            source_pv(csi={"driver": "other", "volumeHandle": "x"}),
            {},
            "claim in dataSource not bound or invalid",
        ),
        (
            source_claim(),
            source_pv(claimRef={"name": "x", "namespace": "default", "uid": "y"}),
            {},
            "claim in dataSource not bound or invalid",
        ),
        (
            source_claim(),
            source_pv(),
            {"mode": "Block"},
            MODE_CLONE + "Source is Filesystem, but new PVC requested Block",
        ),
        (
            source_claim(),
            source_pv(volumeMode="Block"),
            {},
            MODE_CLONE + "Source is Block, but new PVC requested Filesystem",
        ),
    ],
)
async def test_clone_refusals(src: Obj, pv: Obj, claim_kw: dict[str, str], text: str) -> None:
    kube = FakeKube(("persistentvolumes", pv))
    await refused(
        builder(kube, Claims(src)), new_claim(CLONE, **claim_kw), text, "PersistentVolumeClaim", "src"
    )
    assert kube.updates == []


async def test_missing_clone_source_and_a_failing_finalizer_update() -> None:
    await refused(
        builder(FakeKube()),
        new_claim(CLONE),
        'error getting PVC src (namespace "default") from api server: persistentvolumeclaim "src" not found',
        "PersistentVolumeClaim",
        "src",
    )
    kube = FakeKube(("persistentvolumes", source_pv()))
    kube.fail_update = ApiError(409, "Conflict", "the object has been modified")
    with pytest.raises(ProvisionError, match="the object has been modified") as err:
        await builder(kube, Claims(source_claim())).prepare(new_claim(CLONE), SC, "")
    assert err.value.state is ProvisioningState.NO_CHANGE


class Controller:
    def __init__(self, volume: Any) -> None:
        self.volume = volume
        self.deletes: list[str] = []

    async def CreateVolume(self, request: Any, *, timeout: float) -> Any:
        return csi_pb2.CreateVolumeResponse(volume=self.volume)

    async def DeleteVolume(self, request: Any, *, timeout: float) -> Any:
        self.deletes.append(request.volume_id)
        return csi_pb2.DeleteVolumeResponse()


async def test_volume_without_the_requested_content_source_is_deleted_again() -> None:
    kube = FakeKube(("volumesnapshots", snapshot()), ("volumesnapshotcontents", content()))
    b = builder(kube)
    claim = new_claim(SNAP)
    claim["metadata"]["annotations"] = {names.ANN_STORAGE_PROVISIONER: DRIVER}
    settings = PVSettings(driver=DRIVER, identity="1-2-" + DRIVER, topology=False)
    without = Controller(csi_pb2.Volume(volume_id="v-9", capacity_bytes=2**30))
    p = Provisioner(
        controller=without, builder=b, settings=settings, timeout=1.0, topology_cache=TopologyCache()
    )
    with pytest.raises(ProvisionError) as err:
        await p.provision(claim, SC, "")
    assert str(err.value) == "volume content source missing"
    assert err.value.state is ProvisioningState.IN_BACKGROUND and without.deletes == ["v-9"]
    # With it: the PV is built and the snapshot's finalizer removed again.
    good = csi_pb2.Volume(volume_id="v-10", capacity_bytes=2**30)
    good.content_source.snapshot.snapshot_id = "snap-id-1"
    pv, _ = await Provisioner(
        controller=Controller(good), builder=b, settings=settings, timeout=1.0, topology_cache=TopologyCache()
    ).provision(claim, SC, "")
    assert pv["spec"]["csi"]["volumeHandle"] == "v-10"
    assert names.SNAPSHOT_FINALIZER not in (
        kube.objects[("volumesnapshots", "default", "snap")]["metadata"].get("finalizers") or []
    )
    assert [u[1]["metadata"].get("finalizers") for u in kube.updates] == [[names.SNAPSHOT_FINALIZER], []]


async def test_cross_namespace_sources_are_refused_without_reference_grant_checks() -> None:
    kube = FakeKube(
        ("volumesnapshots", {**snapshot(), "metadata": {**snapshot()["metadata"], "namespace": "other"}})
    )
    b = builder(kube)
    b.config = ProvisionerConfig(standard=StandardConfig(), cross_namespace_data_source=True)
    claim = new_claim(SNAP)
    del claim["spec"]["dataSource"]
    claim["spec"]["dataSourceRef"] = {**SNAP, "namespace": "other"}
    with pytest.raises(
        ProvisionError, match="cross-namespace data sources need ReferenceGrant checks"
    ) as err:
        await b.prepare(claim, SC, "")
    assert err.value.state is ProvisioningState.FINISHED and kube.gets == []
