"""Two-way strategic merge patches: the PATCH body that turns an object into its edited copy.

apimachinery's `strategicpatch.CreateTwoWayMergePatch`, for what the resizer edits (PVC status and
metadata, PV spec and annotations):

* maps are diffed key by key: a changed or added key carries its new value (maps recursively), a
  removed key is `null`;
* lists with a merge key (`status.conditions`, keyed by `type`) carry only the changed items (their
  changed fields plus the key), `{"$patch": "delete", "type": ...}` for removed items, and
  `$setElementOrder/conditions` with the new order, as Go writes them;
* any other list is replaced whole when it changed.

`claim_patch(old, new, check_rv=True)` adds `metadata.resourceVersion` of `old`, which the API server
treats as a precondition (409 Conflict when the claim changed meanwhile), as `util.PatchClaim` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Obj = dict[str, Any]

MERGE_KEYS: Mapping[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
}
"""Lists merged by a key (`patchStrategy:"merge"` in the Go types), by their path."""


def two_way_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
    """The strategic merge patch from `old` to `new` ({} when they are equal)."""
    return _diff_maps(old, new, ())


def claim_patch(old: Mapping[str, Any], new: Mapping[str, Any], *, check_rv: bool) -> Obj:
    """`two_way_patch`, plus old's resourceVersion as a precondition when `check_rv`."""
    patch = two_way_patch(old, new)
    if check_rv:
        rv = (old.get("metadata") or {}).get("resourceVersion")
        if rv:
            patch.setdefault("metadata", {})["resourceVersion"] = rv
    return patch


def _diff_maps(old: Mapping[str, Any], new: Mapping[str, Any], path: tuple[str, ...]) -> Obj:
    patch: Obj = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        here = (*path, key)
        if key not in old:
            patch[key] = value
            continue
        before = old[key]
        if before == value:
            continue
        if isinstance(before, Mapping) and isinstance(value, Mapping):
            sub = _diff_maps(before, value, here)
            if sub:
                patch[key] = sub
        elif here in MERGE_KEYS and isinstance(before, list) and isinstance(value, list):
            items, order = _diff_merge_list(before, value, MERGE_KEYS[here])
            patch[f"$setElementOrder/{key}"] = order
            if items:
                patch[key] = items
        else:
            patch[key] = value
    return patch


def _diff_merge_list(old: Sequence[Any], new: Sequence[Any], merge_key: str) -> tuple[list[Any], list[Any]]:
    """(patch items, $setElementOrder) of a list merged by `merge_key`."""
    before = {item.get(merge_key): item for item in old if isinstance(item, Mapping)}
    after_keys = {item.get(merge_key) for item in new if isinstance(item, Mapping)}
    items: list[Any] = []
    for item in new:
        if not isinstance(item, Mapping):
            continue
        previous = before.get(item.get(merge_key))
        if previous is None:
            items.append(dict(item))
        elif previous != item:
            change = _diff_maps(previous, item, ())
            items.append({merge_key: item.get(merge_key), **change})
    for key in before:
        if key not in after_keys:
            items.append({merge_key: key, "$patch": "delete"})
    order = [{merge_key: item.get(merge_key)} for item in new if isinstance(item, Mapping)]
    return items, order
