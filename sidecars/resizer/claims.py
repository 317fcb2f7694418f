"""PVC resize state: the names, readers and status edits external-resizer applies to claims and volumes.

Everything here is pure: it reads the API JSON of a PVC/PV, or returns an edited deep copy, and never
talks to the API server. The controller (`controller.py`) diffs the copy against the original into a
strategic merge patch (`patches.py`), as upstream's `util.PatchClaim` does.

Sizes stay quantity strings (`"2Gi"`) and are compared exactly with `common.quantity`; a size written
back is canonical (`"1.5Gi"` is written `"1536Mi"`, what the API server stores).

The edits mirror `pkg/controller/resize_status.go` (RecoverVolumeExpansionFailure on) and the legacy
ones of `controller.go` (gate off); `plan_expansion` is `expandAndRecover`'s choice of the size to
expand to.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from common.quantity import canonical, compare

Obj = dict[str, Any]

STORAGE = "storage"

ANN_STORAGE_RESIZER = "volume.kubernetes.io/storage-resizer"
"""PVC annotation set by kube-controller-manager naming the resizer (read for CSI migration only)."""
ANN_NODE_EXPANSION_NOT_REQUIRED = "volume.kubernetes.io/node-expansion-not-required"
"""PVC annotation: the controller expansion finished the resize, kubelet has nothing to do."""
ANN_PRE_RESIZE_CAPACITY = "volume.alpha.kubernetes.io/pre-resize-capacity"
"""PV annotation (AnnotateFsResize): the PVC's capacity before a resize that needs the node."""

RESIZING = "Resizing"
FS_RESIZE_PENDING = "FileSystemResizePending"
CONTROLLER_RESIZE_ERROR = "ControllerResizeError"
NODE_RESIZE_ERROR = "NodeResizeError"
RESIZE_CONDITIONS = frozenset({RESIZING, FS_RESIZE_PENDING, CONTROLLER_RESIZE_ERROR, NODE_RESIZE_ERROR})

CONTROLLER_RESIZE_IN_PROGRESS = "ControllerResizeInProgress"
CONTROLLER_RESIZE_INFEASIBLE = "ControllerResizeInfeasible"
NODE_RESIZE_PENDING = "NodeResizePending"
NODE_RESIZE_IN_PROGRESS = "NodeResizeInProgress"
NODE_RESIZE_INFEASIBLE = "NodeResizeInfeasible"

FS_RESIZE_PENDING_MESSAGE = (
    "Waiting for user to (re-)start a pod to finish file system resize of volume on node."
)


def now() -> str:
    """metav1.Now() as the API serializes it (RFC 3339, whole seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------- readers


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    value: Any = obj
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def key_of(pvc: Mapping[str, Any]) -> str:
    """`namespace/name` (klog.KObj)."""
    return f"{_get(pvc, 'metadata', 'namespace') or ''}/{_get(pvc, 'metadata', 'name') or ''}"


def request_size(pvc: Mapping[str, Any]) -> str | None:
    """`spec.resources.requests.storage`."""
    value = _get(pvc, "spec", "resources", "requests", STORAGE)
    return None if value is None else str(value)


def status_capacity(pvc: Mapping[str, Any]) -> str | None:
    """`status.capacity.storage`."""
    value = _get(pvc, "status", "capacity", STORAGE)
    return None if value is None else str(value)


def allocated_size(pvc: Mapping[str, Any]) -> str | None:
    """`status.allocatedResources.storage`."""
    value = _get(pvc, "status", "allocatedResources", STORAGE)
    return None if value is None else str(value)


def resize_status(pvc: Mapping[str, Any]) -> str:
    """`status.allocatedResourceStatuses.storage`, "" when unset."""
    return str(_get(pvc, "status", "allocatedResourceStatuses", STORAGE) or "")


def pv_capacity(pv: Mapping[str, Any]) -> str | None:
    """`spec.capacity.storage` of a PV."""
    value = _get(pv, "spec", "capacity", STORAGE)
    return None if value is None else str(value)


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    """`metadata.annotations` ({} when unset)."""
    found = _get(obj, "metadata", "annotations")
    return found if isinstance(found, Mapping) else {}


def has_condition(pvc: Mapping[str, Any], condition_type: str) -> bool:
    """A condition of this type with status True (HasFileSystemResizePendingCondition and friends)."""
    return any(
        c.get("type") == condition_type and c.get("status") == "True"
        for c in _get(pvc, "status", "conditions") or ()
    )


def cmp(a: str | None, b: str | None) -> int:
    """Quantity.Cmp with a missing size read as zero (a Go zero Quantity); QuantityError if invalid."""
    return compare(a or "0", b or "0")


def needs_resize(pvc: Mapping[str, Any]) -> bool:
    """pvcNeedResize: Bound, with a volume, asking for more than its status capacity."""
    if _get(pvc, "status", "phase") != "Bound" or not _get(pvc, "spec", "volumeName"):
        return False
    return cmp(request_size(pvc), status_capacity(pvc)) > 0


def bound_to(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
    """The PV's claimRef names this very claim (namespace and uid)."""
    ref = _get(pv, "spec", "claimRef")
    if not isinstance(ref, Mapping):
        return False
    same_namespace = ref.get("namespace") == _get(pvc, "metadata", "namespace")
    return bool(same_namespace and ref.get("uid") == _get(pvc, "metadata", "uid"))


def node_expand_complete(pvc: Mapping[str, Any], pv: Mapping[str, Any]) -> bool:
    """isNodeExpandComplete: the PVC's status capacity caught up with the PV's capacity."""
    return cmp(status_capacity(pvc), pv_capacity(pv)) >= 0


# ---------------------------------------------------------------------------------------- conditions


def condition(condition_type: str, *, message: str = "", timestamp: str | None = None) -> Obj:
    """A PVC condition as Go marshals one (status True, lastProbeTime null, transition now)."""
    cond: Obj = {
        "type": condition_type,
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": timestamp or now(),
    }
    if message:
        cond["message"] = message
    return cond


def merge_resize_conditions(old: Iterable[Obj], new: Iterable[Obj], *, keep_old: bool) -> list[Obj]:
    """util.MergeResizeConditionsOfPVC: non-resize conditions stay; a resize condition is replaced by a
    new one of its type, kept (`keep_old`) or dropped; new types are appended."""
    fresh = {c["type"]: c for c in new}
    result: list[Obj] = []
    for cond in old:
        kind = cond.get("type")
        if kind not in RESIZE_CONDITIONS:
            result.append(cond)
        elif kind in fresh:
            result.append(fresh.pop(kind))
        elif keep_old:
            result.append(cond)
    result.extend(fresh.values())
    return result


# ---------------------------------------------------------------------------------------- edits


def _copy(obj: Mapping[str, Any]) -> Obj:
    return copy.deepcopy(dict(obj))


def _status(pvc: Obj) -> Obj:
    status: Obj = pvc.setdefault("status", {})
    return status


def _set_map(parent: Obj, field: str, key: str, value: str) -> None:
    mapping = parent.get(field)
    if not isinstance(mapping, dict):
        mapping = parent[field] = {}
    mapping[key] = value


def _drop_map_key(parent: Obj, field: str, key: str) -> None:
    """Delete `key`; an emptied map is dropped (Go sets it to nil, which `omitempty` leaves out)."""
    mapping = parent.get(field)
    if isinstance(mapping, dict):
        mapping.pop(key, None)
        if not mapping:
            del parent[field]


def _set_annotation(obj: Obj, key: str, value: str) -> None:
    _set_map(obj.setdefault("metadata", {}), "annotations", key, value)


def _drop_annotation(obj: Obj, key: str) -> None:
    _drop_map_key(obj.setdefault("metadata", {}), "annotations", key)


def _conditions(pvc: Obj) -> list[Obj]:
    return list(_status(pvc).get("conditions") or ())


def _set_conditions(pvc: Obj, conditions: list[Obj]) -> None:
    if conditions:
        _status(pvc)["conditions"] = conditions
    else:
        _status(pvc).pop("conditions", None)


def mark_controller_resize_in_progress(pvc: Mapping[str, Any], new_size: str, *, update_status: bool) -> Obj:
    """markControllerResizeInProgress: `Resizing`, allocatedResources=new_size, and (`update_status`)
    ControllerResizeInProgress; the node-expansion-not-required annotation goes."""
    new = _copy(pvc)
    _set_conditions(
        new, merge_resize_conditions(_conditions(new), [condition(RESIZING)], keep_old=not update_status)
    )
    _drop_annotation(new, ANN_NODE_EXPANSION_NOT_REQUIRED)
    if update_status:
        _set_map(_status(new), "allocatedResourceStatuses", STORAGE, CONTROLLER_RESIZE_IN_PROGRESS)
    _set_map(_status(new), "allocatedResources", STORAGE, canonical(new_size))
    return new


def mark_pending_node_expansion(pvc: Mapping[str, Any]) -> Obj:
    """markForPendingNodeExpansion: `FileSystemResizePending` (old resize conditions kept) and
    NodeResizePending."""
    new = _copy(pvc)
    pending = condition(FS_RESIZE_PENDING, message=FS_RESIZE_PENDING_MESSAGE)
    _set_conditions(new, merge_resize_conditions(_conditions(new), [pending], keep_old=True))
    _drop_annotation(new, ANN_NODE_EXPANSION_NOT_REQUIRED)
    _set_map(_status(new), "allocatedResourceStatuses", STORAGE, NODE_RESIZE_PENDING)
    return new


def mark_controller_expansion_failed(pvc: Mapping[str, Any], error: str, *, infeasible: bool) -> Obj:
    """markControllerExpansionInfeasible / markControllerExpansionFailedCondition: a `ControllerResizeError`
    condition "failed to expand pvc with <error>", plus ControllerResizeInfeasible when `infeasible`."""
    new = _copy(pvc)
    if infeasible:
        _set_map(_status(new), "allocatedResourceStatuses", STORAGE, CONTROLLER_RESIZE_INFEASIBLE)
    failed = condition(CONTROLLER_RESIZE_ERROR, message=f"failed to expand pvc with {error}")
    _set_conditions(new, merge_resize_conditions(_conditions(new), [failed], keep_old=True))
    return new


def mark_expansion_finished(pvc: Mapping[str, Any], new_size: str) -> Obj:
    """markOverallExpansionAsFinished: capacity=new_size, resize conditions and status cleared, and the
    node-expansion-not-required annotation set so kubelet does not expand again."""
    new = _copy(pvc)
    _set_map(_status(new), "capacity", STORAGE, canonical(new_size))
    _set_conditions(new, merge_resize_conditions(_conditions(new), [], keep_old=False))
    _drop_map_key(_status(new), "allocatedResourceStatuses", STORAGE)
    _set_annotation(new, ANN_NODE_EXPANSION_NOT_REQUIRED, "true")
    return new


def mark_legacy_resizing(pvc: Mapping[str, Any]) -> Obj:
    """Legacy markPVCResizeInProgress (gate off): only the `Resizing` condition."""
    new = _copy(pvc)
    _set_conditions(new, merge_resize_conditions(_conditions(new), [condition(RESIZING)], keep_old=False))
    return new


def mark_legacy_fs_resize_required(pvc: Mapping[str, Any]) -> Obj:
    """Legacy markPVCAsFSResizeRequired: `FileSystemResizePending` replaces the other resize conditions."""
    new = _copy(pvc)
    pending = condition(FS_RESIZE_PENDING, message=FS_RESIZE_PENDING_MESSAGE)
    _set_conditions(new, merge_resize_conditions(_conditions(new), [pending], keep_old=False))
    return new


def mark_legacy_finished(pvc: Mapping[str, Any], new_size: str) -> Obj:
    """Legacy markPVCResizeFinished: capacity=new_size, resize conditions cleared."""
    new = _copy(pvc)
    _set_map(_status(new), "capacity", STORAGE, canonical(new_size))
    _set_conditions(new, merge_resize_conditions(_conditions(new), [], keep_old=False))
    return new


def with_pv_capacity(pv: Mapping[str, Any], new_size: str, *, pre_resize: str | None) -> Obj:
    """updatePVCapacity: spec.capacity=new_size, plus the pre-resize annotation (if `pre_resize` is given
    and the PV has none yet)."""
    new = _copy(pv)
    _set_map(new.setdefault("spec", {}), "capacity", STORAGE, canonical(new_size))
    if pre_resize is not None and ANN_PRE_RESIZE_CAPACITY not in annotations_of(pv):
        _set_annotation(new, ANN_PRE_RESIZE_CAPACITY, pre_resize)
    return new


def without_pre_resize_annotation(pv: Mapping[str, Any]) -> Obj:
    """deletePreResizeCapAnnotation."""
    new = _copy(pv)
    _drop_annotation(new, ANN_PRE_RESIZE_CAPACITY)
    return new


# ---------------------------------------------------------------------------------------- the plan


class Action(Enum):
    """What expandAndRecover decided to do."""

    SKIP = "skip"
    """Nothing to do now (e.g. the node is still expanding)."""
    DELAY = "delay"
    """Same size that failed as infeasible, still in the slow set: look again later."""
    EXPAND = "expand"
    """Mark in progress and call the resizer with `size`."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The decision of `plan_expansion`."""

    action: Action
    size: str = ""
    """The size to expand to (a quantity string)."""
    update_status: bool = True
    """False when allocatedResources already holds `size`: keep the status and the old conditions."""


def plan_expansion(
    pvc: Mapping[str, Any],
    pv: Mapping[str, Any],
    *,
    final_error: bool,
    in_slow_set: bool,
    controller_expansion: bool,
) -> Plan:
    """expandAndRecover's choice of the new size. Call only when `needs_resize(pvc)`.

    `final_error`: the last expansion of this PVC failed with a final error (finalErrorPVCs);
    `in_slow_set`: it failed as infeasible within --retry-interval-max; `controller_expansion`: the
    driver expands in the control plane (false for the trivial resizer).
    """
    spec = request_size(pvc) or "0"
    pv_size = pv_capacity(pv)
    status = resize_status(pvc)
    allocated = allocated_size(pvc)
    new_size = spec
    if cmp(pv_size, spec) < 0:
        # The volume is smaller than asked: expand, but let an earlier operation finish first.
        if status == NODE_RESIZE_INFEASIBLE:
            new_size = allocated or spec
        elif status in (NODE_RESIZE_PENDING, NODE_RESIZE_IN_PROGRESS):
            new_size = allocated or spec
            if cmp(pv_size, new_size) >= 0:
                return Plan(Action.SKIP)  # the node has yet to finish the previous size
        elif status == CONTROLLER_RESIZE_IN_PROGRESS:
            # An uncertain failure must be retried with the same size; after a final one the user's
            # (possibly lowered) request is safe to use.
            new_size = spec if final_error else (allocated or spec)
    else:
        # The volume is already big enough.
        if status in (NODE_RESIZE_IN_PROGRESS, NODE_RESIZE_PENDING):
            return Plan(Action.SKIP)  # kubelet's turn; a spurious event
        if status == NODE_RESIZE_INFEASIBLE:
            new_size = allocated if controller_expansion and allocated else spec
        elif status in (CONTROLLER_RESIZE_IN_PROGRESS, CONTROLLER_RESIZE_INFEASIBLE):
            new_size = allocated or spec  # the status was not recorded, or the user shrank back
        elif status == "" and allocated:
            new_size = allocated
        else:
            if has_condition(pvc, FS_RESIZE_PENDING):
                return Plan(Action.SKIP)  # an old API server without recovery: kubelet's turn
            new_size = spec
    update_status = True
    if allocated is not None and cmp(allocated, new_size) == 0:
        if in_slow_set:
            return Plan(Action.DELAY, new_size, update_status=False)
        update_status = False
    return Plan(Action.EXPAND, new_size, update_status=update_status)
