"""csi-provisioner end to end: Immediate and delayed binding, delete and retain, secret templates, topology.

Each test runs the real `python -m sidecars.provisioner` against the test bed (API server, PV
controller stand-in, CSI test driver on a unix socket), drives it through the API like a user, asserts
on API objects, driver state and events, and ends with SIGTERM → exit 0.
"""

from __future__ import annotations

from typing import Any

import pytest
from kit import eventually
from provisioner_fixtures import (
    ANN_SELECTED_NODE,
    PREFIX,
    PV_FINALIZER,
    TOPOLOGY_KEY,
    Bed,
    csinode,
    node,
    provisioner_bed,
    secret,
    stop_cleanly,
    storage_class,
)

from testbed.apiserver import ApiServer
from testbed.csidriver import DriverConfig, TestDriver

NODES = ("node-1", "node-2", "node-3")


@pytest.fixture
def driver_config() -> DriverConfig:
    return DriverConfig(nodes={n: {TOPOLOGY_KEY: n} for n in NODES})


async def add_nodes(bed: Bed, *names: str) -> None:
    for name in names:
        await bed.store.create("nodes", node(name))
        await bed.store.create("csinodes", csinode(name))


def segments(terms: Any) -> list[dict[str, str]]:
    return [dict(t.segments) for t in terms]


async def test_immediate_binding_then_delete(apiserver: ApiServer, driver: TestDriver, sidecar: Any) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        # $KUBECONFIG wins over --kubeconfig, as upstream
        process = bed.start("--kubeconfig=/nonexistent/kubeconfig", env={"KUBECONFIG": bed.kubeconfig})
        await bed.create_claim("data")
        pvc = await bed.wait_bound("data")
        pv_name = pvc["spec"]["volumeName"]
        [volume] = driver.volumes.values()
        assert volume.name == pv_name and volume.capacity == 2**30
        [call] = driver.calls.of("CreateVolume")
        assert dict(call.request.secrets) == {"password": "s3cr3t-value-never-logged"}
        # Delete: the PV is released, its volume deleted with the provisioner secret, then the PV goes.
        await bed.delete_claim("data")
        await bed.wait_gone("persistentvolumes", pv_name)
        assert not driver.volumes
        [delete] = driver.calls.of("DeleteVolume")
        assert delete.request.volume_id == volume.volume_id
        assert dict(delete.request.secrets) == {"password": "s3cr3t-value-never-logged"}
        await stop_cleanly(process)


async def test_wait_for_first_consumer_waits_for_the_selected_node(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES) as bed:
        await bed.store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
        process = bed.start()
        await bed.create_claim("late-claim", sc="late")
        await bed.create_claim("now")  # Immediate: proves the sidecar has seen the claims
        now = await bed.wait_bound("now")
        assert [c.request.name for c in driver.calls.of("CreateVolume")] == [now["spec"]["volumeName"]]
        pvc = await bed.get("persistentvolumeclaims", "late-claim", "default")
        assert pvc is not None and not (pvc.get("spec") or {}).get("volumeName")
        assert not await bed.our_events("late-claim")
        # The scheduler picks node-2.
        await bed.store.patch(
            "persistentvolumeclaims",
            "late-claim",
            {"metadata": {"annotations": {ANN_SELECTED_NODE: "node-2"}}},
            patch_type="merge",
            namespace="default",
        )
        pvc = await bed.wait_bound("late-claim")
        call = driver.calls.of("CreateVolume")[-1]
        requirements = call.request.accessibility_requirements
        everywhere = [{TOPOLOGY_KEY: n} for n in NODES]
        assert segments(requirements.requisite) == everywhere
        assert segments(requirements.preferred)[0] == {TOPOLOGY_KEY: "node-2"}
        pv = await bed.get("persistentvolumes", pvc["spec"]["volumeName"])
        assert pv is not None
        terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert terms == [
            {"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": ["node-2"]}]}
        ]
        await stop_cleanly(process)


async def test_strict_and_immediate_topology(apiserver: ApiServer, driver: TestDriver, sidecar: Any) -> None:
    async with provisioner_bed(apiserver, driver, sidecar, nodes=NODES) as bed:
        await bed.store.create("storageclasses", storage_class("late", binding="WaitForFirstConsumer"))
        strict = bed.start("--strict-topology")
        await bed.create_claim("strict", sc="late", annotations={ANN_SELECTED_NODE: "node-3"})
        await bed.create_claim("spread-0")
        await bed.wait_bound("strict")
        await bed.wait_bound("spread-0")
        calls = {c.request.name: c.request for c in driver.calls.of("CreateVolume")}
        by_claim = {p["spec"]["claimRef"]["name"]: p["metadata"]["name"] for p in await bed.pvs()}
        req = calls[by_claim["strict"]].accessibility_requirements
        assert segments(req.requisite) == segments(req.preferred) == [{TOPOLOGY_KEY: "node-3"}]
        req = calls[by_claim["spread-0"]].accessibility_requirements
        assert sorted(segments(req.requisite), key=str) == [{TOPOLOGY_KEY: n} for n in NODES]
        assert len(segments(req.preferred)) == 3
        await stop_cleanly(strict)
        # --immediate-topology=false: an Immediate claim gets no requirements at all.
        plain = bed.start("--immediate-topology=false")
        await bed.create_claim("anywhere")
        await bed.wait_bound("anywhere")
        by_claim = {p["spec"]["claimRef"]["name"]: p["metadata"]["name"] for p in await bed.pvs()}
        request = next(
            c.request for c in driver.calls.of("CreateVolume") if c.request.name == by_claim["anywhere"]
        )
        assert not request.HasField("accessibility_requirements")
        await stop_cleanly(plain)


async def test_retain_keeps_the_volume_and_drops_our_finalizer(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        await bed.store.create("storageclasses", storage_class("keep", reclaim="Retain"))
        process = bed.start()
        await bed.create_claim("kept", sc="keep")
        pvc = await bed.wait_bound("kept")
        pv_name = pvc["spec"]["volumeName"]

        async def finalizer_gone() -> bool:
            pv = await bed.get("persistentvolumes", pv_name)
            return pv is not None and PV_FINALIZER not in pv["metadata"].get("finalizers", [])

        await eventually(finalizer_gone, message="our finalizer removed from a Retain PV")
        await bed.delete_claim("kept")

        async def released() -> bool:
            pv = await bed.get("persistentvolumes", pv_name)
            return pv is not None and pv["status"]["phase"] == "Released"

        await eventually(released, message="PV released")
        await stop_cleanly(process)  # the workers drained: nothing was going to delete it
        assert len(driver.volumes) == 1 and not driver.calls.of("DeleteVolume")


async def test_deletion_waits_for_volume_attachments(
    apiserver: ApiServer, driver: TestDriver, sidecar: Any
) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        process = bed.start()
        await bed.create_claim("attached")
        pv_name = (await bed.wait_bound("attached"))["spec"]["volumeName"]
        va = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {"name": "va-1"},
            "spec": {
                "attacher": "hostpath.csi.k8s.io",
                "nodeName": "node-1",
                "source": {"persistentVolumeName": pv_name},
            },
        }
        await bed.store.create("volumeattachments", va)
        await bed.delete_claim("attached")
        event = await bed.wait_event(pv_name, "VolumeFailedDelete")
        assert event["message"] == f"persistentvolume {pv_name} is still attached to node node-1"
        assert event["type"] == "Warning" and event["involvedObject"]["kind"] == "PersistentVolume"
        assert len(driver.volumes) == 1 and not driver.calls.of("DeleteVolume")
        await bed.store.delete("volumeattachments", "va-1")
        await bed.wait_gone("persistentvolumes", pv_name)
        assert not driver.volumes
        await stop_cleanly(process)


async def test_every_secret_template(apiserver: ApiServer, driver: TestDriver, sidecar: Any) -> None:
    async with provisioner_bed(apiserver, driver, sidecar) as bed:
        await bed.store.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
        )
        await bed.store.create(
            "secrets", secret("owner-db", "team-a", token="from-annotation"), namespace="team-a"
        )
        params = {
            PREFIX + "provisioner-secret-name": "${pvc.annotations['example.com/owner']}-${pvc.name}",
            PREFIX + "provisioner-secret-namespace": "${pvc.namespace}",
            PREFIX + "node-publish-secret-name": "${pv.name}",
            PREFIX + "node-publish-secret-namespace": "${pvc.namespace}",
            PREFIX + "node-stage-secret-name": "stage-${pvc.namespace}",
            PREFIX + "node-stage-secret-namespace": "${pv.name}",
            PREFIX + "secret-name": "fallback",
            PREFIX + "secret-namespace": "default",
        }
        await bed.store.create("storageclasses", storage_class("templated", parameters=params))
        process = bed.start()
        # A template naming an annotation the claim lacks: ProvisioningFailed, retried.
        await bed.create_claim("db", sc="templated", namespace="team-a")
        event = await bed.wait_event("db", "ProvisioningFailed", contains="invalid tokens")
        assert event["message"] == (
            "error resolving value \"${pvc.annotations['example.com/owner']}-${pvc.name}\": "
            "invalid tokens: [\"pvc.annotations['example.com/owner']\"]"
        )
        assert event["type"] == "Warning" and not driver.calls.of("CreateVolume")
        await bed.store.patch(
            "persistentvolumeclaims",
            "db",
            {"metadata": {"annotations": {"example.com/owner": "owner"}}},
            patch_type="merge",
            namespace="team-a",
        )
        pvc = await bed.wait_bound("db", "team-a")
        pv_name = pvc["spec"]["volumeName"]
        [call] = driver.calls.of("CreateVolume")
        assert dict(call.request.secrets) == {"token": "from-annotation"}
        pv = await bed.get("persistentvolumes", pv_name)
        assert pv is not None
        csi = pv["spec"]["csi"]
        assert csi["nodePublishSecretRef"] == {"name": pv_name, "namespace": "team-a"}
        assert csi["nodeStageSecretRef"] == {"name": "stage-team-a", "namespace": pv_name}
        assert csi["controllerPublishSecretRef"] == {
            "name": "fallback",
            "namespace": "default",
        }  # the default pair
        anns = pv["metadata"]["annotations"]
        assert anns["volume.kubernetes.io/provisioner-deletion-secret-name"] == "owner-db"
        assert anns["volume.kubernetes.io/provisioner-deletion-secret-namespace"] == "team-a"
        await stop_cleanly(process)
        assert "from-annotation" not in process.log()
