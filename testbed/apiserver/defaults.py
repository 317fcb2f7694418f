"""Server-side defaults and create/update preparation per kind (`pkg/apis/*/v1/defaults.go`, strategies).

Three hooks per kind, all mutating the object in place:

* `defaults(obj)` runs on every write, as the real server defaults every object it decodes
  (PVC `volumeMode: Filesystem`, StorageClass `reclaimPolicy: Delete`...).
* `prepare_create(obj, now)` is the strategy's `PrepareForCreate`: status reset to what the server starts
  with (PVC and PV `phase: Pending`, VolumeAttachment `attached: false`, Namespace `phase: Active`).
* `prepare_update(new, old, now)` covers what a strategy changes on update (PV `lastPhaseTransitionTime`).

Timestamps are re-rendered as Go renders `metav1.Time` (seconds, `Z`) and `metav1.MicroTime` (6 digits).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from testbed.apiserver.errors import BadRequest


def format_time(epoch: float) -> str:
    """`metav1.Time` as JSON: RFC 3339, UTC, whole seconds."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        layout = "2006-01-02T15:04:05Z07:00"
        message = f'{field}: parsing time "{value}" as "{layout}": cannot parse "{value}" as "2006"'
        raise BadRequest(message) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def normalize_time(holder: dict[str, Any] | None, key: str, *, micro: bool = False) -> None:
    """Re-render `holder[key]` as the server would after decoding it (BadRequest if it is no time)."""
    if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
        return
    parsed = _parse_time(holder[key], key).astimezone(UTC)
    holder[key] = parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _normalize_conditions(status: Any) -> None:
    if not isinstance(status, dict):
        return
    for condition in status.get("conditions") or []:
        for key in ("lastTransitionTime", "lastProbeTime", "lastHeartbeatTime", "lastUpdateTime"):
            normalize_time(condition, key)


# ---- core/v1 -------------------------------------------------------------------------------------


def pvc_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("volumeMode", "Filesystem")
    spec.setdefault("resources", {})
    # EnforceDataSourceBackwardsCompatibility: dataSource and dataSourceRef mirror each other.
    source, ref = spec.get("dataSource"), spec.get("dataSourceRef")
    if isinstance(source, dict) and ref is None:
        spec["dataSourceRef"] = dict(source)
    elif isinstance(ref, dict) and source is None and not ref.get("namespace"):
        spec["dataSource"] = {k: v for k, v in ref.items() if k != "namespace"}
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    _normalize_conditions(status)
    for condition in status.get("conditions") or []:
        # metav1.Time is a struct, so Go's omitempty keeps it: a zero time is written as null.
        if isinstance(condition, dict):
            condition.setdefault("lastProbeTime", None)
            condition.setdefault("lastTransitionTime", None)
    _omit_empty(
        status, "accessModes", "capacity", "conditions", "allocatedResources", "allocatedResourceStatuses"
    )


def _omit_empty(holder: dict[str, Any], *keys: str) -> None:
    """Drop empty maps and lists of `omitempty` fields, as the server's JSON encoding does."""
    for key in keys:
        if key in holder and not holder[key]:
            del holder[key]


def pvc_create(obj: dict[str, Any], now: float) -> None:
    obj["status"] = {"phase": "Pending"}


def pv_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
    spec.setdefault("volumeMode", "Filesystem")
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    normalize_time(status, "lastPhaseTransitionTime")


def pv_create(obj: dict[str, Any], now: float) -> None:
    obj["status"] = {"phase": "Pending", "lastPhaseTransitionTime": format_time(now)}


def pv_update(new: dict[str, Any], old: dict[str, Any], now: float) -> None:
    new_status, old_status = new.get("status") or {}, old.get("status") or {}
    changed_phase = new_status.get("phase") != old_status.get("phase")
    if changed_phase and new_status.get("lastPhaseTransitionTime") in (
        None,
        old_status.get("lastPhaseTransitionTime"),
    ):
        new.setdefault("status", {})["lastPhaseTransitionTime"] = format_time(now)


def namespace_defaults(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    if meta.get("name"):
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    obj.setdefault("spec", {})
    obj.setdefault("status", {}).setdefault("phase", "Active")


def namespace_create(obj: dict[str, Any], now: float) -> None:
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}


def namespace_update(new: dict[str, Any], old: dict[str, Any], now: float) -> None:
    new["spec"] = dict(old.get("spec") or {})  # spec.finalizers change only through /finalize


def _container_defaults(container: dict[str, Any]) -> None:
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
    container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
    container.setdefault("resources", {})
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")


def pod_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _container_defaults(container)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key for t in tolerations):
            tolerations.append(
                {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            )
    status = obj.setdefault("status", {})
    _normalize_conditions(status)


def _qos_class(spec: dict[str, Any]) -> str:
    containers = spec.get("containers") or []
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) and (r.get("requests") or {}).get(k, r["limits"][k]) == r["limits"][k]
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def pod_create(obj: dict[str, Any], now: float) -> None:
    obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj.get("spec") or {})}


def node_defaults(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {})
    status = obj.setdefault("status", {})
    if "capacity" in status and "allocatable" not in status:
        status["allocatable"] = dict(status["capacity"])
    _normalize_conditions(status)


def secret_defaults(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def core_event_defaults(obj: dict[str, Any]) -> None:
    obj.setdefault("involvedObject", {})
    obj.setdefault("source", {})
    for key in ("firstTimestamp", "lastTimestamp"):
        obj.setdefault(key, None)
        normalize_time(obj, key)
    obj.setdefault("eventTime", None)
    normalize_time(obj, "eventTime", micro=True)
    obj.setdefault("reportingComponent", "")
    obj.setdefault("reportingInstance", "")


# ---- other groups ----------------------------------------------------------------------------------


def events_v1_defaults(obj: dict[str, Any]) -> None:
    normalize_time(obj, "eventTime", micro=True)
    for key in ("deprecatedFirstTimestamp", "deprecatedLastTimestamp"):
        normalize_time(obj, key)


def storage_class_defaults(obj: dict[str, Any]) -> None:
    obj.setdefault("reclaimPolicy", "Delete")
    obj.setdefault("volumeBindingMode", "Immediate")


def volume_attachment_defaults(obj: dict[str, Any]) -> None:
    status = obj.setdefault("status", {})
    status.setdefault("attached", False)
    _omit_empty(status, "attachmentMetadata")
    for key in ("attachError", "detachError"):
        normalize_time(status.get(key), "time")


def volume_attachment_create(obj: dict[str, Any], now: float) -> None:
    obj["status"] = {"attached": False}


def csi_driver_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("attachRequired", True)
    spec.setdefault("podInfoOnMount", False)
    spec.setdefault("storageCapacity", False)
    spec.setdefault("fsGroupPolicy", "ReadWriteOnceWithFSType")
    spec.setdefault("volumeLifecycleModes", ["Persistent"])
    spec.setdefault("requiresRepublish", False)
    spec.setdefault("seLinuxMount", False)


def lease_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    for key in ("acquireTime", "renewTime"):
        normalize_time(spec, key, micro=True)


def workload_defaults(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    if obj.get("kind") != "DaemonSet":
        spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    _normalize_conditions(obj.get("status"))


def status_reset(obj: dict[str, Any], now: float) -> None:
    """`PrepareForCreate` of kinds whose status only controllers write (custom resources with /status)."""
    obj.pop("status", None)
