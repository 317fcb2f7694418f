"""Provision, abandon and delete decisions with a fake driver: states, cleanup calls and event texts."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest

from common.runtime import StandardConfig
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.cli import ProvisionerConfig
from sidecars.provisioner.deleter import VolumeController, should_delete
from sidecars.provisioner.intent import Intent
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.request import Driver, RequestBuilder
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.topology import NodeView, TopologyCache
from sidecars.provisioner.volume import PVSettings

DRIVER = "hostpath.csi.k8s.io"
UID = "0f0e0d0c-0b0a-0908-0706-050403020100"
GiB = 2**30


def rpc_error(code: grpc.StatusCode, details: str = "boom") -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeController:
    """csi.v1.Controller: answers (or errors) queued per method, records every request."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Any]] = {"CreateVolume": [], "DeleteVolume": []}
        self.requests: dict[str, list[Any]] = {"CreateVolume": [], "DeleteVolume": []}

    async def _call(self, method: str, request: Any) -> Any:
        self.requests[method].append(request)
        answer = self.answers[method].pop(0) if self.answers[method] else None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def CreateVolume(self, request: Any, *, timeout: float) -> Any:
        return await self._call("CreateVolume", request) or csi_pb2.CreateVolumeResponse(
            volume=csi_pb2.Volume(volume_id="v-1", capacity_bytes=request.capacity_range.required_bytes)
        )

    async def DeleteVolume(self, request: Any, *, timeout: float) -> Any:
        return await self._call("DeleteVolume", request) or csi_pb2.DeleteVolumeResponse()


class FakeKube:
    """Only what the intent needs: updates of claims (their finalizers)."""

    def __init__(self) -> None:
        self.updates: list[list[str]] = []

    async def update(self, resource: Any, obj: dict[str, Any], **kw: Any) -> dict[str, Any]:
        assert resource.plural == "persistentvolumeclaims" and obj["metadata"]["resourceVersion"]
        self.updates.append(list(obj["metadata"].get("finalizers") or []))
        return obj


def claim(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "data",
            "namespace": "default",
            "uid": UID,
            "resourceVersion": "7",
            "annotations": {names.ANN_STORAGE_PROVISIONER: DRIVER},
            **meta,
        },
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


SC = {"metadata": {"name": "sc", "uid": "sc-1"}, "provisioner": DRIVER, "reclaimPolicy": "Delete"}


def provisioner(controller: FakeController, *, topology: bool = False) -> Provisioner:
    plugin = {"CONTROLLER_SERVICE"} | ({"VOLUME_ACCESSIBILITY_CONSTRAINTS"} if topology else set())
    driver = Driver(name=DRIVER, plugin_capabilities=frozenset(plugin))
    view = NodeView(
        {"n1": {"spec": {"drivers": [{"name": DRIVER, "topologyKeys": ["zone"]}]}}},
        {"n1": {"metadata": {"name": "n1", "labels": {"zone": "a"}}}},
    )
    cache = TopologyCache()
    builder = RequestBuilder(
        config=ProvisionerConfig(standard=StandardConfig()),
        driver=driver,
        kube=None,  # type: ignore[arg-type]  # no secrets in these classes
        nodes=view,
        topology_cache=cache,
    )
    settings = PVSettings(driver=DRIVER, identity="1-2-" + DRIVER, topology=topology)
    return Provisioner(
        controller=controller, builder=builder, settings=settings, timeout=1.0, topology_cache=cache
    )


async def test_success_builds_the_pv_and_records_the_intent_first() -> None:
    controller = FakeController()
    order: list[str] = []

    async def before_create(c: dict[str, Any]) -> dict[str, Any]:
        order.append("intent")
        assert not controller.requests["CreateVolume"]
        return {**c, "recorded": True}

    pv, latest = await provisioner(controller).provision(claim(), SC, "", before_create=before_create)
    assert order == ["intent"] and latest["recorded"]
    assert pv["metadata"]["name"] == f"pvc-{UID}" and pv["spec"]["csi"]["volumeHandle"] == "v-1"


async def test_claim_for_another_driver_is_ignored() -> None:
    with pytest.raises(IgnoredClaim, match="does not match provisioner driver name"):
        await provisioner(FakeController()).provision(
            claim(annotations={names.ANN_STORAGE_PROVISIONER: "other"}), SC, ""
        )


@pytest.mark.parametrize(
    ("code", "node", "state", "infeasible"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", ProvisioningState.IN_BACKGROUND, False),
        (grpc.StatusCode.UNAVAILABLE, "", ProvisioningState.IN_BACKGROUND, False),
        (grpc.StatusCode.ABORTED, "", ProvisioningState.IN_BACKGROUND, False),
        (grpc.StatusCode.CANCELLED, "", ProvisioningState.IN_BACKGROUND, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "n1", ProvisioningState.RESCHEDULE, False),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "", ProvisioningState.FINISHED, False),
        (grpc.StatusCode.INVALID_ARGUMENT, "", ProvisioningState.FINISHED, True),
        (grpc.StatusCode.INTERNAL, "", ProvisioningState.FINISHED, False),
    ],
)
async def test_create_volume_errors_map_to_states(
    code: grpc.StatusCode, node: str, state: ProvisioningState, infeasible: bool
) -> None:
    controller = FakeController()
    controller.answers["CreateVolume"].append(rpc_error(code, "nope"))
    p = provisioner(controller, topology=True)
    with pytest.raises(ProvisionError) as err:
        await p.provision(claim(), SC, node)
    assert err.value.state is state and err.value.infeasible is infeasible
    assert str(err.value) == f"rpc error: code = {_go(code)} desc = nope"
    # the cached topology survives only while the call may still be running
    assert (UID in p.topology_cache) is (state is ProvisioningState.IN_BACKGROUND)


def _go(code: grpc.StatusCode) -> str:
    from common.csi.errors import code_name

    return code_name(code)


async def test_missing_volume_id_is_refused() -> None:
    controller = FakeController()
    controller.answers["CreateVolume"].append(
        csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(capacity_bytes=GiB))
    )
    with pytest.raises(ProvisionError, match="CSI driver returned no volume_id") as err:
        await provisioner(controller).provision(claim(), SC, "")
    assert err.value.state is ProvisioningState.FINISHED


async def test_smaller_volume_is_deleted_and_retried_in_background() -> None:
    controller = FakeController()
    small = csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(volume_id="v-small", capacity_bytes=GiB // 2))
    controller.answers["CreateVolume"].append(small)
    controller.answers["DeleteVolume"] += [rpc_error(grpc.StatusCode.UNAVAILABLE), None]
    with pytest.raises(ProvisionError) as err:
        await provisioner(controller).provision(claim(), SC, "")
    assert str(err.value) == f"created volume capacity {GiB // 2} less than requested capacity {GiB}"
    assert err.value.state is ProvisioningState.IN_BACKGROUND
    assert [r.volume_id for r in controller.requests["DeleteVolume"]] == ["v-small", "v-small"]


async def test_zero_capacity_answer_uses_the_request() -> None:
    controller = FakeController()
    controller.answers["CreateVolume"].append(
        csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(volume_id="v"))
    )
    pv, _ = await provisioner(controller).provision(claim(), SC, "")
    assert pv["spec"]["capacity"] == {"storage": "1Gi"}


def intent_for(controller: FakeController) -> tuple[Intent, FakeKube]:
    kube = FakeKube()
    return Intent(kube=kube, provisioner=provisioner(controller), enabled=True), kube  # type: ignore[arg-type]


async def test_abandon_finds_the_volume_by_name_deletes_it_then_clears_the_intent() -> None:
    controller = FakeController()
    intent, kube = intent_for(controller)
    deleted = claim(
        finalizers=["kubernetes.io/pvc-protection", names.INTENT_FINALIZER],
        deletionTimestamp="2026-01-01T00:00:00Z",
    )
    await intent.abandon(deleted, SC)
    assert [r.name for r in controller.requests["CreateVolume"]] == [f"pvc-{UID}"]
    assert [r.volume_id for r in controller.requests["DeleteVolume"]] == ["v-1"]
    assert kube.updates == [["kubernetes.io/pvc-protection"]]  # only our finalizer went


async def test_abandon_a_final_error_means_nothing_to_delete() -> None:
    controller = FakeController()
    controller.answers["CreateVolume"].append(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    intent, kube = intent_for(controller)
    await intent.abandon(claim(finalizers=[names.INTENT_FINALIZER]), SC)
    assert not controller.requests["DeleteVolume"] and kube.updates == [[]]


async def test_abandon_keeps_the_intent_while_unsure() -> None:
    controller = FakeController()
    controller.answers["CreateVolume"].append(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    intent, kube = intent_for(controller)
    with pytest.raises(ProvisionError, match="looking up volume pvc-") as err:
        await intent.abandon(claim(finalizers=[names.INTENT_FINALIZER]), SC)
    assert err.value.state is ProvisioningState.IN_BACKGROUND and not kube.updates
    with pytest.raises(
        ProvisionError, match=re.escape("remove finalizer csi-sidecars.python/provisioning-intent by hand")
    ):
        await intent.abandon(claim(finalizers=[names.INTENT_FINALIZER]), None)  # the StorageClass is gone
    assert not kube.updates


async def test_record_is_skipped_when_disabled_or_present() -> None:
    controller = FakeController()
    intent, kube = intent_for(controller)
    present = claim(finalizers=[names.INTENT_FINALIZER])
    assert await intent.record(present) is present
    intent.enabled = False
    assert await intent.record(claim()) == claim()
    assert not kube.updates


def pv(**fields: Any) -> dict[str, Any]:
    meta = {"name": "pv-1", "finalizers": fields.pop("finalizers", [names.PV_FINALIZER])}
    if "deletionTimestamp" in fields:
        meta["deletionTimestamp"] = fields.pop("deletionTimestamp")
    return {
        "metadata": {**meta, "annotations": fields.pop("annotations", {names.ANN_PROVISIONED_BY: DRIVER})},
        "spec": {"persistentVolumeReclaimPolicy": fields.pop("policy", "Delete"), **fields.pop("spec", {})},
        "status": {"phase": fields.pop("phase", "Released")},
    }


def test_should_delete() -> None:
    assert should_delete(pv())
    assert not should_delete(pv(phase="Bound"))
    assert not should_delete(pv(policy="Retain"))
    assert should_delete(pv(deletionTimestamp="x"))  # still ours to finish
    assert not should_delete(pv(deletionTimestamp="x", finalizers=["kubernetes.io/pv-protection"]))


def test_which_pvs_are_ours() -> None:
    owner = VolumeController.owns
    fake = type("F", (), {"provisioner": type("P", (), {"driver": DRIVER})()})()
    assert owner(fake, pv())  # type: ignore[arg-type]
    assert not owner(fake, pv(annotations={names.ANN_PROVISIONED_BY: "other"}))  # type: ignore[arg-type]
    migrated = {names.ANN_PROVISIONED_BY: "kubernetes.io/gce-pd", names.ANN_MIGRATED_TO: DRIVER}
    assert owner(fake, pv(annotations=migrated))  # type: ignore[arg-type]
    static = pv(annotations={}, spec={"csi": {"driver": DRIVER}})
    assert owner(fake, static)  # type: ignore[arg-type]
    assert not owner(fake, pv(annotations={}, spec={"csi": {"driver": "x"}}))  # type: ignore[arg-type]
