"""VolumeAttachment writes: the status patches, the metadata patch, and which updates need a sync.

Pure functions that decide the request bodies external-attacher sends (`util.go`, `csi_handler.go`):

* status goes through the `status` subresource as a JSON merge patch holding only what changed
  (upstream's `createMergePatch(va, clone)`): `attached_patch` (attached, attachmentMetadata = the
  publish_context, attachError cleared), `detached_patch` (attached false, attachmentMetadata and
  detachError cleared), `error_patch` (attachError / detachError with message, time and, for
  attachError and a gRPC failure, errorCode);
* the finalizer and the `csi.alpha.kubernetes.io/node-id` annotation go on in one request *before*
  ControllerPublishVolume. Upstream merge-patches them; we send a JSON patch whose `test` operations
  make it apply only to the finalizer list (and annotation map) we decided on, like every finalizer
  change in this code base (external-provisioner#1217);
* `should_enqueue` is upstream's `shouldEnqueueVAChange`: an update that only changed
  attachError/detachError is our own error report coming back, and must not restart the backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from common.kube.finalizers import add_patch, finalizers_of
from sidecars.attacher.request import NODE_ID_ANNOTATION, meta

Object = dict[str, Any]
_UNCHANGED = object()


def now() -> str:
    """metav1.Now() as JSON: RFC 3339 in UTC with whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch turning `old` into `new` (`_UNCHANGED` if equal): CreateMergePatch."""
    if old == new:
        return _UNCHANGED
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
            continue
        sub = merge_diff(old[key], value)
        if sub is not _UNCHANGED:
            patch[key] = sub
    return patch


def _status_patch(va: Mapping[str, Any], new_status: dict[str, Any]) -> Object | None:
    diff = merge_diff(dict(va.get("status") or {}), new_status)
    return None if diff is _UNCHANGED else {"status": diff}


def attached_patch(va: Mapping[str, Any], publish_context: Mapping[str, str] | None) -> Object | None:
    """markAsAttached: `attached: true`, `attachmentMetadata` = publish_context, no attachError."""
    status = dict(va.get("status") or {})
    status["attached"] = True
    if publish_context:
        status["attachmentMetadata"] = dict(publish_context)
    else:
        status.pop("attachmentMetadata", None)  # Go's omitempty: an empty map is not written
    status.pop("attachError", None)
    return _status_patch(va, status)


def detached_patch(va: Mapping[str, Any]) -> Object | None:
    """markAsDetached's status half: `attached: false`, no attachmentMetadata, no detachError."""
    status = dict(va.get("status") or {})
    status["attached"] = False
    status.pop("attachmentMetadata", None)
    status.pop("detachError", None)
    return _status_patch(va, status)


def error_patch(field: str, message: str, *, code: int | None = None, time: str | None = None) -> Object:
    """saveAttachError / saveDetachError: `status.<field>` = {message, time[, errorCode]}."""
    error: dict[str, Any] = {"message": message, "time": time or now()}
    if code is not None:
        error["errorCode"] = code
    return {"status": {field: error}}


def metadata_patch(va: Mapping[str, Any], finalizer: str, node_id: str) -> list[Object] | None:
    """One guarded JSON patch adding our finalizer and the node-id annotation; None if both are there.

    An existing finalizer list is guarded by a `test` of its value (as `common.kube.finalizers`). Adding
    a list or an annotation map that the cached object lacks is guarded by a `test` of the cached
    resourceVersion instead: kube-apiserver would also accept `test` of `null` for a missing key
    (evanphx/json-patch), but not every server does, and the resourceVersion guard is just as safe.
    """
    ops: list[Object] = []
    creates = False
    if finalizer not in finalizers_of(dict(va)):
        ops += add_patch(dict(va), finalizer) or []
        creates = not finalizers_of(dict(va))
    annotations = meta(va).get("annotations")
    if not annotations:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {NODE_ID_ANNOTATION: node_id}})
        creates = True
    elif annotations.get(NODE_ID_ANNOTATION) != node_id:
        path = "/metadata/annotations/" + NODE_ID_ANNOTATION.replace("~", "~0").replace("/", "~1")
        ops.append({"op": "add", "path": path, "value": node_id})
    if not ops:
        return None
    rv = meta(va).get("resourceVersion")
    ops = [op for op in ops if not (op["op"] == "test" and op["value"] is None)]
    if creates:
        guard = {"op": "test", "path": "/metadata/resourceVersion", "value": rv}
        ops.insert(0, guard)
    return ops


def has_finalizer(obj: Mapping[str, Any], finalizer: str) -> bool:
    return finalizer in finalizers_of(dict(obj))


def is_deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta(obj).get("deletionTimestamp"))


def is_attached(va: Mapping[str, Any]) -> bool:
    return bool((va.get("status") or {}).get("attached"))


def _without_errors(obj: Mapping[str, Any], like: Mapping[str, Any]) -> Object:
    """`obj` with resourceVersion, managedFields and the two errors taken from `like` (shallow copies)."""
    metadata = dict(meta(obj))
    old_meta = meta(like)
    for key in ("resourceVersion", "managedFields"):
        if key in old_meta:
            metadata[key] = old_meta[key]
        else:
            metadata.pop(key, None)
    status = dict(obj.get("status") or {})
    old_status = like.get("status") or {}
    for key in ("attachError", "detachError"):
        if key in old_status:
            status[key] = old_status[key]
        else:
            status.pop(key, None)
    result = dict(obj)
    result["metadata"] = metadata
    if status or "status" in obj:
        result["status"] = status
    return result


def should_enqueue(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """False only for an update that changed nothing but attachError/detachError (and managedFields)."""
    if meta(old).get("resourceVersion") == meta(new).get("resourceVersion"):
        return True  # a resync: look again
    old_status, new_status = old.get("status") or {}, new.get("status") or {}
    if not any(s.get(k) for s in (old_status, new_status) for k in ("attachError", "detachError")):
        return True
    return _without_errors(new, old) != dict(old)
