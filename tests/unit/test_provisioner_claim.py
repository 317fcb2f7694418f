"""The claim controller's sync with fakes: which calls and events each kind of claim leads to."""

from __future__ import annotations

import copy
from typing import Any

import grpc
import pytest
from test_provisioner_provision import DRIVER, UID, FakeController, rpc_error

from common.controller import Requeue
from common.kube.client import ApiError
from common.kube.informer import InformerFactory
from common.metrics import Metrics
from common.runtime import StandardConfig
from sidecars.provisioner import names
from sidecars.provisioner.claim import ClaimController
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.intent import Intent
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings


class FakeKube:
    """Records writes; `create_errors` fail the next PV creates."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str, Any]] = []
        self.create_errors: list[ApiError] = []

    async def create(self, resource: Any, obj: dict[str, Any]) -> dict[str, Any]:
        self.writes.append(("create", resource.plural, obj["metadata"]["name"]))
        if self.create_errors:
            raise self.create_errors.pop(0)
        return obj

    async def update(self, resource: Any, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.writes.append(("update", resource.plural, copy.deepcopy(obj)))
        return obj


class Events:
    def __init__(self) -> None:
        self.recorded: list[tuple[str, str, str]] = []

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        self.recorded.append((event_type, reason, message))


def make(
    *, topology: bool = False, retry_max: float = 300.0
) -> tuple[ClaimController, FakeController, FakeKube, Events, Metrics]:
    controller, kube, events, metrics = FakeController(), FakeKube(), Events(), Metrics()
    config = ProvisionerConfig(standard=StandardConfig(), retry_interval_max=retry_max, worker_threads=1)
    plugin = {"CONTROLLER_SERVICE"} | ({"VOLUME_ACCESSIBILITY_CONSTRAINTS"} if topology else set())
    driver = Driver(name=DRIVER, plugin_capabilities=frozenset(plugin))
    view = NodeView(
        {"n1": {"spec": {"drivers": [{"name": DRIVER, "topologyKeys": ["zone"]}]}}},
        {"n1": {"metadata": {"name": "n1", "labels": {"zone": "a"}}}},
    )
    cache = TopologyCache()
    builder = RequestBuilder(config=config, driver=driver, kube=kube, nodes=view, topology_cache=cache)  # type: ignore[arg-type]
    settings = PVSettings(driver=DRIVER, identity="1-2-" + DRIVER, topology=topology)
    provisioner = Provisioner(
        controller=controller, builder=builder, settings=settings, timeout=1.0, topology_cache=cache
    )
    intent = Intent(kube=kube, provisioner=provisioner, enabled=True)  # type: ignore[arg-type]
    claims = ClaimController(
        config=config,
        provisioner=provisioner,
        intent=intent,
        factory=InformerFactory(kube),  # type: ignore[arg-type]
        recorder=events,  # type: ignore[arg-type]
        metrics=metrics,
    )
    claims.classes.store.put(
        {"metadata": {"name": "sc", "uid": "sc-uid"}, "provisioner": DRIVER, "reclaimPolicy": "Delete"}
    )
    claims.classes.store.put(
        {
            "metadata": {"name": "late", "uid": "late-uid"},
            "provisioner": DRIVER,
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    )
    return claims, controller, kube, events, metrics


def pvc(*, sc: str = "sc", annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "data",
            "namespace": "default",
            "uid": UID,
            "resourceVersion": "5",
            "annotations": {names.ANN_STORAGE_PROVISIONER: DRIVER, **(annotations or {})},
            **meta,
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": sc,
        },
    }


def reasons(events: Events) -> list[str]:
    return [reason for _, reason, _ in events.recorded]


async def test_provisioned_claim_writes_intent_pv_and_events_in_order() -> None:
    claims, controller, kube, events, metrics = make()
    claims.claims.store.put(pvc())
    await claims.sync(UID)
    assert [w[0:2] for w in kube.writes] == [
        ("update", "persistentvolumeclaims"),  # intent recorded before CreateVolume
        ("create", "persistentvolumes"),
        ("update", "persistentvolumeclaims"),  # intent cleared once saved
    ]
    assert len(controller.requests["CreateVolume"]) == 1
    assert reasons(events) == ["Provisioning", "ProvisioningSucceeded"]
    assert events.recorded[1][2] == f"Successfully provisioned volume pvc-{UID}"
    text = metrics.render()[0].decode()
    assert 'controller_persistentvolumeclaim_provision_total{class="sc",source=""} 1' in text
    # The update our own patch causes finds the claim provisioned: nothing more is done.
    claims.claims.store.put(pvc(finalizers=[names.INTENT_FINALIZER]))
    await claims.sync(UID)
    assert len(kube.writes) == 3 and len(controller.requests["CreateVolume"]) == 1


async def test_claims_that_are_not_ours_or_not_ready_are_left_alone() -> None:
    claims, controller, kube, events, _ = make()
    for claim in (
        pvc(annotations={names.ANN_STORAGE_PROVISIONER: "other.driver"}),
        pvc(sc="late"),  # WaitForFirstConsumer without a selected node
    ):
        claims.claims.store.put(claim)
        await claims.sync(UID)
    bound = pvc()
    bound["spec"]["volumeName"] = "pv-x"
    claims.claims.store.put(bound)
    await claims.sync(UID)
    assert not kube.writes and not events.recorded and not controller.requests["CreateVolume"]


async def test_missing_storage_class_is_an_error_retried() -> None:
    claims, *_ = make()
    claims.claims.store.put(pvc(sc="nope"))
    with pytest.raises(Exception, match='storageClass "nope" not found'):
        await claims.sync(UID)


async def test_infeasible_claim_waits_for_retry_interval_max() -> None:
    claims, controller, _, events, _ = make(retry_max=120.0)
    controller.answers["CreateVolume"].append(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad tier"))
    claims.claims.store.put(pvc())
    with pytest.raises(Exception, match="bad tier"):
        await claims.sync(UID)
    assert events.recorded[-1] == (
        "Warning",
        "ProvisioningFailed",
        "Volume provisioning failed with infeasible error. Retries will be delayed. "
        "rpc error: code = InvalidArgument desc = bad tier",
    )
    with pytest.raises(Requeue) as requeue:
        await claims.sync(UID)
    assert 119.0 < requeue.value.after <= 120.0
    assert len(controller.requests["CreateVolume"]) == 1
    # A new StorageClass (another UID) lifts the delay at once.
    claims.classes.store.put({"metadata": {"name": "sc", "uid": "sc-uid-2"}, "provisioner": DRIVER})
    await claims.sync(UID)
    assert len(controller.requests["CreateVolume"]) == 2


async def test_resource_exhausted_on_the_selected_node_asks_for_a_reschedule() -> None:
    claims, controller, kube, events, _ = make(topology=True)
    controller.answers["CreateVolume"].append(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))
    claims.claims.store.put(pvc(sc="late", annotations={names.ANN_SELECTED_NODE: "n1"}))
    await claims.sync(UID)  # no error: the scheduler takes it from here
    intent, reschedule = [w[2]["metadata"] for w in kube.writes if w[0] == "update"]
    assert (
        intent["finalizers"] == [names.INTENT_FINALIZER] and names.ANN_SELECTED_NODE in intent["annotations"]
    )
    assert names.ANN_SELECTED_NODE not in reschedule["annotations"]
    assert events.recorded[-1] == (
        "Warning",
        "ProvisioningFailed",
        "rpc error: code = ResourceExhausted desc = full",
    )
    assert UID not in claims.in_progress


async def test_timeout_keeps_the_claim_in_progress_even_after_it_is_deleted() -> None:
    claims, controller, _, _, _ = make()
    claims.intent.enabled = False
    controller.answers["CreateVolume"].append(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    claims.claims.store.put(pvc())
    with pytest.raises(Exception, match="DeadlineExceeded"):
        await claims.sync(UID)
    assert UID in claims.in_progress
    claims.claims.store.remove("default/data")  # the PVC is gone; the in-memory copy is used
    await claims.sync(UID)
    assert len(controller.requests["CreateVolume"]) == 2 and UID not in claims.in_progress


async def test_unsaved_pv_is_retried_by_the_store_not_provisioned_again() -> None:
    claims, controller, kube, _, _ = make()
    kube.create_errors.append(ApiError(409, "Conflict", "the object has been modified"))
    claims.claims.store.put(pvc())
    await claims.sync(UID)
    assert claims.store.pending(f"pvc-{UID}")
    await claims.sync(UID)  # e.g. the update caused by our intent patch
    assert len(controller.requests["CreateVolume"]) == 1
    await claims.store._save(f"pvc-{UID}")  # the unsavedpvs worker
    assert not claims.store.pending(f"pvc-{UID}")
    assert [w[0:2] for w in kube.writes].count(("create", "persistentvolumes")) == 2


async def test_deleted_claim_with_intent_and_no_pv_has_its_volume_deleted() -> None:
    claims, controller, kube, _, _ = make()
    claims.claims.store.put(
        pvc(finalizers=[names.INTENT_FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z")
    )
    await claims.sync(UID)
    assert [r.name for r in controller.requests["CreateVolume"]] == [f"pvc-{UID}"]
    assert [r.volume_id for r in controller.requests["DeleteVolume"]] == ["v-1"]
    assert kube.writes[-1][0:2] == ("update", "persistentvolumeclaims")
    assert not [w for w in kube.writes if w[1] == "persistentvolumes"]  # no PV for a deleted claim
