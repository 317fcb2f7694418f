"""VolumeAttributesClass state of a claim: the names, readers and status edits of the modify controller.

Pure functions over the API JSON, like `claims.py` for resizing. The edits mirror
`pkg/modifycontroller/modify_status.go`: `mark_status` (Pending / InProgress / Infeasible, with the
`ModifyingVolume` condition and, after an error, `ModifyVolumeError` whose reason is the gRPC code),
`mark_completed` (current class set, status and modify conditions cleared) and the rollback edit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from common.csi.errors import code_name, is_final
from sidecars.resizer.claims import now

Obj = dict[str, Any]

PENDING = "Pending"
IN_PROGRESS = "InProgress"
INFEASIBLE = "Infeasible"

MODIFYING_VOLUME = "ModifyingVolume"
MODIFY_VOLUME_ERROR = "ModifyVolumeError"
MODIFY_CONDITIONS = frozenset({MODIFYING_VOLUME, MODIFY_VOLUME_ERROR})

VOLUME_MODIFY = "VolumeModify"
VOLUME_MODIFY_FAILED = "VolumeModifyFailed"
VOLUME_MODIFY_SUCCESSFUL = "VolumeModifySuccessful"
VOLUME_MODIFY_CANCELED = "VolumeModifyCanceled"

PVC_NAME_KEY = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace"
PV_NAME_KEY = "csi.storage.k8s.io/pv/name"

ANN_MODIFY_SECRET_NAME = "volume.kubernetes.io/controller-modify-secret-name"
ANN_MODIFY_SECRET_NAMESPACE = "volume.kubernetes.io/controller-modify-secret-namespace"


def phase(pvc: Mapping[str, Any]) -> str:
    return str((pvc.get("status") or {}).get("phase") or "")


def spec_class(pvc: Mapping[str, Any]) -> str:
    """`spec.volumeAttributesClassName` ("" when unset)."""
    return str((pvc.get("spec") or {}).get("volumeAttributesClassName") or "")


def current_class(pvc: Mapping[str, Any]) -> str:
    """`status.currentVolumeAttributesClassName` ("" when unset)."""
    return str((pvc.get("status") or {}).get("currentVolumeAttributesClassName") or "")


def modify_status(pvc: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """`status.modifyVolumeStatus` (None when unset)."""
    status = (pvc.get("status") or {}).get("modifyVolumeStatus")
    return status if isinstance(status, Mapping) else None


def has_condition(pvc: Mapping[str, Any], condition_type: str) -> bool:
    return any(c.get("type") == condition_type for c in (pvc.get("status") or {}).get("conditions") or ())


def modify_secret_ref(pv: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The modify secret: the PV's controller-modify-secret annotations, else controllerExpandSecretRef."""
    annotations = (pv.get("metadata") or {}).get("annotations") or {}
    name, namespace = annotations.get(ANN_MODIFY_SECRET_NAME), annotations.get(ANN_MODIFY_SECRET_NAMESPACE)
    if name and namespace:
        return {"name": name, "namespace": namespace}
    ref = ((pv.get("spec") or {}).get("csi") or {}).get("controllerExpandSecretRef")
    return ref if isinstance(ref, Mapping) else None


def merge_conditions(old: list[Obj], new: list[Obj]) -> list[Obj]:
    """util.MergePVCConditions: a new condition replaces the old one of its type; new types are appended."""
    fresh = {c["type"]: c for c in new}
    result = [fresh.pop(c.get("type"), c) for c in old]
    result.extend(fresh.values())
    return result


def _with_conditions(pvc: Obj, conditions: list[Obj]) -> None:
    status = pvc.setdefault("status", {})
    if conditions:
        status["conditions"] = conditions
    else:
        status.pop("conditions", None)


def _grpc_message(error: BaseException) -> str:
    details = getattr(error, "details", None)
    return str(details() or "") if callable(details) else str(error)


def mark_status(pvc: Mapping[str, Any], status: str, *, error: BaseException | None = None) -> Obj:
    """markControllerModifyVolumeStatus: modifyVolumeStatus and (unless Pending) the modify conditions."""
    target = spec_class(pvc)
    if error is not None:
        target = str((modify_status(pvc) or {}).get("targetVolumeAttributesClassName") or "")
    new = copy.deepcopy(dict(pvc))
    record: Obj = {"status": status}
    if target:
        record["targetVolumeAttributesClassName"] = target
    new.setdefault("status", {})["modifyVolumeStatus"] = record
    if status == PENDING:
        return new
    stamp = now()
    if error is None:
        message = f'Modifying volume to "{target}" is in progress.'
    elif is_final(error):
        message = f'Modifying volume to "{target}" failed. Waiting for retry.'
    else:
        message = f'Modifying volume to "{target}" is still in progress.'
    conditions: list[Obj] = [
        {
            "type": MODIFYING_VOLUME,
            "status": "True",
            "lastProbeTime": stamp,
            "lastTransitionTime": None,
            "message": message,
        }
    ]
    if error is not None:
        failed: Obj = {
            "type": MODIFY_VOLUME_ERROR,
            "status": "True",
            "lastProbeTime": stamp,
            "lastTransitionTime": None,
            "reason": code_name(error),
        }
        if text := _grpc_message(error):
            failed["message"] = text
        conditions.append(failed)
    _with_conditions(new, merge_conditions(list(new["status"].get("conditions") or ()), conditions))
    return new


def mark_completed(pvc: Mapping[str, Any], target: str) -> Obj:
    """markControllerModifyVolumeCompleted (the PVC half): current class = target, status cleared."""
    new = copy.deepcopy(dict(pvc))
    status = new.setdefault("status", {})
    status.pop("modifyVolumeStatus", None)
    status["currentVolumeAttributesClassName"] = target
    kept = [c for c in status.get("conditions") or () if c.get("type") not in MODIFY_CONDITIONS]
    _with_conditions(new, kept)
    return new


def without_modifying_condition(pvc: Mapping[str, Any]) -> Obj:
    """markRolledBack: the `ModifyingVolume` condition removed."""
    new = copy.deepcopy(dict(pvc))
    kept = [c for c in (new.get("status") or {}).get("conditions") or () if c.get("type") != MODIFYING_VOLUME]
    _with_conditions(new, kept)
    return new
