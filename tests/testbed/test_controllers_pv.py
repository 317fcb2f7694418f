"""The PV controller, the protection controllers and the scheduler stand-in, against the in-process Store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_controllers_kit import (
    DRIVER,
    claim,
    events,
    eventually,
    golden,
    gone,
    pod,
    provisioned_volume,
    static_volume,
    storage_class,
)

from testbed.apiserver import DeleteOptions, Store
from testbed.controllers import ControlPlane

Obj = dict[str, Any]
PVCS, PVS = "persistentvolumeclaims", "persistentvolumes"
EXTERNAL_PROVISIONING = (
    f"Waiting for a volume to be created either by the external provisioner '{DRIVER}' or manually by the "
    "system administrator. If volume creation is delayed, please verify that the provisioner is running "
    "and correctly registered."
)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def plane(store: Store) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(store, ["pv", "scheduler"], resync_period=0.2) as running:
        await running.wait_synced()
        yield running


async def annotated_claim(store: Store, name: str = "data") -> Obj:
    async def probe() -> Obj | None:
        pvc = await store.get(PVCS, name, namespace="default")
        annotations = pvc["metadata"].get("annotations") or {}
        return pvc if "volume.kubernetes.io/storage-provisioner" in annotations else None

    return await eventually(probe, what="the provisioner annotations")


async def phase(store: Store, resource: str, name: str, wanted: str, *, namespace: str = "") -> Obj:
    async def probe() -> Obj | None:
        obj = await store.get(resource, name, namespace=namespace)
        return obj if (obj.get("status") or {}).get("phase") == wanted else None

    return await eventually(probe, what=f"{resource}/{name} {wanted}")


async def test_unbound_claim_gets_the_provisioner_annotations_and_the_event(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("storageclasses", storage_class())
    await store.create(PVCS, claim(), namespace="default")

    pvc = await annotated_claim(store)

    annotations = pvc["metadata"]["annotations"]
    assert annotations == {
        "volume.beta.kubernetes.io/storage-provisioner": DRIVER,
        "volume.kubernetes.io/storage-provisioner": DRIVER,
    }
    [event] = await eventually(lambda: events(store, reason="ExternalProvisioning"))
    assert event["message"] == EXTERNAL_PROVISIONING
    assert event["type"] == "Normal"
    assert event["source"] == {"component": "persistentvolume-controller"}
    assert event["reportingComponent"] == "persistentvolume-controller"
    assert event["metadata"]["name"].startswith("data.")
    ref = event["involvedObject"]
    assert ref == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": "data",
        "namespace": "default",
        "resourceVersion": pvc["metadata"]["resourceVersion"],
        "uid": pvc["metadata"]["uid"],
    }
    # every resync repeats the event: the recorder bumps the count of the same Event (golden: count 2)
    await eventually(lambda: _count_above(store, "ExternalProvisioning", 1), what="a repeated event")
    assert len(await events(store, reason="ExternalProvisioning")) == 1


async def _count_above(store: Store, reason: str, count: int) -> bool:
    return any(int(e.get("count") or 0) > count for e in await events(store, reason=reason))


async def test_a_provisioned_volume_is_bound_on_both_sides_like_the_golden(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("storageclasses", storage_class())
    await store.create(PVCS, claim(), namespace="default")
    pvc = await annotated_claim(store)

    volume = await store.create(PVS, provisioned_volume(pvc, finalizers=True))

    bound = await phase(store, PVCS, "data", "Bound", namespace="default")
    expected = golden("02-bound-pvc.json")
    assert bound["metadata"]["annotations"] == expected["metadata"]["annotations"]
    assert bound["metadata"]["finalizers"] == expected["metadata"]["finalizers"]
    assert bound["spec"] == {**expected["spec"], "volumeName": volume["metadata"]["name"]}
    assert bound["status"] == expected["status"]

    pv = await phase(store, PVS, volume["metadata"]["name"], "Bound")
    golden_pv = golden("01-provisioned-pv.json")
    assert pv["status"]["lastPhaseTransitionTime"]
    assert set(pv["metadata"]["annotations"]) == set(
        golden_pv["metadata"]["annotations"]
    )  # no bound-by-controller
    assert pv["metadata"]["finalizers"] == golden_pv["metadata"]["finalizers"]
    assert pv["spec"]["claimRef"] == volume["spec"]["claimRef"]


async def test_a_deleted_claim_releases_its_volume_and_deletion_is_left_to_the_provisioner(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("storageclasses", storage_class())
    await store.create(PVCS, claim(), namespace="default")
    pvc = await annotated_claim(store)
    volume = await store.create(PVS, provisioned_volume(pvc, finalizers=True))
    name = volume["metadata"]["name"]
    await phase(store, PVS, name, "Bound")

    await store.delete(PVCS, "data", namespace="default")  # pvc-protection lets it go: no pod uses it
    await eventually(lambda: gone(store, PVCS, "data", namespace="default"), what="the claim to go")

    released = await phase(store, PVS, name, "Released")
    assert released["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert not released["metadata"].get("deletionTimestamp")  # the external provisioner deletes it

    # what the provisioner then does: delete the PV and drop its own finalizer; pv-protection drops the rest
    await store.delete(PVS, name)
    current = await store.get(PVS, name)
    current["metadata"]["finalizers"] = ["kubernetes.io/pv-protection"]
    await store.update(PVS, current)
    await eventually(lambda: gone(store, PVS, name), what="the released PV to go")


async def test_an_available_static_volume_is_bound_by_the_controller(
    store: Store, plane: ControlPlane
) -> None:
    await store.create(PVS, static_volume("small", handle="h-small", size="1Gi"))
    await store.create(PVS, static_volume("big", handle="h-big", size="5Gi"))
    await phase(store, PVS, "small", "Available")
    await phase(store, PVS, "big", "Available")

    await store.create(PVCS, claim("static", size="2Gi", class_name=""), namespace="default")

    bound = await phase(store, PVCS, "static", "Bound", namespace="default")
    assert bound["spec"]["volumeName"] == "big"  # the smallest volume that is large enough
    assert bound["status"]["capacity"] == {"storage": "5Gi"}
    pv = await phase(store, PVS, "big", "Bound")
    assert pv["metadata"]["annotations"] == {"pv.kubernetes.io/bound-by-controller": "yes"}
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]
    assert (await store.get(PVS, "small"))["status"]["phase"] == "Available"


async def test_wait_for_first_consumer_waits_for_a_scheduled_pod(store: Store, plane: ControlPlane) -> None:
    await store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
    await store.create(PVCS, claim("late", class_name="late"), namespace="default")

    [waiting] = await eventually(lambda: events(store, reason="WaitForFirstConsumer"))
    assert waiting["message"] == "waiting for first consumer to be created before binding"
    await store.create("pods", pod("consumer", "late", node=None), namespace="default")
    [unscheduled] = await eventually(lambda: events(store, reason="WaitForPodScheduled"))
    assert unscheduled["message"] == "waiting for pod consumer to be scheduled"
    annotations = (await store.get(PVCS, "late", namespace="default"))["metadata"].get("annotations") or {}
    assert "volume.kubernetes.io/storage-provisioner" not in annotations

    scheduled = await store.get("pods", "consumer", namespace="default")
    scheduled["spec"]["nodeName"] = "node-1"
    await store.update("pods", scheduled, namespace="default")

    pvc = await annotated_claim(store, "late")
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-1"
    assert await eventually(lambda: events(store, reason="ExternalProvisioning"))


async def test_the_scheduler_prebinds_a_matching_static_volume_for_a_delayed_claim(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("storageclasses", storage_class("local", binding="WaitForFirstConsumer"))
    affinity = {
        "required": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-2"]}
                    ]
                }
            ]
        }
    }
    await store.create(
        PVS, static_volume("elsewhere", handle="h2", class_name="local", nodeAffinity=affinity)
    )
    await store.create(PVS, static_volume("here", handle="h1", class_name="local"))
    await phase(store, PVS, "here", "Available")  # the scheduler only considers Available volumes
    await phase(store, PVS, "elsewhere", "Available")
    await store.create("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    await store.create(PVCS, claim("local", class_name="local"), namespace="default")
    await store.create("pods", pod("user", "local"), namespace="default")

    bound = await phase(store, PVCS, "local", "Bound", namespace="default")
    assert bound["spec"]["volumeName"] == "here"
    assert "volume.kubernetes.io/selected-node" not in (bound["metadata"].get("annotations") or {})
    assert (await store.get(PVS, "elsewhere"))["status"]["phase"] == "Available"


async def test_pvc_protection_waits_for_the_last_scheduled_pod(store: Store, plane: ControlPlane) -> None:
    await store.create(PVS, static_volume("pv-a", handle="ha"))
    await store.create(PVCS, claim("used", class_name=""), namespace="default")
    await phase(store, PVCS, "used", "Bound", namespace="default")
    await store.create("pods", pod("user", "used"), namespace="default")
    await store.create("pods", pod("pending-user", "used", node=None), namespace="default")

    await store.delete(PVCS, "used", namespace="default")
    await eventually(lambda: _deleting(store, PVCS, "used", namespace="default"))
    await asyncio.sleep(0.3)  # a few resyncs: the deletion stays pending while a scheduled pod uses the claim
    assert not await gone(store, PVCS, "used", namespace="default")
    await store.delete("pods", "pending-user", namespace="default")  # never scheduled: it does not count

    await store.delete("pods", "user", namespace="default", options=DeleteOptions(grace_period_seconds=0))
    await eventually(lambda: gone(store, PVCS, "used", namespace="default"), what="the claim to go")
    released = await phase(store, PVS, "pv-a", "Released")
    assert released["spec"]["persistentVolumeReclaimPolicy"] == "Retain"


async def _deleting(store: Store, resource: str, name: str, *, namespace: str = "") -> bool:
    obj = await store.get(resource, name, namespace=namespace)
    return bool(obj["metadata"].get("deletionTimestamp"))


async def test_pv_protection_keeps_a_bound_volume(store: Store, plane: ControlPlane) -> None:
    await store.create(PVS, static_volume("kept", handle="hk"))
    await store.create(PVCS, claim("holder", class_name=""), namespace="default")
    await phase(store, PVS, "kept", "Bound")

    await store.delete(PVS, "kept")
    await eventually(lambda: _deleting(store, PVS, "kept"))
    assert (await store.get(PVS, "kept"))["metadata"]["finalizers"] == ["kubernetes.io/pv-protection"]

    await store.delete(PVCS, "holder", namespace="default")  # the claim goes, the PV is Released
    await eventually(lambda: gone(store, PVS, "kept"), what="the unbound PV to go")


async def test_informers_relist_after_the_history_is_compacted(store: Store, plane: ControlPlane) -> None:
    await store.create("storageclasses", storage_class())
    store.compact()
    store.close_watches()  # every watch ends; resuming from the old resourceVersion is 410 Expired
    await store.create(PVCS, claim(), namespace="default")

    pvc = await annotated_claim(store)
    assert pvc["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == DRIVER


async def test_a_conflict_is_retried_from_a_fresh_read(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone else writes the claim between the controller's read and its PUT: 409, re-read, retry."""
    update = store.update
    conflicts: list[str] = []

    async def racing_update(resource: str, obj: Obj, **kwargs: Any) -> Obj:
        if resource == PVCS and not conflicts:
            conflicts.append(obj["metadata"]["resourceVersion"])
            current = await store.get(PVCS, obj["metadata"]["name"], namespace="default")
            current["metadata"].setdefault("labels", {})["touched"] = "yes"
            await update(PVCS, current, namespace="default")  # the other writer wins
        return await update(resource, obj, **kwargs)

    monkeypatch.setattr(store, "update", racing_update)
    await store.create("storageclasses", storage_class())
    await store.create(PVCS, claim(), namespace="default")
    async with ControlPlane(store, ["persistentvolume-binder"], resync_period=0.2) as plane:
        await plane.wait_synced()
        pvc = await annotated_claim(store)
    assert conflicts  # the first PUT carried a stale resourceVersion and got 409
    assert pvc["metadata"]["labels"] == {"touched": "yes"}  # the retry kept the other writer's change


async def test_the_scheduler_places_pods_once_their_claims_allow_it(store: Store) -> None:
    await store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
    await store.create(PVCS, claim("late", class_name="late"), namespace="default")
    await store.create(PVCS, claim("now", class_name=""), namespace="default")  # immediate, no PV yet
    await store.create("pods", pod("placed", "late", node=None), namespace="default")
    await store.create("pods", pod("waiting", "now", node=None), namespace="default")
    async with ControlPlane(store, ["pv", "scheduler"], default_node="node-9", resync_period=0.2) as plane:
        await plane.wait_synced()
        placed = await eventually(lambda: _node_of(store, "placed"), what="the pod placed")
        assert placed == "node-9"
        pvc = await annotated_claim(store, "late")
        assert pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "node-9"
        assert await _node_of(store, "waiting") is None  # its immediate claim is unbound

        await store.create(PVS, static_volume("for-now", handle="h-now"))
        assert await eventually(lambda: _node_of(store, "waiting"), what="the pod placed") == "node-9"


async def _node_of(store: Store, name: str) -> str | None:
    return (await store.get("pods", name, namespace="default"))["spec"].get("nodeName")
