"""csi-resizer's resize controller against a fake API server: every path of a sync, step by step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from kit import FakeRpcError
from test_resizer_fakes import DRIVER, Cluster, claim, volume

from common.controller import Requeue
from common.kube.client import ApiError
from common.kube.events import EventRecorder
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, PODS
from common.quantity import format_quantity, to_bytes
from common.runtime import StandardConfig
from sidecars.resizer import claims as c
from sidecars.resizer.cli import ResizerConfig
from sidecars.resizer.controller import POD_PAGE_SIZE, ResizeController, should_enqueue
from sidecars.resizer.expansion import SyncError
from sidecars.resizer.inuse import slim_pod
from sidecars.resizer.resizer import TrivialResizer, is_our_volume

KEY = "default/data"


@dataclass
class FakeResizer:
    """Answers resizes from a script: a result or an exception per call, then success."""

    name: str = DRIVER
    controller_expansion: bool = True
    node_expansion: bool = False
    script: list[tuple[str, bool] | Exception] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def can_support(self, pv: dict[str, Any]) -> bool:
        return is_our_volume(pv, self.name)

    async def resize(self, pv: dict[str, Any], size: str) -> tuple[str, bool]:
        self.calls.append(size)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return format_quantity(to_bytes(size), binary=True), self.node_expansion


def make(
    cluster: Cluster, resizer: FakeResizer | None = None, **options: Any
) -> tuple[ResizeController, FakeResizer]:
    resizer = resizer or FakeResizer()
    config = ResizerConfig(standard=StandardConfig(), **{"handle_volume_inuse_error": False, **options})
    controller = ResizeController(
        config=config,
        resizer=resizer,
        factory=cluster.factory,
        recorder=cast(EventRecorder, cluster.recorder),
    )
    return controller, resizer


@pytest.fixture
def cluster() -> Cluster:
    bed = Cluster()
    bed.add(PERSISTENT_VOLUME_CLAIMS, claim("2Gi"))
    bed.add(PERSISTENT_VOLUMES, volume("1Gi"))
    return bed


def storage(obj: dict[str, Any], *path: str) -> Any:
    for part in path:
        obj = obj.get(part) or {}
    return obj.get("storage") if isinstance(obj, dict) else None


async def test_controller_only_expansion_finishes_the_claim(cluster: Cluster) -> None:
    controller, resizer = make(cluster)
    await controller.sync(KEY)
    assert resizer.calls == ["2Gi"]
    pvc, pv = cluster.pvc(), cluster.pv()
    assert storage(pv, "spec", "capacity") == "2Gi"
    assert c.ANN_PRE_RESIZE_CAPACITY not in c.annotations_of(pv)
    assert storage(pvc, "status", "capacity") == "2Gi"
    assert storage(pvc, "status", "allocatedResources") == "2Gi"
    assert "allocatedResourceStatuses" not in pvc["status"] and "conditions" not in pvc["status"]
    assert c.annotations_of(pvc) == {c.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"}
    assert cluster.recorder.reasons == ["Resizing", "VolumeResizeSuccessful"]
    assert cluster.recorder.events[0][2] == "External resizer is resizing volume pv-1"
    assert cluster.recorder.events[1][1:3] == ("VolumeResizeSuccessful", "Resize volume succeeded")
    # PVC status patches go to /status, the first one with a resourceVersion precondition.
    first = cluster.kube.patches[0]
    assert (first.resource, first.subresource) == ("persistentvolumeclaims", "status")
    assert first.body["metadata"]["resourceVersion"]
    assert [p.resource for p in cluster.kube.patches] == [
        "persistentvolumeclaims",
        "persistentvolumes",
        "persistentvolumeclaims",
    ]
    await controller.sync(KEY)  # nothing left to do
    assert resizer.calls == ["2Gi"] and len(cluster.kube.patches) == 3


async def test_node_expansion_matches_golden_06_and_07(cluster: Cluster) -> None:
    controller, resizer = make(cluster, FakeResizer(node_expansion=True))
    await controller.sync(KEY)
    pvc, pv = cluster.pvc(), cluster.pv()
    assert pv["metadata"]["annotations"] == {c.ANN_PRE_RESIZE_CAPACITY: "1Gi"}
    assert storage(pv, "spec", "capacity") == "2Gi"
    status = pvc["status"]
    assert status["allocatedResourceStatuses"] == {"storage": "NodeResizePending"}
    assert status["allocatedResources"] == {"storage": "2Gi"}
    assert status["capacity"] == {"storage": "1Gi"}
    assert [(x["type"], x["status"], x.get("message")) for x in status["conditions"]] == [
        ("Resizing", "True", None),
        ("FileSystemResizePending", "True", c.FS_RESIZE_PENDING_MESSAGE),
    ]
    assert cluster.recorder.reasons == ["Resizing", "FileSystemResizeRequired"]
    # Golden 16: both events name the claim as it was after it was marked in progress.
    assert cluster.recorder.events[0][3] == cluster.recorder.events[1][3]
    assert cluster.recorder.events[1][2] == "Require file system resize of volume on node"

    await controller.sync(KEY)  # the node's turn: nothing happens
    assert resizer.calls == ["2Gi"]

    # kubelet finishes (MarkNodeExpansionFinishedWithRecovery); the pre-resize annotation goes.
    done = cluster.pvc()
    done["status"]["capacity"] = {"storage": "2Gi"}
    del done["status"]["allocatedResourceStatuses"], done["status"]["conditions"]
    cluster.add(PERSISTENT_VOLUME_CLAIMS, done)
    await controller.sync(KEY)
    assert "annotations" not in cluster.pv()["metadata"]
    assert resizer.calls == ["2Gi"]


async def test_infeasible_then_recovery_by_lowering_the_request(cluster: Cluster) -> None:
    cluster.set_request("1000Gi")
    too_big = FakeRpcError(grpc.StatusCode.OUT_OF_RANGE, "requested capacity exceeds the maximum")
    controller, resizer = make(cluster, FakeResizer(script=[too_big, too_big]))
    with pytest.raises(SyncError) as first:
        await controller.sync(KEY)
    text = "rpc error: code = OutOfRange desc = requested capacity exceeds the maximum"
    assert str(first.value) == f'resize volume "pv-1" by resizer "{DRIVER}" failed: {text}'
    status = cluster.pvc()["status"]
    assert status["allocatedResourceStatuses"] == {"storage": "ControllerResizeInfeasible"}
    assert status["allocatedResources"] == {"storage": "1000Gi"}
    assert status["conditions"][-1]["type"] == "ControllerResizeError"
    assert status["conditions"][-1]["message"] == f"failed to expand pvc with {text}"
    assert cluster.recorder.events[-1][:3] == ("Warning", "VolumeResizeFailed", str(first.value))

    with pytest.raises(SyncError):  # one more try before the slow set kicks in
        await controller.sync(KEY)
    with pytest.raises(Requeue) as slow:
        await controller.sync(KEY)
    assert 299 < slow.value.after <= 300  # --retry-interval-max
    assert resizer.calls == ["1000Gi", "1000Gi"]

    cluster.set_request("2Gi")  # the user gives up on 1000Gi
    await controller.sync(KEY)
    assert resizer.calls[-1] == "2Gi"
    status = cluster.pvc()["status"]
    assert status["capacity"] == {"storage": "2Gi"} and status["allocatedResources"] == {"storage": "2Gi"}
    assert "allocatedResourceStatuses" not in status and "conditions" not in status
    assert storage(cluster.pv(), "spec", "capacity") == "2Gi"


async def test_transient_error_retries_the_same_size_even_if_lowered(cluster: Cluster) -> None:
    cluster.set_request("10Gi")
    unavailable = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "driver restarting")
    controller, resizer = make(cluster, FakeResizer(script=[unavailable]))
    with pytest.raises(SyncError):
        await controller.sync(KEY)
    status = cluster.pvc()["status"]
    assert status["allocatedResourceStatuses"] == {"storage": "ControllerResizeInProgress"}
    assert [x["type"] for x in status["conditions"]] == ["Resizing"]  # no error condition
    cluster.set_request("2Gi")  # the driver may still be expanding to 10Gi: not safe to lower yet
    await controller.sync(KEY)
    assert resizer.calls == ["10Gi", "10Gi"]
    assert storage(cluster.pvc(), "status", "capacity") == "10Gi"


async def test_final_error_allows_a_lowered_request(cluster: Cluster) -> None:
    cluster.set_request("10Gi")
    controller, resizer = make(cluster, FakeResizer(script=[FakeRpcError(grpc.StatusCode.INTERNAL, "boom")]))
    with pytest.raises(SyncError):
        await controller.sync(KEY)
    status = cluster.pvc()["status"]
    assert status["allocatedResourceStatuses"] == {"storage": "ControllerResizeInProgress"}
    assert status["conditions"][-1]["type"] == "ControllerResizeError"
    cluster.set_request("3Gi")
    await controller.sync(KEY)
    assert resizer.calls == ["10Gi", "3Gi"]
    assert storage(cluster.pvc(), "status", "capacity") == "3Gi"


async def test_volume_in_use_is_not_expanded_offline(cluster: Cluster) -> None:
    in_use = FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "volume is in use")
    controller, resizer = make(cluster, FakeResizer(script=[in_use]), handle_volume_inuse_error=True)
    pods = cluster.factory.informer(PODS, transform=slim_pod)
    assert pods.page_size == POD_PAGE_SIZE < 500  # listed in small pages: a whole page is parsed at once
    pod = {
        "metadata": {"name": "app", "namespace": "default", "resourceVersion": "5", "uid": "p1"},
        "spec": {
            "nodeName": "node-1",
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
        },
        "status": {"phase": "Running"},
    }
    pods.store.put(slim_pod(pod))
    with pytest.raises(SyncError):
        await controller.sync(KEY)
    with pytest.raises(SyncError) as refused:
        await controller.sync(KEY)
    message = (
        f"Unable to expand default/data because CSI driver {DRIVER} only supports offline expansion "
        "and volume is currently in-use"
    )
    assert str(refused.value) == message
    assert resizer.calls == ["2Gi"]  # not called again
    assert cluster.recorder.events[-1][:3] == ("Warning", "VolumeResizeFailed", message)
    pods.store.put(slim_pod({**pod, "status": {"phase": "Succeeded"}}))  # the pod is done
    await controller.sync(KEY)
    assert resizer.calls == ["2Gi", "2Gi"]
    assert storage(cluster.pvc(), "status", "capacity") == "2Gi"


async def test_stale_claim_is_not_expanded(cluster: Cluster) -> None:
    controller, resizer = make(cluster)
    conflict = ApiError(409, "Conflict", "the object has been modified")
    cluster.kube.failures.append(conflict)
    with pytest.raises(SyncError, match='marking pvc "default/data" as resizing failed'):
        await controller.sync(KEY)
    assert resizer.calls == []
    assert cluster.recorder.events == []


async def test_other_drivers_volumes_are_left_alone(cluster: Cluster) -> None:
    cluster.add(PERSISTENT_VOLUMES, volume("1Gi", driver="other.csi.example.com"))
    controller, resizer = make(cluster)
    await controller.sync(KEY)
    assert resizer.calls == [] and cluster.kube.patches[1:] == [] and cluster.recorder.events == []


async def test_pv_without_csi_source_named_for_us_gets_an_event(cluster: Cluster) -> None:
    pv = volume("1Gi")
    pv["spec"].pop("csi")
    pv["spec"]["hostPath"] = {"path": "/tmp/x"}
    cluster.add(PERSISTENT_VOLUMES, pv)
    pvc = cluster.pvc()
    pvc["metadata"]["annotations"] = {c.ANN_STORAGE_RESIZER: DRIVER}
    cluster.add(PERSISTENT_VOLUME_CLAIMS, pvc)
    controller, resizer = make(cluster)
    await controller.sync(KEY)
    assert resizer.calls == []
    assert cluster.recorder.events[0][:2] == ("Warning", "VolumeResizeFailed")
    assert "has no CSI source" in cluster.recorder.events[0][2]


async def test_unparsable_size_is_reported_not_retried(cluster: Cluster) -> None:
    cluster.set_request("2Gx")  # the API server would refuse it; the resizer must not crash on it
    controller, resizer = make(cluster)
    await controller.sync(KEY)  # no exception: not retried until the claim changes
    assert resizer.calls == []
    assert cluster.recorder.events[0][:2] == ("Warning", "VolumeResizeFailed")
    assert "invalid storage size" in cluster.recorder.events[0][2]


async def test_unbound_or_missing_claims_are_skipped(cluster: Cluster) -> None:
    controller, resizer = make(cluster)
    await controller.sync("default/nope")
    pv = volume("1Gi")
    pv["spec"]["claimRef"]["uid"] = "someone-else"
    cluster.add(PERSISTENT_VOLUMES, pv)
    await controller.sync(KEY)
    cluster.add(PERSISTENT_VOLUMES, volume("1Gi"))
    cluster.edit_claim(volumeName="pv-missing")
    await controller.sync(KEY)
    assert resizer.calls == []


async def test_trivial_resizer_leaves_the_file_system_to_the_node(cluster: Cluster) -> None:
    cluster.set_request("1.5Gi")
    controller, _ = make(cluster, cast(FakeResizer, TrivialResizer(name=DRIVER)))
    await controller.sync(KEY)
    pvc, pv = cluster.pvc(), cluster.pv()
    assert storage(pv, "spec", "capacity") == "1536Mi"  # the API's canonical form of 1.5Gi
    assert pvc["status"]["allocatedResourceStatuses"] == {"storage": "NodeResizePending"}
    assert cluster.recorder.reasons == ["Resizing", "FileSystemResizeRequired"]


async def test_legacy_path_without_recovery(cluster: Cluster) -> None:
    controller, resizer = make(
        cluster, FakeResizer(node_expansion=True), recover_volume_expansion_failure=False
    )
    await controller.sync(KEY)
    status = cluster.pvc()["status"]
    assert [x["type"] for x in status["conditions"]] == ["FileSystemResizePending"]
    assert "allocatedResources" not in status and "allocatedResourceStatuses" not in status
    assert storage(cluster.pv(), "spec", "capacity") == "2Gi"
    await controller.sync(KEY)  # FileSystemResizePending: kubelet's turn
    assert resizer.calls == ["2Gi"]
    failing = FakeResizer(script=[FakeRpcError(grpc.StatusCode.INTERNAL, "no")])
    cluster.set_request("3Gi")
    controller, failing = make(cluster, failing, recover_volume_expansion_failure=False)
    with pytest.raises(SyncError):
        await controller.sync(KEY)
    assert cluster.recorder.reasons[-1] == "VolumeResizeFailed"


async def test_handlers_queue_what_upstream_queues(cluster: Cluster) -> None:
    controller, _ = make(cluster)
    assert controller.queue.len() == 1  # claims already cached are replayed as adds
    other = {**claim("3Gi"), "metadata": {"name": "other", "namespace": "default", "resourceVersion": "7"}}
    controller._on_update(other, other)  # a resync
    assert controller.queue.len() == 2
    controller._on_update(other, {**other, "metadata": {**other["metadata"], "resourceVersion": "8"}})
    assert controller.queue.len() == 2  # nothing that matters changed (and it is queued already)
    controller.expander.final_errors.add("default/other")
    controller._on_delete(other)
    assert "default/other" not in controller.expander.final_errors


def _with(pvc: dict[str, Any], **edits: Any) -> dict[str, Any]:
    import copy

    new = copy.deepcopy(pvc)
    new["metadata"]["resourceVersion"] = "2"
    for path, value in edits.items():
        target = new
        *parents, leaf = path.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    return new


BASE = {**claim("2Gi"), "metadata": {"name": "data", "namespace": "default", "resourceVersion": "1"}}


@pytest.mark.parametrize(
    ("new", "recovery", "queued"),
    [
        (_with(BASE, spec__resources={"requests": {"storage": "3Gi"}}), True, True),
        (_with(BASE, spec__resources={"requests": {"storage": "1500Mi"}}), True, True),  # lowered: recovery
        (_with(BASE, spec__resources={"requests": {"storage": "1500Mi"}}), False, False),
        (_with(BASE, spec__resources={"requests": {"storage": "2048Mi"}}), True, False),  # same quantity
        (_with(BASE, metadata__annotations={c.ANN_STORAGE_RESIZER: DRIVER}), True, True),
        (_with(BASE, status__capacity={"storage": "2Gi"}), True, True),
        (_with(BASE, status__capacity={"storage": "512Mi"}), True, False),
        (_with(BASE, status__allocatedResourceStatuses={"storage": "NodeResizeInfeasible"}), True, True),
        (_with(BASE, status__allocatedResourceStatuses={"storage": "NodeResizeInfeasible"}), False, False),
        (_with(BASE, metadata__labels={"a": "b"}), True, False),
        ({**BASE}, True, True),  # same resourceVersion: a resync
    ],
)
def test_should_enqueue(new: dict[str, Any], recovery: bool, queued: bool) -> None:
    assert should_enqueue(BASE, new, recovery=recovery) is queued
