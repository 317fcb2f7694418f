"""Go renderings inside error messages: internal API structs as `encoding/json` prints them, and their diffs.

Some validation messages embed the object as the server's *internal* Go type (field names, not JSON
tags, every field present) — golden case 23 (`spec is immutable ...` followed by a unified diff of the
PVC spec) and case 41 (the VolumeAttachment spec as compact JSON). These helpers rebuild exactly that.
"""

from __future__ import annotations

import difflib
import json
from typing import Any


def _typed_ref(ref: Any, *, with_namespace: bool) -> dict[str, Any] | None:
    if not isinstance(ref, dict):
        return None
    out: dict[str, Any] = {
        "APIGroup": ref.get("apiGroup"),
        "Kind": ref.get("kind", ""),
        "Name": ref.get("name", ""),
    }
    if with_namespace:
        out["Namespace"] = ref.get("namespace")
    return out


def pvc_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`core.PersistentVolumeClaimSpec` in Go field order."""
    resources = spec.get("resources") or {}
    return {
        "AccessModes": spec.get("accessModes"),
        "Selector": spec.get("selector"),
        "Resources": {"Limits": resources.get("limits"), "Requests": resources.get("requests")},
        "VolumeName": spec.get("volumeName", ""),
        "StorageClassName": spec.get("storageClassName"),
        "VolumeMode": spec.get("volumeMode"),
        "DataSource": _typed_ref(spec.get("dataSource"), with_namespace=False),
        "DataSourceRef": _typed_ref(spec.get("dataSourceRef"), with_namespace=True),
        "VolumeAttributesClassName": spec.get("volumeAttributesClassName"),
    }


def volume_attachment_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`storage.VolumeAttachmentSpec` in Go field order."""
    source = spec.get("source") or {}
    return {
        "Attacher": spec.get("attacher", ""),
        "Source": {
            "PersistentVolumeName": source.get("persistentVolumeName"),
            "InlineVolumeSpec": source.get("inlineVolumeSpec"),
        },
        "NodeName": spec.get("nodeName", ""),
    }


def compact(value: Any) -> str:
    """`json.Marshal`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def diff(old: Any, new: Any) -> str:
    """apimachinery's `diff.Diff`: a unified diff (3 lines of context, no header) of the indented JSON."""
    before = (json.dumps(old, indent=1, ensure_ascii=False) + "\n").splitlines(keepends=True)
    after = (json.dumps(new, indent=1, ensure_ascii=False) + "\n").splitlines(keepends=True)
    lines = list(difflib.unified_diff(before, after, n=3))
    return "".join(lines[2:])
