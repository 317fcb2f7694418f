"""csi-resizer's modify controller (VolumeAttributesClass) against a fake API server and a fake driver."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from kit import FakeRpcError
from test_resizer_fakes import DRIVER, Cluster, claim, volume

from common.controller import Requeue
from common.csi import CSIConnection
from common.kube.events import EventRecorder
from common.kube.resources import (
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    SECRETS,
    VOLUME_ATTRIBUTES_CLASSES,
)
from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.resizer import vac as v
from sidecars.resizer.cli import ResizerConfig
from sidecars.resizer.modify import ModifyController, ModifyError

KEY = "default/data"


@dataclass
class FakeControllerService:
    script: list[Exception] = field(default_factory=list)
    requests: list[csi_pb2.ControllerModifyVolumeRequest] = field(default_factory=list)

    async def ControllerModifyVolume(
        self, request: csi_pb2.ControllerModifyVolumeRequest, timeout: float | None = None
    ) -> csi_pb2.ControllerModifyVolumeResponse:
        self.requests.append(request)
        if self.script:
            raise self.script.pop(0)
        return csi_pb2.ControllerModifyVolumeResponse()


def make(cluster: Cluster, **options: Any) -> tuple[ModifyController, FakeControllerService]:
    service = FakeControllerService()
    controller = ModifyController(
        config=ResizerConfig(standard=StandardConfig(), **options),
        driver=DRIVER,
        csi=cast(CSIConnection, SimpleNamespace(controller=service)),
        factory=cluster.factory,
        recorder=cast(EventRecorder, cluster.recorder),
    )
    return controller, service


def add_class(cluster: Cluster, name: str, **parameters: str) -> None:
    cluster.add(
        VOLUME_ATTRIBUTES_CLASSES,
        {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttributesClass", "metadata": {"name": name},
         "driverName": DRIVER, "parameters": parameters},
    )  # fmt: skip


@pytest.fixture
def cluster() -> Cluster:
    bed = Cluster()
    pvc = claim("1Gi")
    pvc["spec"]["volumeAttributesClassName"] = "gold"
    bed.add(PERSISTENT_VOLUME_CLAIMS, pvc)
    bed.add(PERSISTENT_VOLUMES, volume("1Gi"))
    add_class(bed, "gold", iops="3000")
    return bed


async def test_modify_applies_the_class_then_records_it(cluster: Cluster) -> None:
    controller, service = make(cluster)
    await controller.sync(KEY)
    (request,) = service.requests
    assert request.volume_id == "vol-1"
    assert dict(request.mutable_parameters) == {"iops": "3000"}
    assert cluster.pv()["spec"]["volumeAttributesClassName"] == "gold"
    status = cluster.pvc()["status"]
    assert status["currentVolumeAttributesClassName"] == "gold"
    assert "modifyVolumeStatus" not in status and "conditions" not in status
    assert cluster.recorder.events[0][:3] == (
        "Normal",
        "VolumeModify",
        "external resizer is modifying volume data with vac gold",
    )
    assert cluster.recorder.events[1][:3] == (
        "Normal",
        "VolumeModifySuccessful",
        "external resizer modified volume data with vac gold successfully",
    )
    # InProgress was written first, with a resourceVersion precondition; then the PV, then the PVC.
    first = cluster.kube.patches[0]
    assert first.body["metadata"]["resourceVersion"]
    assert first.body["status"]["modifyVolumeStatus"] == {
        "status": "InProgress",
        "targetVolumeAttributesClassName": "gold",
    }
    (modifying,) = first.body["status"]["conditions"]
    assert (
        modifying["type"] == "ModifyingVolume"
        and modifying["message"] == 'Modifying volume to "gold" is in progress.'
    )
    assert [p.resource for p in cluster.kube.patches] == [
        "persistentvolumeclaims",
        "persistentvolumes",
        "persistentvolumeclaims",
    ]
    await controller.sync(KEY)  # reached the target: nothing more
    assert len(service.requests) == 1


async def test_extra_metadata_and_modify_secret(cluster: Cluster) -> None:
    secret = {
        "metadata": {"name": "modify-secret", "namespace": "default"},
        "data": {"key": base64.b64encode(b"s3cr3t").decode()},
    }
    cluster.kube.put(SECRETS, secret)
    pv = volume("1Gi")
    pv["metadata"]["annotations"] = {
        v.ANN_MODIFY_SECRET_NAME: "modify-secret",
        v.ANN_MODIFY_SECRET_NAMESPACE: "default",
    }
    cluster.add(PERSISTENT_VOLUMES, pv)
    controller, service = make(cluster, extra_modify_metadata=True)
    await controller.sync(KEY)
    (request,) = service.requests
    assert dict(request.secrets) == {"key": "s3cr3t"}
    assert dict(request.mutable_parameters) == {
        "iops": "3000",
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "default",
        "csi.storage.k8s.io/pv/name": "pv-1",
    }


async def test_missing_class_is_pending_until_it_appears(cluster: Cluster) -> None:
    cluster.edit_claim(volumeAttributesClassName="silver")
    controller, service = make(cluster)
    await controller.sync(KEY)
    assert service.requests == []
    status = cluster.pvc()["status"]
    assert status["modifyVolumeStatus"] == {"status": "Pending", "targetVolumeAttributesClassName": "silver"}
    assert "conditions" not in status
    assert cluster.recorder.events[-1][:3] == (
        "Warning",
        "VolumeModifyFailed",
        'VAC "silver" does not exist.',
    )
    add_class(cluster, "silver", tier="silver")
    controller._on_class_added({"metadata": {"name": "silver"}})
    assert controller.queue.len() == 1
    await controller.sync(KEY)
    assert cluster.pvc()["status"]["currentVolumeAttributesClassName"] == "silver"


async def test_invalid_argument_is_infeasible_and_retried_slowly(cluster: Cluster) -> None:
    controller, service = make(cluster)
    service.script.append(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "iops too high"))
    with pytest.raises(ModifyError, match="rpc error: code = InvalidArgument desc = iops too high"):
        await controller.sync(KEY)
    status = cluster.pvc()["status"]
    assert status["modifyVolumeStatus"] == {"status": "Infeasible", "targetVolumeAttributesClassName": "gold"}
    modifying, error = status["conditions"]
    assert modifying["message"] == 'Modifying volume to "gold" failed. Waiting for retry.'
    assert (error["type"], error["reason"], error["message"]) == (
        "ModifyVolumeError",
        "InvalidArgument",
        "iops too high",
    )
    assert cluster.recorder.events[-1][:2] == ("Warning", "VolumeModifyFailed")
    with pytest.raises(Requeue) as slow:
        await controller.sync(KEY)
    assert 299 < slow.value.after <= 300
    add_class(cluster, "silver")
    cluster.edit_claim(volumeAttributesClassName="silver")  # a new target may be feasible: at once
    await controller.sync(KEY)
    assert [r.mutable_parameters.get("iops") for r in service.requests] == ["3000", None]
    status = cluster.pvc()["status"]
    assert status["currentVolumeAttributesClassName"] == "silver" and "conditions" not in status


async def test_uncertain_error_keeps_the_old_target(cluster: Cluster) -> None:
    controller, service = make(cluster)
    service.script.append(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "driver restarting"))
    with pytest.raises(ModifyError, match="Still modifying to VAC gold"):
        await controller.sync(KEY)
    status = cluster.pvc()["status"]
    assert status["modifyVolumeStatus"]["status"] == "InProgress"
    assert status["conditions"][0]["message"] == 'Modifying volume to "gold" is still in progress.'
    assert status["conditions"][1]["reason"] == "Unavailable"
    add_class(cluster, "silver")
    cluster.edit_claim(volumeAttributesClassName="silver")
    await controller.sync(KEY)  # finishes gold first
    assert cluster.pvc()["status"]["currentVolumeAttributesClassName"] == "gold"
    await controller.sync(KEY)  # then silver
    assert cluster.pvc()["status"]["currentVolumeAttributesClassName"] == "silver"
    assert cluster.pv()["spec"]["volumeAttributesClassName"] == "silver"


async def test_in_progress_claims_are_uncertain_after_a_restart(cluster: Cluster) -> None:
    pvc = cluster.pvc()
    pvc["status"]["modifyVolumeStatus"] = {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}
    cluster.add(PERSISTENT_VOLUME_CLAIMS, pvc)
    add_class(cluster, "silver")
    cluster.edit_claim(volumeAttributesClassName="silver")
    controller, service = make(cluster)
    controller.init_uncertain()
    await controller.sync(KEY)
    assert service.requests[0].mutable_parameters["iops"] == "3000"  # gold, the interrupted target


async def test_rollback_to_no_class_cancels(cluster: Cluster) -> None:
    pvc = cluster.pvc()
    pvc["status"]["modifyVolumeStatus"] = {"status": "Infeasible", "targetVolumeAttributesClassName": "gold"}
    pvc["status"]["conditions"] = [{"type": "ModifyingVolume", "status": "True", "message": "x"}]
    cluster.add(PERSISTENT_VOLUME_CLAIMS, pvc)
    cluster.edit_claim(volumeAttributesClassName=None)
    controller, service = make(cluster)
    await controller.sync(KEY)
    assert service.requests == []
    assert "conditions" not in cluster.pvc()["status"]
    assert cluster.recorder.events[-1][:3] == ("Normal", "VolumeModifyCanceled", "Cancelled modify.")


async def test_other_drivers_and_unbound_claims_are_ignored(cluster: Cluster) -> None:
    cluster.add(PERSISTENT_VOLUMES, volume("1Gi", driver="other.example.com"))
    controller, service = make(cluster)
    await controller.sync(KEY)
    cluster.add(PERSISTENT_VOLUMES, volume("1Gi"))
    pvc = cluster.pvc()
    pvc["status"]["phase"] = "Pending"
    cluster.add(PERSISTENT_VOLUME_CLAIMS, pvc)
    await controller.sync(KEY)
    assert service.requests == [] and cluster.kube.patches == []


async def test_update_filter(cluster: Cluster) -> None:
    controller, _ = make(cluster)
    assert controller.queue.len() == 1  # claims already cached are replayed as adds
    pvc = claim("1Gi", volume="pv-2")
    pvc["metadata"].update(name="other", resourceVersion="1")
    pvc["spec"]["volumeAttributesClassName"] = "gold"
    newer = {**pvc, "metadata": {**pvc["metadata"], "resourceVersion": "2"}}
    controller._on_update(pvc, newer)  # no modifyVolumeStatus yet: look
    assert controller.queue.len() == 2
    status = {"status": "InProgress", "targetVolumeAttributesClassName": "gold"}
    busy = {**pvc, "status": {**pvc["status"], "modifyVolumeStatus": status}}
    busy_newer = {**busy, "metadata": {**busy["metadata"], "resourceVersion": "3"}}
    fresh, _ = make(Cluster())
    fresh._on_update(busy, busy_newer)  # an in-flight modification's status changed: not queued
    assert fresh.queue.len() == 0
    fresh._on_update(busy, {**busy_newer, "spec": {**busy["spec"], "volumeAttributesClassName": "silver"}})
    assert fresh.queue.len() == 1
    fresh._on_update(busy, busy)  # a resync
    unbound = {**busy_newer, "status": {"phase": "Pending"}}
    fresh._on_update(busy, unbound)
    assert fresh.queue.len() == 1
