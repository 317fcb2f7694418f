"""Validation: the checks of `pkg/apis/*/validation` that a client can trip, with the server's field errors.

Not everything the real server validates is here — only what a sidecar could get wrong: object names,
labels, PV capacity and source, PVC spec immutability and size rules, VolumeAttachment spec
immutability, Lease and Event required fields, and the metadata rules every update obeys (no new
finalizers on an object being deleted). Each function returns the causes in the server's order; the
store wraps them in one 422 `Invalid` answer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from testbed.apiserver import gorender
from testbed.apiserver.errors import Cause, forbidden, invalid, invalid_value, not_supported, required
from testbed.apiserver.quantity import parse_quantity, storage_of

if TYPE_CHECKING:
    from testbed.apiserver.resources import ResourceType

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
QUALIFIED_NAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is "
    "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used "
    "for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


def check_create(rtype: ResourceType, obj: dict[str, Any]) -> None:
    """All create validation of `obj`; one 422 Invalid with every cause."""
    meta = obj["metadata"]
    name = meta.get("name") or ""
    if name:
        causes = name_errors(name, rtype.name_style)
    else:
        causes = [required("metadata.name", "name or generateName is required")]
    causes += metadata_errors(meta)
    causes += rtype.validate(obj) if rtype.validate else []
    if causes:
        raise invalid(rtype.kind, rtype.group, name, causes)


def check_update(rtype: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> None:
    """All update validation; `ValidateObjectMetaUpdate` runs twice for core kinds (generic, then own)."""
    causes = metadata_update_errors(new, old) * (1 if rtype.group else 2)
    causes += metadata_errors(new["metadata"])
    if rtype.validate_update:
        causes += rtype.validate_update(new, old)
    elif rtype.validate:
        causes += rtype.validate(new)
    if causes:
        raise invalid(rtype.kind, rtype.group, old["metadata"]["name"], causes)


def name_errors(name: str, style: str, field: str = "metadata.name") -> list[Cause]:
    """`style` is "subdomain" (most kinds), "label" (namespaces) or "segment" (custom resources)."""
    if style == "segment":
        if name in (".", "..") or "/" in name or "%" in name:
            return [invalid_value(field, name, "may not contain '/' or '%'")]
        return []
    if style == "label":
        errors = [] if _LABEL.match(name) else [invalid_value(field, name, LABEL_MSG)]
        if len(name) > 63:
            errors.insert(0, invalid_value(field, name, "must be no more than 63 characters"))
        return errors
    errors = [] if _SUBDOMAIN.match(name) else [invalid_value(field, name, SUBDOMAIN_MSG)]
    if len(name) > 253:
        errors.insert(0, invalid_value(field, name, "must be no more than 253 characters"))
    return errors


def qualified_name_errors(key: str, field: str) -> list[Cause]:
    prefix, _, name = key.rpartition("/")
    errors = []
    if prefix and not _SUBDOMAIN.match(prefix):
        errors.append(invalid_value(field, key, "prefix part " + SUBDOMAIN_MSG))
    if not name or not _QUALIFIED_NAME.match(name) or len(name) > 63:
        errors.append(invalid_value(field, key, QUALIFIED_NAME_MSG))
    return errors


def metadata_errors(meta: dict[str, Any]) -> list[Cause]:
    """Labels, annotation keys and finalizer names (`ValidateObjectMeta`, minus the name)."""
    errors: list[Cause] = []
    for key, value in (meta.get("labels") or {}).items():
        errors += qualified_name_errors(key, "metadata.labels")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
            errors.append(invalid_value("metadata.labels", value, LABEL_VALUE_MSG))
    for key in meta.get("annotations") or {}:
        errors += qualified_name_errors(key.lower(), "metadata.annotations")
    for index, finalizer in enumerate(meta.get("finalizers") or []):
        if finalizer != "kubernetes":
            errors += qualified_name_errors(str(finalizer), f"metadata.finalizers[{index}]")
    return errors


def go_string_slice(values: list[str]) -> str:
    """`%#v` of a `[]string`."""
    return "[]string{" + ", ".join(gorender.compact(v) for v in values) + "}"


def metadata_update_errors(new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
    """`ValidateObjectMetaUpdate`: no new finalizers once the object is being deleted (golden case 32)."""
    old_meta, new_meta = old["metadata"], new["metadata"]
    if not old_meta.get("deletionTimestamp"):
        return []
    old_finalizers = set(old_meta.get("finalizers") or [])
    added = [f for f in new_meta.get("finalizers") or [] if f not in old_finalizers]
    if not added:
        return []
    detail = (
        "no new finalizers can be added if the object is being deleted, found new finalizers "
        + go_string_slice(added)
    )
    return [forbidden("metadata.finalizers", detail)]


_PV_SOURCES = [
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "hostPath",
    "glusterfs",
    "nfs",
    "rbd",
    "quobyte",
    "cephfs",
    "iscsi",
    "cinder",
    "fc",
    "flocker",
    "flexVolume",
    "azureFile",
    "vsphereVolume",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "local",
    "storageos",
    "csi",
]
_ACCESS_MODES = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]


def _access_mode_errors(spec: dict[str, Any], detail: str) -> list[Cause]:
    modes = spec.get("accessModes") or []
    if not modes:
        return [required("spec.accessModes", detail)]
    return [not_supported("spec.accessModes", m, _ACCESS_MODES) for m in modes if m not in _ACCESS_MODES]


def persistent_volume(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    errors = _access_mode_errors(spec, "")
    capacity = spec.get("capacity")
    if not capacity:
        errors.append(required("spec.capacity"))
    if not isinstance(capacity, dict) or "storage" not in capacity or len(capacity) > 1:
        errors.append(not_supported("spec.capacity", capacity or None, ["storage"]))
    elif (size := storage_of(capacity)) is None or size <= 0:
        errors.append(
            invalid_value("spec.capacity[storage]", capacity["storage"], "must be greater than zero")
        )
    sources = [s for s in _PV_SOURCES if spec.get(s) is not None]
    if not sources:
        errors.append(required("spec", "must specify a volume type"))
    for extra in sources[1:]:
        errors.append(forbidden(f"spec.{extra}", "may not specify more than 1 volume type"))
    if isinstance(csi := spec.get("csi"), dict):
        if not csi.get("driver"):
            errors.append(required("spec.csi.driver"))
        if not csi.get("volumeHandle"):
            errors.append(required("spec.csi.volumeHandle"))
    policy = spec.get("persistentVolumeReclaimPolicy")
    if policy not in (None, "Delete", "Recycle", "Retain"):
        errors.append(
            not_supported("spec.persistentVolumeReclaimPolicy", policy, ["Delete", "Recycle", "Retain"])
        )
    return errors


def persistent_volume_update(new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
    errors = persistent_volume(new)
    new_spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    new_source = {k: new_spec.get(k) for k in _PV_SOURCES if new_spec.get(k) is not None}
    old_source = {k: old_spec.get(k) for k in _PV_SOURCES if old_spec.get(k) is not None}
    if new_source != old_source:
        detail = "spec.persistentvolumesource is immutable after creation\n" + gorender.diff(
            old_source, new_source
        )
        errors.append(forbidden("spec.persistentvolumesource", detail))
    if new_spec.get("volumeMode") != old_spec.get("volumeMode"):
        errors.append(invalid_value("volumeMode", new_spec.get("volumeMode"), "field is immutable"))
    return errors


def persistent_volume_claim(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    errors = _access_mode_errors(spec, "at least 1 access mode is required")
    requests = (spec.get("resources") or {}).get("requests") or {}
    if "storage" not in requests:
        errors.append(required("spec.resources[storage]"))
    elif (size := storage_of(requests)) is None or size <= 0:
        errors.append(
            invalid_value("spec.resources[storage]", requests["storage"], "must be greater than zero")
        )
    mode = spec.get("volumeMode")
    if mode is not None and mode not in ("Block", "Filesystem"):
        errors.append(not_supported("spec.volumeMode", mode, ["Block", "Filesystem"]))
    if spec.get("storageClassName"):
        errors += name_errors(spec["storageClassName"], "subdomain", "spec.storageClassName")
    return errors


def persistent_volume_claim_update(new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
    """`ValidatePersistentVolumeClaimUpdate` with RecoverVolumeExpansionFailure (GA) on."""
    errors = persistent_volume_claim(new)
    old_spec, new_spec = dict(old.get("spec") or {}), dict(new.get("spec") or {})
    compare_old, compare_new = dict(old_spec), dict(new_spec)
    if not old_spec.get("volumeName"):
        compare_old["volumeName"] = new_spec.get("volumeName", "")
        compare_new["volumeName"] = new_spec.get("volumeName", "")
    if (new.get("status") or {}).get("phase") == "Bound":
        new_requests = dict((new_spec.get("resources") or {}).get("requests") or {})
        if "storage" in ((old_spec.get("resources") or {}).get("requests") or {}):
            new_requests["storage"] = old_spec["resources"]["requests"]["storage"]
        compare_new["resources"] = {**(new_spec.get("resources") or {}), "requests": new_requests}
        compare_new["volumeAttributesClassName"] = old_spec.get("volumeAttributesClassName")
    if gorender.pvc_spec(compare_old) != gorender.pvc_spec(compare_new):
        detail = (
            "spec is immutable after creation except resources.requests and volumeAttributesClassName "
            "for bound claims\n"
            + gorender.diff(gorender.pvc_spec(compare_old), gorender.pvc_spec(compare_new))
        )
        errors.append(forbidden("spec", detail))
    old_size = storage_of((old_spec.get("resources") or {}).get("requests"))
    new_size = storage_of((new_spec.get("resources") or {}).get("requests"))
    status_size = storage_of((old.get("status") or {}).get("capacity")) or 0
    if old_size is not None and new_size is not None and new_size < old_size and new_size <= status_size:
        errors.append(
            forbidden("spec.resources.requests.storage", "field can not be less than status.capacity")
        )
    return errors


def volume_attachment(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    errors = []
    if not spec.get("attacher"):
        errors.append(required("spec.attacher"))
    source = spec.get("source") or {}
    has_pv, has_inline = (
        source.get("persistentVolumeName") is not None,
        source.get("inlineVolumeSpec") is not None,
    )
    one_of = "must specify exactly one of inlineVolumeSpec and persistentVolumeName"
    if has_pv == has_inline:
        errors.append(required("spec.source", one_of) if not has_pv else forbidden("spec.source", one_of))
    elif has_pv and not source["persistentVolumeName"]:
        errors.append(
            required("spec.source.persistentVolumeName", "must specify non empty persistentVolumeName")
        )
    if not spec.get("nodeName"):
        errors.append(required("spec.nodeName"))
    else:
        errors += name_errors(spec["nodeName"], "subdomain", "spec.nodeName")
    return errors


def volume_attachment_update(new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
    errors = volume_attachment(new)
    if new.get("spec") != old.get("spec"):
        rendered = gorender.compact(gorender.volume_attachment_spec(new.get("spec") or {}))
        errors.append(invalid_value("spec", None, "field is immutable", rendered=rendered))
    return errors


def lease(obj: dict[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    errors = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errors.append(invalid_value("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errors.append(
            invalid_value("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
        )
    return errors


def core_event(obj: dict[str, Any]) -> list[Cause]:
    """`legacyValidateEvent` (core/v1): an event lives in its object's namespace ("default" if none)."""
    namespace = obj["metadata"].get("namespace", "")
    involved = (obj.get("involvedObject") or {}).get("namespace", "")
    mismatch = invalid_value("involvedObject.namespace", involved, "does not match event.namespace")
    if not obj.get("eventTime"):
        if (not involved and namespace not in ("", "default")) or (involved and namespace != involved):
            return [mismatch]
        return []
    errors = []
    if not involved and namespace not in ("default", "kube-system"):
        errors.append(mismatch)
    if not obj.get("reportingComponent"):
        errors.append(required("reportingComponent"))
    if not obj.get("reportingInstance"):
        errors.append(required("reportingInstance"))
    return errors


def events_v1_event(obj: dict[str, Any]) -> list[Cause]:
    """events.k8s.io/v1 create: the new-style fields are required, the legacy ones must be unset."""
    errors = [required(f) for f in ("eventTime",) if not obj.get(f)]
    for field in ("reportingController", "reportingInstance", "action", "reason"):
        if not obj.get(field):
            errors.append(required(field))
    if obj.get("type") not in ("Normal", "Warning"):
        errors.append(invalid_value("type", "", f"has invalid value: {obj.get('type') or ''}"))
    return errors


def quantity_errors(value: object, field: str) -> list[Cause]:
    try:
        parse_quantity(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return [invalid_value(field, value, "quantities must match the regular expression")]
    return []
