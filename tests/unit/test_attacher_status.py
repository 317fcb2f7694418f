"""What the attacher writes to a VolumeAttachment, checked against the golden objects 03 and 05."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_attacher_fakes import FINALIZER, evanphx_json_patch, va

from sidecars.attacher.request import NODE_ID_ANNOTATION
from sidecars.attacher.status import (
    attached_patch,
    detached_patch,
    error_patch,
    merge_diff,
    metadata_patch,
    should_enqueue,
)
from testbed.apiserver.patch import PatchError, merge_patch

GOLDEN = Path(__file__).parent.parent / "golden"


def golden(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((GOLDEN / name).read_text())
    return result


def test_merge_diff_is_create_merge_patch() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "f": "x"}
    diff = merge_diff(old, new)
    assert diff == {"b": {"d": 4}, "e": None, "f": "x"}
    assert merge_patch(old, diff) == new


def test_attach_writes_golden_03() -> None:
    """Finalizer and annotation first, then `status: {attached: true}` (hostpath has no publish_context)."""
    want = golden("03-attached-va.json")
    obj = va(
        want["metadata"]["name"],
        node=want["spec"]["nodeName"],
        pv=want["spec"]["source"]["persistentVolumeName"],
    )
    obj = evanphx_json_patch(obj, metadata_patch(obj, FINALIZER, "node-1"))
    patch = attached_patch(obj, {})
    assert patch == {"status": {"attached": True}}
    obj = merge_patch(obj, patch)
    assert obj["metadata"]["finalizers"] == want["metadata"]["finalizers"]
    assert obj["metadata"]["annotations"] == want["metadata"]["annotations"]
    assert obj["status"] == want["status"]
    assert obj["spec"] == want["spec"]


def test_attach_error_is_golden_05_and_error_code_only_when_given() -> None:
    want = golden("05-va-attach-error.json")
    message = want["status"]["attachError"]["message"]
    patch = error_patch("attachError", message, time="2026-11-22T23:54:50Z")
    assert merge_patch(va(), patch)["status"] == want["status"]
    coded = error_patch("attachError", "rpc error: code = NotFound desc = x", code=5)
    assert coded["status"]["attachError"]["errorCode"] == 5
    assert (
        coded["status"]["attachError"]["time"].endswith("Z")
        and len(coded["status"]["attachError"]["time"]) == 20
    )


def test_attached_patch_sets_metadata_and_clears_the_error() -> None:
    obj = va(attachError={"message": "boom", "time": "t"}, attachmentMetadata={"old": "1", "keep": "2"})
    patch = attached_patch(obj, {"keep": "2", "device": "/dev/x"})
    assert patch == {
        "status": {
            "attached": True,
            "attachError": None,
            "attachmentMetadata": {"old": None, "device": "/dev/x"},
        }
    }
    assert merge_patch(obj, patch)["status"] == {
        "attached": True,
        "attachmentMetadata": {"keep": "2", "device": "/dev/x"},
    }
    assert attached_patch(merge_patch(obj, patch), {"keep": "2", "device": "/dev/x"}) is None


def test_detached_patch_clears_metadata_and_detach_error() -> None:
    obj = va(
        attached=True, attachmentMetadata={"device": "/dev/x"}, detachError={"message": "m", "time": "t"}
    )
    patch = detached_patch(obj)
    assert patch == {"status": {"attached": False, "attachmentMetadata": None, "detachError": None}}
    assert detached_patch(va()) is None


def test_metadata_patch_is_guarded_and_only_sends_what_is_missing() -> None:
    obj = va()
    obj["metadata"]["resourceVersion"] = "7"
    ops = metadata_patch(obj, FINALIZER, "node-1")
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        {"op": "add", "path": "/metadata/annotations", "value": {NODE_ID_ANNOTATION: "node-1"}},
    ]
    done = evanphx_json_patch(obj, ops)
    assert metadata_patch(done, FINALIZER, "node-1") is None
    moved = metadata_patch(done, FINALIZER, "node-2")
    assert moved == [
        {"op": "add", "path": "/metadata/annotations/csi.alpha.kubernetes.io~1node-id", "value": "node-2"}
    ]
    other = va()
    other["metadata"].update(finalizers=["keep/me"], annotations={"a": "b"})
    ops = metadata_patch(other, FINALIZER, "n")
    assert ops is not None and ops[0] == {"op": "test", "path": "/metadata/finalizers", "value": ["keep/me"]}
    patched = evanphx_json_patch(other, ops)
    assert patched["metadata"]["finalizers"] == ["keep/me", FINALIZER]
    assert patched["metadata"]["annotations"] == {"a": "b", NODE_ID_ANNOTATION: "n"}


def test_metadata_patch_on_a_stale_cache_does_not_apply() -> None:
    cached = va()
    cached["metadata"]["resourceVersion"] = "7"
    server = json.loads(json.dumps(cached))
    server["metadata"].update(resourceVersion="8", finalizers=["someone/else"])
    ops = metadata_patch(cached, FINALIZER, "node-1")
    assert ops is not None
    with pytest.raises(PatchError):
        evanphx_json_patch(server, ops)


def _version(obj: dict[str, Any], rv: str, **status: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(obj))
    copy["metadata"]["resourceVersion"] = rv
    copy["status"].update(status)
    return copy


def test_only_error_changes_are_filtered_out() -> None:
    base = _version(va(), "1")
    error = {"message": "boom", "time": "t"}
    assert should_enqueue(base, base)  # resync
    assert should_enqueue(base, _version(base, "2", attached=True))  # no errors anywhere
    assert not should_enqueue(base, _version(base, "2", attachError=error))  # our own report
    with_error = _version(base, "2", attachError=error)
    assert not should_enqueue(with_error, _version(base, "3"))  # ... and its clearing
    assert should_enqueue(with_error, _version(with_error, "3", attached=True))
    deleting = _version(with_error, "3")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert should_enqueue(with_error, deleting)
    detach_error = _version(deleting, "4", detachError=error)
    assert not should_enqueue(deleting, detach_error)
