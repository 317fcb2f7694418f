"""The attach-detach stand-in: VolumeAttachments with the real names follow the pods on managed nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_controllers_kit import (
    DRIVER,
    NODE,
    claim,
    events,
    eventually,
    gone,
    managed_node,
    pod,
    static_volume,
)

from testbed.apiserver import DeleteOptions, Store
from testbed.controllers import AttachDetachController, ControlPlane, attachment_name

VAS = "volumeattachments"
HANDLE = "186a18bd-e6d0-11f1-bbd4-c619a4a2584b"  # the golden capture's volume handle
NAME = attachment_name(HANDLE, DRIVER, NODE)


def test_attachment_name_is_the_csi_attachers_sha256() -> None:
    """`getAttachmentName`: csi-<sha256(handle + driver + node)>, checked against `sha256sum`.

    printf '%s' "186a18bd-e6d0-11f1-bbd4-c619a4a2584bhostpath.csi.k8s.ionode-1" | sha256sum
    """
    assert NAME == "csi-891ec3ad0e0cfee4d28549d7f18e86236d528d0f580ade1f997def0fa47aa127"
    assert attachment_name(HANDLE, DRIVER, "node-2") != NAME


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def plane(store: Store) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(store, ["pv", "attachdetach"], resync_period=0.2) as running:
        await running.wait_synced()
        yield running


async def bound_claim(store: Store, name: str = "data", *, handle: str = HANDLE) -> None:
    """A claim bound to a static CSI PV (by the PV controller)."""
    await store.create("persistentvolumes", static_volume(f"pv-{name}", handle=handle))
    await store.create("persistentvolumeclaims", claim(name, class_name=""), namespace="default")

    async def bound() -> bool:
        pvc = await store.get("persistentvolumeclaims", name, namespace="default")
        return pvc["status"].get("phase") == "Bound"

    await eventually(bound, what=f"claim {name} bound")


async def test_a_scheduled_pod_gets_a_volume_attachment_and_losing_it_deletes_it(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("nodes", managed_node())
    await bound_claim(store)
    await store.create("pods", pod("app", "data"), namespace="default")

    attachment = await eventually(lambda: store.get(VAS, NAME), what="the VolumeAttachment")
    assert attachment["spec"] == {
        "attacher": DRIVER,
        "nodeName": NODE,
        "source": {"persistentVolumeName": "pv-data"},
    }
    assert attachment["status"] == {"attached": False}
    assert [va["metadata"]["name"] for va in (await store.list(VAS))["items"]] == [NAME]

    # the external attacher reports success: the pod gets the attach-detach controller's event
    attachment["status"] = {"attached": True}
    await store.update_status(VAS, attachment)
    [event] = await eventually(lambda: events(store, reason="SuccessfulAttachVolume"))
    assert event["message"] == 'AttachVolume.Attach succeeded for volume "pv-data" '
    assert event["source"] == {"component": "attachdetach-controller"}
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == "app"

    await store.delete("pods", "app", namespace="default", options=DeleteOptions(grace_period_seconds=0))
    await eventually(lambda: gone(store, VAS, NAME), what="the VolumeAttachment to go")


async def test_no_attachment_when_the_csidriver_says_attach_is_not_required(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("nodes", managed_node())
    csidriver = {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVER}}
    csidriver["spec"] = {"attachRequired": False}
    await store.create("csidrivers", csidriver)
    await bound_claim(store)
    await store.create("pods", pod("app", "data"), namespace="default")
    controller = plane["attachdetach"]
    assert isinstance(controller, AttachDetachController)

    await eventually(lambda: _cached(controller, "pods", "default/app"))
    assert controller.desired() == {}
    await store.delete("csidrivers", DRIVER)  # a missing CSIDriver means attach is required
    await eventually(lambda: store.get(VAS, NAME), what="the VolumeAttachment once the CSIDriver is gone")


async def _cached(controller: AttachDetachController, resource: str, key: str) -> bool:
    return controller.cached(resource, key) is not None


async def test_only_nodes_managed_by_the_controller_get_attachments(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    await bound_claim(store)
    await store.create("pods", pod("app", "data"), namespace="default")
    controller = plane["attachdetach"]
    assert isinstance(controller, AttachDetachController)
    await eventually(lambda: _cached(controller, "pods", "default/app"))
    assert controller.desired() == {}

    node = await store.get("nodes", NODE)
    node["metadata"]["annotations"] = managed_node()["metadata"]["annotations"]  # kubelet opts in
    await store.update("nodes", node)
    await eventually(lambda: store.get(VAS, NAME), what="the VolumeAttachment")


async def test_detach_waits_while_the_node_reports_the_volume_in_use(
    store: Store, plane: ControlPlane
) -> None:
    await store.create("nodes", managed_node())
    await bound_claim(store)
    await store.create("pods", pod("app", "data"), namespace="default")
    await eventually(lambda: store.get(VAS, NAME), what="the VolumeAttachment")
    node = await store.get("nodes", NODE)
    node["status"] = {"volumesInUse": [f"kubernetes.io/csi/{DRIVER}^{HANDLE}"]}
    await store.update_status("nodes", node)

    completed = await store.get("pods", "app", namespace="default")
    completed["status"]["phase"] = "Succeeded"  # a terminated pod no longer needs the volume ...
    await store.update_status("pods", completed, namespace="default")
    await asyncio.sleep(0.3)
    assert await store.get(VAS, NAME)  # ... but kubelet still has it mounted

    node = await store.get("nodes", NODE)
    node["status"].pop("volumesInUse")
    await store.update_status("nodes", node)
    await eventually(lambda: gone(store, VAS, NAME), what="the VolumeAttachment to go once unmounted")


async def test_hand_made_attachments_are_left_alone(store: Store, plane: ControlPlane) -> None:
    await store.create("nodes", managed_node())
    await bound_claim(store)
    golden_va = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": "golden-va"},
        "spec": {"attacher": DRIVER, "nodeName": NODE, "source": {"persistentVolumeName": "pv-data"}},
    }
    await store.create(VAS, golden_va)
    await asyncio.sleep(0.3)  # resyncs happen; no pod wants it, yet it is not the controller's to delete
    assert await store.get(VAS, "golden-va")
