"""csi-resizer end to end when things go wrong: infeasible sizes and recovery, transient errors, a driver
restart, volumes in use by pods with an offline-only driver, and bad input."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from kit import SidecarProcess, eventually
from resizer_fixtures import DRIVER, bound_claim, capacity, claim, request, resizer_args, storage_status
from test_resizer_expand import resizer_events, stop

from common.kube.client import ApiError, KubeClient
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS, SECRETS
from common.quantity import to_bytes
from proto import csi_pb2
from testbed.csidriver import DriverConfig, GiB, TestDriver, connect

RESIZER = "sidecars.resizer"
Sidecar = Callable[..., SidecarProcess]


@pytest.fixture
def driver_config(request: pytest.FixtureRequest) -> DriverConfig:
    options = {"node_expansion_required": False, "max_volume_size": 10 * GiB, **getattr(request, "param", {})}
    return dataclasses.replace(DriverConfig(), **options)


async def _capacity_is(kube: KubeClient, size: str) -> dict[str, Any] | None:
    pvc = await claim(kube)
    return pvc if capacity(pvc) == size else None


async def _warning(kube: KubeClient, text: str) -> dict[str, Any] | None:
    for event in await resizer_events(kube):
        if event["type"] == "Warning" and text in event["message"]:
            return event
    return None


async def test_infeasible_size_then_recovery_by_lowering_the_request(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await request(kube, "100Gi")  # more than the driver can give: OutOfRange

    async def infeasible() -> dict[str, Any] | None:
        pvc = await claim(kube)
        return pvc if storage_status(pvc) == "ControllerResizeInfeasible" else None

    pvc = await eventually(infeasible, timeout=20, message="ControllerResizeInfeasible")
    assert pvc["status"]["allocatedResources"] == {"storage": "100Gi"}
    (error,) = [c for c in pvc["status"]["conditions"] if c["type"] == "ControllerResizeError"]
    text = (
        f"rpc error: code = OutOfRange desc = requested capacity {100 * GiB} exceeds the maximum {10 * GiB}"
    )
    assert error["message"] == f"failed to expand pvc with {text}"
    event = await eventually(lambda: _warning(kube, "OutOfRange"), message="VolumeResizeFailed event")
    assert event["reason"] == "VolumeResizeFailed"
    assert (
        event["message"] == f'resize volume "{pv["metadata"]["name"]}" by resizer "{DRIVER}" failed: {text}'
    )
    # Infeasible: retried only every --retry-interval-max (2s here), not in a tight loop.
    await asyncio.sleep(1.0)
    before = driver.calls.counts["ControllerExpandVolume"]
    await asyncio.sleep(1.0)
    assert driver.calls.counts["ControllerExpandVolume"] - before <= 1
    assert capacity(await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"]), "spec") == "1Gi"

    await request(kube, "2Gi")  # the user gives up on 100Gi: allowed, since 2Gi > status capacity
    done = await eventually(lambda: _capacity_is(kube, "2Gi"), timeout=20, message="recovered to 2Gi")
    assert done["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert "allocatedResourceStatuses" not in done["status"] and "conditions" not in done["status"]
    assert driver.volumes[pv["spec"]["csi"]["volumeHandle"]].capacity == to_bytes("2Gi")
    await stop(process)


async def test_transient_errors_are_retried_with_the_same_size(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    await bound_claim(kube, driver)
    driver.faults.add("ControllerExpandVolume", "error", code=grpc.StatusCode.UNAVAILABLE, count=2)
    driver.faults.add("ControllerExpandVolume", "error", code=grpc.StatusCode.DEADLINE_EXCEEDED, count=1)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await request(kube, "2Gi")
    await eventually(lambda: _capacity_is(kube, "2Gi"), timeout=20, message="capacity 2Gi")
    calls = driver.calls.of("ControllerExpandVolume")
    assert [c.code for c in calls] == [grpc.StatusCode.UNAVAILABLE] * 2 + [
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.OK,
    ]
    assert {c.request.capacity_range.required_bytes for c in calls} == {to_bytes("2Gi")}
    assert await _warning(kube, "code = Unavailable")
    await stop(process)


async def test_driver_restart_during_an_expansion(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await eventually(lambda: "caches synced" in process.log(), message="resizer running")
    driver.faults.add("ControllerExpandVolume", "crash", count=1, restart_after=0.5)
    await request(kube, "2Gi")
    done = await eventually(
        lambda: _capacity_is(kube, "2Gi"), timeout=30, message="capacity 2Gi after restart"
    )
    assert driver.crashes == 1 and process.running()
    assert "reconnected to CSI driver" in process.log()
    assert done["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert driver.volumes[pv["spec"]["csi"]["volumeHandle"]].capacity == to_bytes("2Gi")
    await stop(process)


async def _publish(driver: TestDriver, volume_id: str) -> None:
    async with connect(driver.address) as stubs:
        capability = csi_pb2.VolumeCapability()
        capability.mount.fs_type = "xfs"
        capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
        await stubs.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id="node-1", volume_capability=capability
            )
        )


async def _unpublish(driver: TestDriver, volume_id: str) -> None:
    async with connect(driver.address) as stubs:
        await stubs.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id="node-1")
        )


@pytest.mark.parametrize("driver_config", [{"volume_expansion": "OFFLINE"}], indirect=True)
async def test_volume_in_use_is_not_expanded_by_an_offline_driver(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    volume_id = pv["spec"]["csi"]["volumeHandle"]
    await _publish(driver, volume_id)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "default"},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }
    await kube.create(PODS, pod)
    await kube.patch(PODS, "app", {"status": {"phase": "Running"}}, namespace="default", subresource="status")
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await request(kube, "2Gi")
    await eventually(lambda: _warning(kube, "code = FailedPrecondition"), timeout=20, message="in-use error")
    refused = await eventually(lambda: _warning(kube, "only supports offline expansion"), message="refusal")
    assert refused["message"] == (
        f"Unable to expand default/data because CSI driver {DRIVER} only supports offline expansion "
        "and volume is currently in-use"
    )
    await asyncio.sleep(0.5)
    assert driver.calls.counts["ControllerExpandVolume"] == 1  # not tried again while the pod runs
    # The pod goes away and the volume is detached: now it can be expanded offline.
    await kube.patch(
        PODS, "app", {"status": {"phase": "Succeeded"}}, namespace="default", subresource="status"
    )
    await _unpublish(driver, volume_id)
    await eventually(lambda: _capacity_is(kube, "2Gi"), timeout=20, message="expanded offline")
    assert driver.volumes[volume_id].capacity == to_bytes("2Gi")
    await stop(process)


async def test_bad_input_says_why_and_changes_nothing(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    await bound_claim(kube, driver)
    # The controller-expand secret is missing: an event says why, retried with backoff, no crash loop.
    await kube.delete(SECRETS, "prov-secret", namespace="default")
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    await request(kube, "2Gi")
    text = 'error getting secret prov-secret in namespace default: secrets "prov-secret" not found'
    event = await eventually(lambda: _warning(kube, text), timeout=20, message="missing secret event")
    assert event["reason"] == "VolumeResizeFailed"
    pvc = await claim(kube)
    assert storage_status(pvc) == "ControllerResizeInProgress" and capacity(pvc) == "1Gi"
    assert driver.calls.counts["ControllerExpandVolume"] == 0
    # A shrink below the capacity is refused by the API server itself; the resizer sees nothing.
    with pytest.raises(ApiError) as shrink:
        await request(kube, "512Mi")
    assert shrink.value.status == 422 and "can not be less than status.capacity" in str(shrink.value)
    # The secret appears: the retry succeeds.
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "prov-secret", "namespace": "default"},
    }
    await kube.create(SECRETS, secret)
    await eventually(lambda: _capacity_is(kube, "2Gi"), timeout=20, message="expanded once the secret exists")
    assert process.running()
    # A PV without a CSI source whose claim names this driver as its resizer: an event says why.
    await kube.create(
        PERSISTENT_VOLUMES,
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "intree"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                  "hostPath": {"path": "/x"}, "storageClassName": "golden"}},
    )  # fmt: skip
    other = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": "intree", "namespace": "default",
                          "annotations": {"volume.kubernetes.io/storage-resizer": DRIVER}},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                      "storageClassName": "golden", "volumeName": "intree"}}  # fmt: skip
    created = await kube.create(PERSISTENT_VOLUME_CLAIMS, other)
    claim_ref = {"namespace": "default", "name": "intree", "uid": created["metadata"]["uid"]}
    await kube.patch(PERSISTENT_VOLUMES, "intree", {"spec": {"claimRef": claim_ref}})
    bound = {"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    await kube.patch(PERSISTENT_VOLUME_CLAIMS, "intree", bound, namespace="default", subresource="status")
    await request(kube, "2Gi", name="intree")
    await eventually(lambda: _warning(kube, "has no CSI source"), timeout=20, message="no CSI source event")
    assert capacity(await kube.get(PERSISTENT_VOLUMES, "intree"), "spec") == "1Gi"
    await stop(process)


@pytest.mark.parametrize(
    ("driver_config", "message"),
    [
        ({"controller_service": False}, "csi-resizer: CSI driver does not support controller service"),
        (
            {
                "controller_capabilities": frozenset({"CREATE_DELETE_VOLUME"}),
                "node_capabilities": frozenset({"STAGE_UNSTAGE_VOLUME"}),
            },
            "csi-resizer: CSI driver does not support resize nor modify",
        ),
    ],
    indirect=["driver_config"],
)
async def test_a_driver_that_cannot_resize_is_refused_at_start(
    kubeconfig: str, driver: TestDriver, sidecar: Sidecar, message: str
) -> None:
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver))
    assert await process.wait(20) == 1
    assert process.log().strip().splitlines()[-1] == message
