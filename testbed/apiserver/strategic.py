"""Strategic merge patch: JSON merge plus per-field list strategies (apimachinery `util/strategicpatch`).

A field's strategy comes from the Go struct tags (`patchStrategy:"merge" patchMergeKey:"type"`); here
it comes from a small schema per kind (`SCHEMAS`) covering what clients patch: `metadata.finalizers`
(a set of strings), `metadata.ownerReferences`, `status.conditions` (merged by `type`), node
addresses, CSINode drivers, pod containers and volumes. Lists without a strategy are replaced; maps
merge key by key; `null` deletes a key.

Directives: `$patch: replace|delete` on a map or a list item, `$deleteFromPrimitiveList/<field>`,
`$setElementOrder/<field>` and `$retainKeys`. Merged lists are ordered as the server orders them:
the patch's items in patch (or `$setElementOrder`) order, interleaved with the server-only items by
their position in the live list (golden cases 16-18).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from testbed.apiserver.patch import MalformedPatch, PatchError

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_FROM = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


@dataclass(frozen=True)
class MergeList:
    """A list field with `patchStrategy:"merge"`: keyed by `key` (maps) or a set (scalars, key None)."""

    key: str | None = None
    item: Schema = field(default_factory=dict)


Schema = dict[str, Union["Schema", MergeList]]

_META: Schema = {"finalizers": MergeList(), "ownerReferences": MergeList("uid")}
_CONDITIONS = MergeList("type")
_CONTAINER: Schema = {
    "ports": MergeList("containerPort"),
    "env": MergeList("name"),
    "volumeMounts": MergeList("mountPath"),
    "volumeDevices": MergeList("devicePath"),
}
_POD_SPEC: Schema = {
    "containers": MergeList("name", _CONTAINER),
    "initContainers": MergeList("name", _CONTAINER),
    "ephemeralContainers": MergeList("name", _CONTAINER),
    "volumes": MergeList("name"),
    "imagePullSecrets": MergeList("name"),
    "hostAliases": MergeList("ip"),
    "resourceClaims": MergeList("name"),
    "schedulingGates": MergeList("name"),
}
_WORKLOAD: Schema = {
    "metadata": _META,
    "spec": {"template": {"metadata": _META, "spec": _POD_SPEC}},
    "status": {"conditions": _CONDITIONS},
}

SCHEMAS: dict[str, Schema] = {
    "Pod": {
        "metadata": _META,
        "spec": _POD_SPEC,
        "status": {"conditions": _CONDITIONS, "podIPs": MergeList("ip"), "hostIPs": MergeList("ip")},
    },
    "PersistentVolumeClaim": {"metadata": _META, "status": {"conditions": _CONDITIONS}},
    "Node": {
        "metadata": _META,
        "spec": {"podCIDRs": MergeList()},
        "status": {"conditions": _CONDITIONS, "addresses": MergeList("type")},
    },
    "Namespace": {"metadata": _META, "status": {"conditions": _CONDITIONS}},
    "CSINode": {"metadata": _META, "spec": {"drivers": MergeList("name")}},
    "Deployment": _WORKLOAD,
    "ReplicaSet": _WORKLOAD,
    "StatefulSet": _WORKLOAD,
    "DaemonSet": _WORKLOAD,
}
DEFAULT_SCHEMA: Schema = {"metadata": _META}


def strategic_merge_patch(original: dict[str, Any], patch: Any, kind: str) -> dict[str, Any]:
    """Apply `patch` to a copy-safe `original` (it is modified) with the schema of `kind`."""
    if not isinstance(patch, dict):
        raise MalformedPatch("invalid JSON document")
    return _merge_map(original, patch, SCHEMAS.get(kind, DEFAULT_SCHEMA))


def _sub_schema(schema: Schema, key: str) -> Schema:
    sub = schema.get(key)
    return sub if isinstance(sub, dict) else {}


def _merge_map(original: dict[str, Any], patch: dict[str, Any], schema: Schema) -> dict[str, Any]:
    patch = dict(patch)
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return _merge_map({}, patch, schema)
        if directive == "delete":
            return {}
        raise MalformedPatch(f"Unknown patch type: {directive} in map: {patch}")
    if _RETAIN_KEYS in patch:
        keep = patch.pop(_RETAIN_KEYS)
        if not isinstance(keep, list):
            raise MalformedPatch("doesn't match the $retainKeys list")
        for key in list(original):
            if key not in keep:
                del original[key]
    for key in [k for k in patch if k.startswith(_SET_ORDER)]:
        name = key[len(_SET_ORDER) :]
        order = patch.pop(key)
        if not isinstance(order, list):
            raise MalformedPatch("invalid type for $setElementOrder list")
        strategy = schema.get(name)
        merge_key = strategy.key if isinstance(strategy, MergeList) else None
        if name in patch and name in original and isinstance(strategy, MergeList):
            merged = _merge_list(original[name], patch.pop(name), strategy, order=order)
        elif name in patch:
            merged = _new_value(patch.pop(name), strategy)
        elif name in original:
            merged = _reorder(original[name], order, original[name], merge_key)
        else:
            continue
        original[name] = merged
    for key, value in patch.items():
        if key.startswith(_DELETE_FROM):
            name = key[len(_DELETE_FROM) :]
            if isinstance(original.get(name), list) and isinstance(value, list):
                original[name] = [item for item in original[name] if item not in value]
            continue
        if value is None:
            original.pop(key, None)
            continue
        strategy = schema.get(key)
        current = original.get(key)
        if key not in original or type(current) is not type(value):
            original[key] = _new_value(value, strategy)
        elif isinstance(value, dict) and isinstance(current, dict):
            original[key] = _merge_map(current, value, _sub_schema(schema, key))
        elif isinstance(value, list) and isinstance(current, list) and isinstance(strategy, MergeList):
            original[key] = _merge_list(current, value, strategy, order=None)
        else:
            original[key] = _new_value(value, strategy)
    return original


def _new_value(value: Any, strategy: Schema | MergeList | None) -> Any:
    """A patch value with no counterpart in the object, its directives processed against nothing."""
    if isinstance(value, dict):
        return _merge_map({}, value, strategy if isinstance(strategy, dict) else {})
    if isinstance(value, list) and isinstance(strategy, MergeList):
        return _merge_list([], value, strategy, order=None)
    return value


def _identity(item: Any, key: str | None) -> Any:
    if key is None:
        return item if not isinstance(item, dict | list) else repr(item)
    if not isinstance(item, dict) or key not in item:
        raise PatchError(f"map: {item} does not contain declared merge key: {key}")
    return item[key]


def _merge_list(
    original: list[Any], patch: list[Any], strategy: MergeList, *, order: list[Any] | None
) -> list[Any]:
    key = strategy.key
    if key is None:
        merged: list[Any] = []
        for item in [*original, *patch]:
            if item not in merged:
                merged.append(item)
        plain_patch = patch
    else:
        original, plain_patch, replaced = _special_elements(original, patch, key)
        if replaced:
            return [_new_value(item, strategy.item) for item in plain_patch]
        merged = list(original)
        for item in plain_patch:
            ident = _identity(item, key)
            for index, existing in enumerate(merged):
                if isinstance(existing, dict) and existing.get(key) == ident:
                    merged[index] = _merge_map(existing, item, strategy.item)
                    break
            else:
                merged.append(_new_value(item, strategy.item))
    return _reorder(merged, order if order is not None else plain_patch, original, key)


def _special_elements(original: list[Any], patch: list[Any], key: str) -> tuple[list[Any], list[Any], bool]:
    plain, replace = [], False
    for item in patch:
        if not isinstance(item, dict) or _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            ident = _identity(item, key)
            original = [o for o in original if not (isinstance(o, dict) and o.get(key) == ident)]
        elif directive == "replace":
            replace = True
        else:
            raise MalformedPatch(f"Unknown patch type: {directive} in map: {item}")
    return original, plain, replace


def _position(items: list[Any], item: Any, key: str | None) -> int:
    ident = _identity(item, key)
    for index, candidate in enumerate(items):
        if isinstance(candidate, dict) and key is not None:
            if candidate.get(key) == ident:
                return index
        elif _identity(candidate, None) == ident:
            return index
    return -1


def _reorder(
    merged: list[Any], patch_order: list[Any], server_order: list[Any], key: str | None
) -> list[Any]:
    """The server's `normalizeElementOrder`: patch items in patch order, server-only items interleaved."""
    in_patch = [item for item in merged if _position(patch_order, item, key) >= 0]
    server_only = [item for item in merged if _position(patch_order, item, key) < 0]
    in_patch.sort(key=lambda item: _position(patch_order, item, key))
    server_only.sort(
        key=lambda item: (_position(server_order, item, key) < 0, _position(server_order, item, key))
    )
    result: list[Any] = []
    left, right = 0, 0
    while left < len(server_only) or right < len(in_patch):
        if right >= len(in_patch):
            result.append(server_only[left])
            left += 1
        elif left >= len(server_only):
            result.append(in_patch[right])
            right += 1
        else:
            left_at = _position(server_order, server_only[left], key)
            right_at = _position(server_order, in_patch[right], key)
            if left_at >= 0 and right_at >= 0 and left_at < right_at:
                result.append(server_only[left])
                left += 1
            else:
                result.append(in_patch[right])
                right += 1
    return result
