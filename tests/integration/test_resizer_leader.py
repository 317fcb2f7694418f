"""csi-resizer end to end with two replicas: one leads (Lease `external-resizer-<driver>`), the other takes
over when the leader is killed; and the VolumeAttributesClass modify controller."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from kit import SidecarProcess, eventually
from resizer_fixtures import bound_claim, capacity, claim, request, resizer_args
from test_resizer_expand import resizer_events, stop

from common.kube.client import KubeClient
from common.kube.resources import (
    LEASES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    VOLUME_ATTRIBUTES_CLASSES,
)
from testbed.csidriver import DriverConfig, TestDriver

RESIZER = "sidecars.resizer"
LEASE = "external-resizer-hostpath-csi-k8s-io"
FAST_ELECTION = [
    "--leader-election",
    "--leader-election-namespace=default",
    "--leader-election-lease-duration=2s",
    "--leader-election-renew-deadline=1500ms",
    "--leader-election-retry-period=500ms",
]
Sidecar = Callable[..., SidecarProcess]


@pytest.fixture
def driver_config() -> DriverConfig:
    return dataclasses.replace(DriverConfig(), node_expansion_required=False)


async def _holder(kube: KubeClient, identity: str) -> dict[str, Any] | None:
    lease = await kube.get(LEASES, LEASE, namespace="default")
    return lease if lease["spec"].get("holderIdentity") == identity else None


async def _capacity_is(kube: KubeClient, size: str) -> dict[str, Any] | None:
    pvc = await claim(kube)
    return pvc if capacity(pvc) == size else None


async def test_leader_failover(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    await bound_claim(kube, driver)
    first = sidecar(RESIZER, *resizer_args(kubeconfig, driver, *FAST_ELECTION), env={"POD_NAME": "resizer-a"})
    await eventually(lambda: _holder(kube, "resizer-a"), timeout=15, message="resizer-a leads")
    second = sidecar(
        RESIZER, *resizer_args(kubeconfig, driver, *FAST_ELECTION), env={"POD_NAME": "resizer-b"}
    )
    await eventually(
        lambda: "attempting to acquire leader lease" in second.log(), message="resizer-b standing by"
    )
    await request(kube, "2Gi")
    await eventually(lambda: _capacity_is(kube, "2Gi"), timeout=20, message="expanded by the leader")
    assert "caches synced" not in second.log()  # the standby runs no controller

    assert await first.kill() != 0  # the leader crashes without releasing its Lease
    await request(kube, "3Gi")
    await eventually(lambda: _capacity_is(kube, "3Gi"), timeout=30, message="expanded by the new leader")
    lease = await eventually(lambda: _holder(kube, "resizer-b"), message="resizer-b leads")
    assert lease["spec"]["leaseTransitions"] == 1
    await stop(second)
    released = await kube.get(LEASES, LEASE, namespace="default")
    assert released["spec"]["holderIdentity"] in ("", None)  # released on SIGTERM: a standby need not wait


async def test_volume_attributes_class_modify(
    kubeconfig: str, kube: KubeClient, driver: TestDriver, sidecar: Sidecar
) -> None:
    _, pv = await bound_claim(kube, driver)
    gold = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttributesClass",
        "metadata": {"name": "gold"},
        "driverName": "hostpath.csi.k8s.io",
        "parameters": {"iops": "3000", "throughput": "125"},
    }
    await kube.create(VOLUME_ATTRIBUTES_CLASSES, gold)
    process = sidecar(RESIZER, *resizer_args(kubeconfig, driver, "--extra-modify-metadata"))
    patch = {"spec": {"volumeAttributesClassName": "gold"}}
    await kube.patch(PERSISTENT_VOLUME_CLAIMS, "data", patch, namespace="default")

    async def modified() -> dict[str, Any] | None:
        pvc = await claim(kube)
        return pvc if (pvc.get("status") or {}).get("currentVolumeAttributesClassName") == "gold" else None

    pvc = await eventually(modified, timeout=20, message="currentVolumeAttributesClassName gold")
    assert "modifyVolumeStatus" not in pvc["status"] and "conditions" not in pvc["status"]
    grown = await kube.get(PERSISTENT_VOLUMES, pv["metadata"]["name"])
    assert grown["spec"]["volumeAttributesClassName"] == "gold"
    volume = driver.volumes[pv["spec"]["csi"]["volumeHandle"]]
    assert volume.mutable_parameters == {
        "iops": "3000",
        "throughput": "125",
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default",
        "csi.storage.k8s.io/pv/name": pv["metadata"]["name"],
    }
    events = await eventually(lambda: _reasons(kube, 2), message="modify events")
    assert events == ["VolumeModify", "VolumeModifySuccessful"]

    # A class the driver refuses: Infeasible, with the gRPC code as the condition's reason.
    bad = {**gold, "metadata": {"name": "bad"}, "parameters": {"iops": "-1"}}
    await kube.create(VOLUME_ATTRIBUTES_CLASSES, bad)
    driver.faults.add("ControllerModifyVolume", "error", code=grpc.StatusCode.INVALID_ARGUMENT,
                      message="iops must be positive", count=1)  # fmt: skip
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, "data", {"spec": {"volumeAttributesClassName": "bad"}}, namespace="default"
    )

    async def infeasible() -> dict[str, Any] | None:
        pvc = await claim(kube)
        status = (pvc.get("status") or {}).get("modifyVolumeStatus") or {}
        return pvc if status.get("status") == "Infeasible" else None

    pvc = await eventually(infeasible, timeout=20, message="Infeasible")
    assert pvc["status"]["modifyVolumeStatus"]["targetVolumeAttributesClassName"] == "bad"
    (error,) = [c for c in pvc["status"]["conditions"] if c["type"] == "ModifyVolumeError"]
    assert (error["reason"], error["message"]) == ("InvalidArgument", "iops must be positive")
    assert pvc["status"]["currentVolumeAttributesClassName"] == "gold"
    await stop(process)


async def _reasons(kube: KubeClient, count: int) -> list[str] | None:
    reasons = [e["reason"] for e in await resizer_events(kube)]
    return reasons if len(reasons) >= count else None
