"""The three patch types as the server applies them: strategic merge, JSON merge, JSON patch."""

from __future__ import annotations

from typing import Any

import pytest

from testbed.apiserver import BadRequest, Conflict, Invalid, Store
from testbed.apiserver.errors import UnsupportedMediaType
from testbed.apiserver.patch import PatchError, json_patch, merge_patch
from testbed.apiserver.strategic import strategic_merge_patch

PVC = "persistentvolumeclaims"


def claim(**status: Any) -> dict[str, Any]:
    return {
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "c", "finalizers": ["a", "b"], "annotations": {"x": "1", "y": "2"}},
        "spec": {"accessModes": ["ReadWriteOnce"]},
        "status": status,
    }


def test_strategic_finalizers_merge_as_a_set_new_ones_first() -> None:
    result = strategic_merge_patch(claim(), {"metadata": {"finalizers": ["c", "a"]}}, "PersistentVolumeClaim")
    assert result["metadata"]["finalizers"] == ["c", "a", "b"]


def test_strategic_delete_from_primitive_list_and_set_element_order() -> None:
    patch = {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "$setElementOrder/finalizers": ["b"]}}
    assert strategic_merge_patch(claim(), patch, "PersistentVolumeClaim")["metadata"]["finalizers"] == ["b"]
    reorder = {"metadata": {"$setElementOrder/finalizers": ["b", "a"]}}
    assert strategic_merge_patch(claim(), reorder, "PersistentVolumeClaim")["metadata"]["finalizers"] == [
        "b",
        "a",
    ]
    both = {"metadata": {"$setElementOrder/finalizers": ["b", "z", "a"], "finalizers": ["z"]}}
    assert strategic_merge_patch(claim(), both, "PersistentVolumeClaim")["metadata"]["finalizers"] == [
        "b",
        "z",
        "a",
    ]


def test_strategic_conditions_merge_by_type() -> None:
    conditions = [
        {"type": "Resizing", "status": "True"},
        {"type": "FileSystemResizePending", "status": "True"},
    ]
    original = claim(conditions=conditions)
    patch = {"status": {"conditions": [{"type": "Resizing", "status": "False", "message": "done"}]}}
    merged = strategic_merge_patch(original, patch, "PersistentVolumeClaim")["status"]["conditions"]
    assert merged == [{"type": "Resizing", "status": "False", "message": "done"}, conditions[1]]
    delete = {"status": {"conditions": [{"type": "Resizing", "$patch": "delete"}]}}
    remaining = strategic_merge_patch(claim(conditions=conditions), delete, "PersistentVolumeClaim")
    assert remaining["status"]["conditions"] == [conditions[1]]
    replace = {"status": {"conditions": [{"$patch": "replace"}, {"type": "New", "status": "True"}]}}
    replaced = strategic_merge_patch(claim(conditions=conditions), replace, "PersistentVolumeClaim")
    assert replaced["status"]["conditions"] == [{"type": "New", "status": "True"}]


def test_strategic_maps_merge_nulls_delete_and_directives() -> None:
    original = claim(
        allocatedResources={"storage": "1Gi"},
        allocatedResourceStatuses={"storage": "ControllerResizeInProgress"},
    )
    patch = {
        "metadata": {"annotations": {"x": None, "z": "3"}},
        "status": {"allocatedResourceStatuses": {"storage": None}, "capacity": {"storage": "2Gi"}},
    }
    result = strategic_merge_patch(original, patch, "PersistentVolumeClaim")
    assert result["metadata"]["annotations"] == {"y": "2", "z": "3"}
    assert result["status"]["allocatedResourceStatuses"] == {}, "the server then drops the empty map"
    assert result["status"]["capacity"] == {"storage": "2Gi"}
    replaced = strategic_merge_patch(
        claim(), {"metadata": {"annotations": {"$patch": "replace", "only": "1"}}}, "X"
    )
    assert replaced["metadata"]["annotations"] == {"only": "1"}
    wiped = strategic_merge_patch(claim(), {"metadata": {"annotations": {"$patch": "delete"}}}, "X")
    assert wiped["metadata"]["annotations"] == {}
    kept = strategic_merge_patch(
        claim(), {"spec": {"$retainKeys": ["volumeMode"], "volumeMode": "Block"}}, "X"
    )
    assert kept["spec"] == {"volumeMode": "Block"}


def test_strategic_lists_without_strategy_are_replaced() -> None:
    result = strategic_merge_patch(
        claim(), {"spec": {"accessModes": ["ReadWriteMany"]}}, "PersistentVolumeClaim"
    )
    assert result["spec"]["accessModes"] == ["ReadWriteMany"]


def test_strategic_pod_containers_merge_by_name() -> None:
    pod = {
        "spec": {
            "containers": [{"name": "a", "image": "1", "env": [{"name": "E", "value": "1"}]}, {"name": "b"}]
        }
    }
    patch = {"spec": {"containers": [{"name": "a", "env": [{"name": "F", "value": "2"}]}]}}
    merged = strategic_merge_patch(pod, patch, "Pod")["spec"]["containers"]
    assert merged[0] == {
        "name": "a",
        "image": "1",
        "env": [{"name": "F", "value": "2"}, {"name": "E", "value": "1"}],
    }
    assert merged[1] == {"name": "b"}


def test_merge_patch_is_rfc_7386() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": None}, "l": [3]}) == {
        "a": {"c": 2},
        "l": [3],
    }


def test_json_patch_escapes_append_and_test() -> None:
    doc = {"metadata": {"annotations": {"a/b": "1", "c~d": "2"}, "finalizers": ["x"]}}
    ops = [
        {"op": "test", "path": "/metadata/annotations/a~1b", "value": "1"},
        {"op": "replace", "path": "/metadata/annotations/c~0d", "value": "3"},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "y"},
        {"op": "move", "from": "/metadata/finalizers/0", "path": "/metadata/finalizers/1"},
        {"op": "copy", "from": "/metadata/finalizers", "path": "/metadata/copied"},
        {"op": "remove", "path": "/metadata/annotations/a~1b"},
    ]
    result = json_patch(doc, ops)
    assert result["metadata"] == {"annotations": {"c~d": "3"}, "finalizers": ["y", "x"], "copied": ["y", "x"]}
    assert doc["metadata"]["finalizers"] == ["x"], "the input is not modified"
    for failing in (
        [{"op": "test", "path": "/metadata/finalizers/0", "value": "nope"}],
        [{"op": "remove", "path": "/metadata/missing"}],
        [{"op": "replace", "path": "/metadata/finalizers/5", "value": "z"}],
    ):
        with pytest.raises(PatchError):
            json_patch(doc, failing)


async def test_store_patch_errors_match_the_server() -> None:
    store = Store()
    body = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c"}}
    body["spec"] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    created = await store.create(PVC, body, namespace="default")
    with pytest.raises(Invalid) as failed_test:
        await store.patch(
            PVC,
            "c",
            [{"op": "test", "path": "/spec/volumeMode", "value": "Block"}],
            patch_type="json",
            namespace="default",
        )
    assert failed_test.value.status["details"] == {}
    with pytest.raises(BadRequest):
        await store.patch(PVC, "c", {"op": "add"}, patch_type="json", namespace="default")
    stale = {"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}}
    with pytest.raises(Conflict):
        await store.patch(PVC, "c", stale, patch_type="merge", namespace="default")
    current = {"metadata": {"resourceVersion": created["metadata"]["resourceVersion"], "labels": {"a": "b"}}}
    assert (await store.patch(PVC, "c", current, namespace="default"))["metadata"]["labels"] == {"a": "b"}
    snapshot = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "s"},
        "spec": {},
    }
    await store.create("volumesnapshots", snapshot, namespace="default")
    with pytest.raises(UnsupportedMediaType):
        await store.patch(
            "volumesnapshots", "s", {"spec": {"x": 1}}, patch_type="strategic", namespace="default"
        )
    patched = await store.patch(
        "volumesnapshots", "s", {"spec": {"x": 1}}, patch_type="merge", namespace="default"
    )
    assert patched["metadata"]["generation"] == 2, "custom resources count any spec change"


def test_json_patch_test_of_null_passes_for_a_missing_key() -> None:
    """evanphx/json-patch (kube-apiserver): a missing object key tests equal to null, not an error."""
    doc = {"metadata": {"name": "x"}}
    patched = json_patch(
        doc,
        [
            {"op": "test", "path": "/metadata/finalizers", "value": None},
            {"op": "add", "path": "/metadata/finalizers", "value": ["a"]},
        ],
    )
    assert patched["metadata"]["finalizers"] == ["a"]
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/metadata/finalizers", "value": []}])
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/missing/finalizers", "value": None}])
