"""csi-resizer's claim logic: expandAndRecover's size choice (every branch) and the status edits."""

from __future__ import annotations

from typing import Any

import pytest

from sidecars.resizer import claims as c

Plan, Action = c.Plan, c.Action


def make_pvc(
    request: str = "2Gi",
    capacity: str | None = "1Gi",
    *,
    allocated: str | None = None,
    status: str = "",
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Bound",
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    pvc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "default", "uid": "uid-1", "resourceVersion": "10"},
        "spec": {"resources": {"requests": {"storage": request}}, "volumeName": "pv-1"},
        "status": {"phase": phase},
    }
    if annotations:
        pvc["metadata"]["annotations"] = annotations
    if capacity is not None:
        pvc["status"]["capacity"] = {"storage": capacity}
    if allocated is not None:
        pvc["status"]["allocatedResources"] = {"storage": allocated}
    if status:
        pvc["status"]["allocatedResourceStatuses"] = {"storage": status}
    if conditions:
        pvc["status"]["conditions"] = conditions
    return pvc


def make_pv(capacity: str = "1Gi") -> dict[str, Any]:
    return {
        "metadata": {"name": "pv-1"},
        "spec": {
            "capacity": {"storage": capacity},
            "claimRef": {"namespace": "default", "name": "data", "uid": "uid-1"},
            "csi": {"driver": "hostpath.csi.k8s.io", "volumeHandle": "vol-1"},
        },
    }


def plan(pvc: dict[str, Any], pv: dict[str, Any], **kw: bool) -> Plan:
    options = {"final_error": False, "in_slow_set": False, "controller_expansion": True, **kw}
    return c.plan_expansion(pvc, pv, **options)


EXPAND_2G = Plan(Action.EXPAND, "2Gi", update_status=True)

# (name, pvc, pv capacity, options, expected plan)
PLANS = [
    ("fresh request: the spec", make_pvc(), "1Gi", {}, EXPAND_2G),
    (
        "node infeasible, pv smaller: the allocated size",
        make_pvc("3Gi", allocated="2Gi", status=c.NODE_RESIZE_INFEASIBLE),
        "1Gi",
        {},
        Plan(Action.EXPAND, "2Gi", update_status=False),
    ),
    (
        "node pending, pv already at allocated: wait for the node",
        make_pvc("3Gi", allocated="2Gi", status=c.NODE_RESIZE_PENDING),
        "2Gi",
        {},
        Plan(Action.SKIP),
    ),
    (
        "node in progress, pv below allocated: expand to allocated",
        make_pvc("3Gi", allocated="2Gi", status=c.NODE_RESIZE_IN_PROGRESS),
        "1Gi",
        {},
        Plan(Action.EXPAND, "2Gi", update_status=False),
    ),
    (
        "controller in progress after an uncertain error: same size again",
        make_pvc("2Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_IN_PROGRESS),
        "1Gi",
        {},
        Plan(Action.EXPAND, "10Gi", update_status=False),
    ),
    (
        "controller in progress after a final error: the (lowered) spec",
        make_pvc("2Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_IN_PROGRESS),
        "1Gi",
        {"final_error": True},
        EXPAND_2G,
    ),
    (
        "controller infeasible, request lowered: the spec (recovery)",
        make_pvc("2Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_INFEASIBLE),
        "1Gi",
        {"in_slow_set": True},
        EXPAND_2G,
    ),
    (
        "controller infeasible, same request, in the slow set: delay",
        make_pvc("10Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_INFEASIBLE),
        "1Gi",
        {"in_slow_set": True},
        Plan(Action.DELAY, "10Gi", update_status=False),
    ),
    (
        "controller infeasible, same request, slow time over: retry keeping the status",
        make_pvc("10Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_INFEASIBLE),
        "1Gi",
        {},
        Plan(Action.EXPAND, "10Gi", update_status=False),
    ),
    (
        "pv big enough, node pending: nothing (spurious event)",
        make_pvc(allocated="2Gi", status=c.NODE_RESIZE_PENDING),
        "2Gi",
        {},
        Plan(Action.SKIP),
    ),
    (
        "pv big enough, node in progress: nothing",
        make_pvc(allocated="2Gi", status=c.NODE_RESIZE_IN_PROGRESS),
        "2Gi",
        {},
        Plan(Action.SKIP),
    ),
    (
        "pv big enough, node infeasible, controller driver: allocated",
        make_pvc("2Gi", allocated="3Gi", status=c.NODE_RESIZE_INFEASIBLE),
        "3Gi",
        {},
        Plan(Action.EXPAND, "3Gi", update_status=False),
    ),
    (
        "pv big enough, node infeasible, trivial resizer: the spec",
        make_pvc("2Gi", allocated="3Gi", status=c.NODE_RESIZE_INFEASIBLE),
        "3Gi",
        {"controller_expansion": False},
        EXPAND_2G,
    ),
    (
        "pv big enough, controller in progress (status not recorded): allocated",
        make_pvc(allocated="2Gi", status=c.CONTROLLER_RESIZE_IN_PROGRESS),
        "2Gi",
        {},
        Plan(Action.EXPAND, "2Gi", update_status=False),
    ),
    (
        "pv big enough, no status but allocated: allocated",
        make_pvc(allocated="2Gi"),
        "2Gi",
        {},
        Plan(Action.EXPAND, "2Gi", update_status=False),
    ),
    (
        "old API server (no status), FileSystemResizePending: kubelet's turn",
        make_pvc(conditions=[c.condition(c.FS_RESIZE_PENDING)]),
        "2Gi",
        {},
        Plan(Action.SKIP),
    ),
    ("old API server (no status), no condition: the spec", make_pvc(), "2Gi", {}, EXPAND_2G),
    (
        "sizes compare as quantities, not strings",
        make_pvc("2048Mi", allocated="2Gi", status=c.NODE_RESIZE_PENDING),
        "2Gi",
        {},
        Plan(Action.SKIP),
    ),
]


@pytest.mark.parametrize(
    ("pvc", "pv_capacity", "options", "expected"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS]
)
def test_plan_expansion(
    pvc: dict[str, Any], pv_capacity: str, options: dict[str, bool], expected: Plan
) -> None:
    assert plan(pvc, make_pv(pv_capacity), **options) == expected


@pytest.mark.parametrize(
    ("request_", "capacity", "phase", "volume", "needed"),
    [
        ("2Gi", "1Gi", "Bound", "pv-1", True),
        ("1Gi", "1Gi", "Bound", "pv-1", False),
        ("1024Mi", "1Gi", "Bound", "pv-1", False),
        ("1.5Gi", "1536Mi", "Bound", "pv-1", False),
        ("1G", "1Gi", "Bound", "pv-1", False),  # 10^9 < 2^30
        ("2Gi", None, "Bound", "pv-1", True),
        ("2Gi", "1Gi", "Pending", "pv-1", False),
        ("2Gi", "1Gi", "Bound", "", False),
    ],
)
def test_needs_resize(request_: str, capacity: str | None, phase: str, volume: str, needed: bool) -> None:
    pvc = make_pvc(request_, capacity, phase=phase)
    pvc["spec"]["volumeName"] = volume
    assert c.needs_resize(pvc) is needed


def test_bound_to_checks_namespace_and_uid() -> None:
    pvc, pv = make_pvc(), make_pv()
    assert c.bound_to(pv, pvc)
    pv["spec"]["claimRef"]["uid"] = "other"
    assert not c.bound_to(pv, pvc)
    del pv["spec"]["claimRef"]
    assert not c.bound_to(pv, pvc)


def test_merge_resize_conditions_keeps_foreign_and_orders_new_last() -> None:
    foreign = {"type": "ModifyingVolume", "status": "True"}
    old = [
        c.condition(c.RESIZING, timestamp="t0"),
        foreign,
        c.condition(c.CONTROLLER_RESIZE_ERROR, timestamp="t0"),
    ]
    new = [c.condition(c.FS_RESIZE_PENDING, timestamp="t1")]
    kept = c.merge_resize_conditions(old, new, keep_old=True)
    assert [x["type"] for x in kept] == [
        c.RESIZING,
        "ModifyingVolume",
        c.CONTROLLER_RESIZE_ERROR,
        c.FS_RESIZE_PENDING,
    ]
    dropped = c.merge_resize_conditions(old, new, keep_old=False)
    assert [x["type"] for x in dropped] == ["ModifyingVolume", c.FS_RESIZE_PENDING]
    replaced = c.merge_resize_conditions(old, [c.condition(c.RESIZING, timestamp="t2")], keep_old=False)
    assert replaced == [c.condition(c.RESIZING, timestamp="t2"), foreign]


def test_in_progress_then_pending_matches_golden_06_shape() -> None:
    """Golden 06: Resizing then FileSystemResizePending, allocated 2Gi, NodeResizePending."""
    pvc = make_pvc(annotations={c.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"})
    marked = c.mark_controller_resize_in_progress(pvc, "2Gi", update_status=True)
    assert marked["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert marked["status"]["allocatedResourceStatuses"] == {"storage": c.CONTROLLER_RESIZE_IN_PROGRESS}
    assert "annotations" not in marked["metadata"]
    pending = c.mark_pending_node_expansion(marked)
    status = pending["status"]
    assert status["allocatedResourceStatuses"] == {"storage": "NodeResizePending"}
    assert [x["type"] for x in status["conditions"]] == ["Resizing", "FileSystemResizePending"]
    assert status["conditions"][0]["lastProbeTime"] is None and "message" not in status["conditions"][0]
    assert status["conditions"][1]["message"] == (
        "Waiting for user to (re-)start a pod to finish file system resize of volume on node."
    )
    assert status["capacity"] == {"storage": "1Gi"}
    assert (
        pvc["status"] == make_pvc(annotations={c.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"})["status"]
    )  # no mutation


def test_in_progress_without_status_update_keeps_old_conditions() -> None:
    error = c.condition(c.CONTROLLER_RESIZE_ERROR, message="failed to expand pvc with x", timestamp="t0")
    pvc = make_pvc("10Gi", allocated="10Gi", status=c.CONTROLLER_RESIZE_INFEASIBLE, conditions=[error])
    marked = c.mark_controller_resize_in_progress(pvc, "10Gi", update_status=False)
    assert marked["status"]["allocatedResourceStatuses"] == {"storage": c.CONTROLLER_RESIZE_INFEASIBLE}
    assert [x["type"] for x in marked["status"]["conditions"]] == [c.CONTROLLER_RESIZE_ERROR, c.RESIZING]


def test_expansion_failed_infeasible_and_final() -> None:
    pvc = c.mark_controller_resize_in_progress(make_pvc("10Gi"), "10Gi", update_status=True)
    infeasible = c.mark_controller_expansion_failed(
        pvc, "rpc error: code = OutOfRange desc = too big", infeasible=True
    )
    assert infeasible["status"]["allocatedResourceStatuses"] == {"storage": c.CONTROLLER_RESIZE_INFEASIBLE}
    error = infeasible["status"]["conditions"][-1]
    assert error["type"] == c.CONTROLLER_RESIZE_ERROR
    assert error["message"] == "failed to expand pvc with rpc error: code = OutOfRange desc = too big"
    final = c.mark_controller_expansion_failed(pvc, "boom", infeasible=False)
    assert final["status"]["allocatedResourceStatuses"] == {"storage": c.CONTROLLER_RESIZE_IN_PROGRESS}
    assert [x["type"] for x in final["status"]["conditions"]] == [c.RESIZING, c.CONTROLLER_RESIZE_ERROR]


def test_expansion_finished_clears_and_annotates() -> None:
    pvc = c.mark_controller_resize_in_progress(make_pvc("1.5Gi"), "1.5Gi", update_status=True)
    done = c.mark_expansion_finished(pvc, "1536Mi")
    assert done["status"]["capacity"] == {"storage": "1536Mi"}
    assert "conditions" not in done["status"]
    assert "allocatedResourceStatuses" not in done["status"]
    assert done["status"]["allocatedResources"] == {"storage": "1536Mi"}  # canonical form of 1.5Gi
    assert done["metadata"]["annotations"] == {c.ANN_NODE_EXPANSION_NOT_REQUIRED: "true"}


def test_pv_capacity_and_pre_resize_annotation() -> None:
    pv = make_pv("1Gi")
    grown = c.with_pv_capacity(pv, "2Gi", pre_resize="1Gi")
    assert grown["spec"]["capacity"] == {"storage": "2Gi"}
    assert grown["metadata"]["annotations"] == {c.ANN_PRE_RESIZE_CAPACITY: "1Gi"}
    again = c.with_pv_capacity(grown, "3Gi", pre_resize="2Gi")  # an annotation present is kept
    assert again["metadata"]["annotations"] == {c.ANN_PRE_RESIZE_CAPACITY: "1Gi"}
    assert "annotations" not in c.with_pv_capacity(pv, "2Gi", pre_resize=None)["metadata"]
    assert "annotations" not in c.without_pre_resize_annotation(grown)["metadata"]
    assert c.node_expand_complete(make_pvc(capacity="2Gi"), grown)
    assert not c.node_expand_complete(make_pvc(capacity="1Gi"), grown)


def test_legacy_edits() -> None:
    pvc = c.mark_legacy_resizing(make_pvc())
    assert [x["type"] for x in pvc["status"]["conditions"]] == [c.RESIZING]
    assert "allocatedResources" not in pvc["status"]
    pending = c.mark_legacy_fs_resize_required(pvc)
    assert [x["type"] for x in pending["status"]["conditions"]] == [c.FS_RESIZE_PENDING]
    done = c.mark_legacy_finished(pvc, "2Gi")
    assert done["status"]["capacity"] == {"storage": "2Gi"} and "conditions" not in done["status"]
    assert "annotations" not in done["metadata"]
