"""csi-resizer's two-way strategic merge patches: Go's shape, and applying them gives the edited object."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecars.resizer.patches import claim_patch, two_way_patch
from testbed.apiserver.strategic import strategic_merge_patch


def _without_nulls(value: Any) -> Any:
    """What a stored object looks like: keys set to null are absent."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_equal_objects_give_an_empty_patch() -> None:
    obj = {"metadata": {"name": "a"}, "status": {"conditions": [{"type": "Resizing", "status": "True"}]}}
    assert two_way_patch(obj, copy.deepcopy(obj)) == {}


def test_maps_changed_added_and_removed_keys() -> None:
    old = {"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"capacity": {"storage": "1Gi"}}}
    new = {"metadata": {"annotations": {"a": "1", "c": "3"}}, "spec": {"capacity": {"storage": "2Gi"}}}
    assert two_way_patch(old, new) == {
        "metadata": {"annotations": {"b": None, "c": "3"}},
        "spec": {"capacity": {"storage": "2Gi"}},
    }


def test_conditions_are_merged_by_type_with_element_order() -> None:
    resizing = {"type": "Resizing", "status": "True", "lastProbeTime": None, "lastTransitionTime": "t0"}
    pending = {"type": "FileSystemResizePending", "status": "True", "message": "m", "lastProbeTime": None}
    old = {"status": {"conditions": [resizing], "phase": "Bound"}}
    new = {"status": {"conditions": [resizing, pending], "phase": "Bound"}}
    assert two_way_patch(old, new) == {
        "status": {
            "$setElementOrder/conditions": [{"type": "Resizing"}, {"type": "FileSystemResizePending"}],
            "conditions": [pending],
        }
    }
    changed = {"status": {"conditions": [{**resizing, "lastTransitionTime": "t1"}], "phase": "Bound"}}
    assert two_way_patch(old, changed)["status"]["conditions"] == [
        {"type": "Resizing", "lastTransitionTime": "t1"}
    ]
    gone = {"status": {"conditions": [pending], "phase": "Bound"}}
    assert two_way_patch(new, gone)["status"]["conditions"] == [{"type": "Resizing", "$patch": "delete"}]
    assert two_way_patch(new, {"status": {"phase": "Bound"}}) == {"status": {"conditions": None}}


def test_other_lists_are_replaced() -> None:
    old = {"spec": {"accessModes": ["ReadWriteOnce"]}}
    new = {"spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}}
    assert two_way_patch(old, new) == {"spec": {"accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}}


def test_claim_patch_adds_the_resource_version_precondition() -> None:
    old = {"metadata": {"name": "a", "resourceVersion": "41"}, "status": {"phase": "Bound"}}
    new = {"metadata": {"name": "a", "resourceVersion": "41"}, "status": {"phase": "Bound", "x": "y"}}
    assert claim_patch(old, new, check_rv=True) == {
        "metadata": {"resourceVersion": "41"},
        "status": {"x": "y"},
    }
    assert claim_patch(old, new, check_rv=False) == {"status": {"x": "y"}}
    assert claim_patch(old, old, check_rv=True) == {"metadata": {"resourceVersion": "41"}}


_CONDITION_TYPES = ["Resizing", "FileSystemResizePending", "ControllerResizeError", "ModifyingVolume"]
_text = st.sampled_from(["", "a", "b", "1Gi", "2Gi"])
_condition = st.fixed_dictionaries(
    {"status": st.sampled_from(["True", "False"])},
    optional={
        "message": _text,
        "lastTransitionTime": st.sampled_from(["t0", "t1"]),
        "lastProbeTime": st.none(),
    },
)


@st.composite
def _claims(draw: st.DrawFn) -> dict[str, Any]:
    types = draw(st.lists(st.sampled_from(_CONDITION_TYPES), unique=True, max_size=4))
    status: dict[str, Any] = {"phase": "Bound"}
    if types:
        status["conditions"] = [{"type": t, **draw(_condition)} for t in types]
    for field in ("capacity", "allocatedResources", "allocatedResourceStatuses"):
        if draw(st.booleans()):
            status[field] = {"storage": draw(_text)}
    meta: dict[str, Any] = {"name": "data", "namespace": "default"}
    annotations = draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), _text, max_size=3))
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta, "status": status}


@settings(max_examples=300, deadline=None)
@given(_claims(), _claims())
def test_applying_the_patch_gives_the_new_object(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = two_way_patch(old, new)
    applied = strategic_merge_patch(copy.deepcopy(old), copy.deepcopy(patch), "PersistentVolumeClaim")
    assert _without_nulls(applied) == _without_nulls(new)
