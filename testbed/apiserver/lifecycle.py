"""Object lifecycle rules of the generic registry: what create, update and delete do to an object's metadata.

Pure functions over plain dicts, following `k8s.io/apiserver/pkg/registry/rest` (`BeforeCreate`,
`BeforeUpdate`, `BeforeDelete`) and the strategies' status handling:

* create resets what the server owns (uid, creationTimestamp, generation, status) and generates a name;
* update keeps what cannot change (uid, creationTimestamp, deletionTimestamp), drops status changes
  sent to the main resource and everything but status sent to `/status` (golden cases 21-22), and bumps
  `generation` when the spec changed;
* `normalize` renders the object as the server would after a round trip through its Go types: fixed
  metadata field order, empty label/annotation/finalizer lists omitted.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from testbed.apiserver import errors
from testbed.apiserver.defaults import format_time
from testbed.apiserver.resources import ResourceType

Obj = dict[str, Any]
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
"""`k8s.io/apimachinery/pkg/util/rand`: no vowels, no confusable characters."""
_META_ORDER = [
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
]
_OMIT_EMPTY = ("labels", "annotations", "ownerReferences", "finalizers", "managedFields", "generateName")
_SERVER_OWNED = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
)


def generate_name(base: str, rng: random.Random) -> str:
    """`names.SimpleNameGenerator`: the base (cut to 58 characters) plus 5 random characters."""
    return base[:58] + "".join(rng.choice(_NAME_ALPHABET) for _ in range(5))


def check_type(rtype: ResourceType, obj: Any) -> Obj:
    """The body must be an object of this resource's kind and version (400 otherwise).

    Built-in kinds may omit `kind` and `apiVersion` (the server decodes with the endpoint's as default);
    custom resources are decoded as unstructured objects, which need them.
    """
    if not isinstance(obj, dict):
        raise errors.BadRequest("the body of the request must be a JSON object")
    if not rtype.custom:
        obj.setdefault("kind", rtype.kind)
        obj.setdefault("apiVersion", rtype.api_version)
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if not kind:
        raise errors.BadRequest(f"Object 'Kind' is missing in '{errors.go_value(obj)}'")
    if api_version != rtype.api_version:
        raise errors.BadRequest(
            f"the API version in the data ({api_version}) does not match the expected API version "
            f"({rtype.api_version})"
        )
    if kind != rtype.kind:
        raise errors.BadRequest(
            f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
        )
    if not isinstance(obj.get("metadata", {}), dict):
        raise errors.BadRequest("metadata must be an object")
    return obj


def prepare_create(rtype: ResourceType, obj: Obj, *, namespace: str, now: float, rng: random.Random) -> Obj:
    """`BeforeCreate`: server-owned metadata reset, name generated, `PrepareForCreate`, defaults."""
    meta = obj.setdefault("metadata", {})
    if rtype.namespaced:
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    if meta.get("resourceVersion"):
        raise errors.internal_error("resourceVersion should not be set on objects to be created")
    for key in (*_SERVER_OWNED, "generation", "selfLink", "resourceVersion"):
        meta.pop(key, None)
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = generate_name(str(meta["generateName"]), rng)
    meta["uid"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    meta["creationTimestamp"] = format_time(now)
    if rtype.generation:
        meta["generation"] = 1
    if rtype.prepare_create:
        rtype.prepare_create(obj, now)
    prune_nulls(obj)
    if rtype.defaults:
        rtype.defaults(obj)
    return obj


def _spec_part(rtype: ResourceType, obj: Obj) -> Obj:
    if rtype.custom:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}
    return {"spec": obj.get("spec")}


def prepare_update(rtype: ResourceType, old: Obj, new: Obj, *, subresource: str, now: float) -> Obj:
    """`BeforeUpdate` plus the (status) strategy's `PrepareForUpdate`; returns the object to store."""
    meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
    if subresource == "status":
        new = (
            {k: v for k, v in old.items() if k not in ("metadata", "status")}
            | {"metadata": meta}
            | ({"status": new["status"]} if "status" in new else {})
        )
        if rtype.status_resets_metadata:
            for key in ("labels", "annotations", "finalizers", "ownerReferences", "generation"):
                _copy_key(old_meta, meta, key)
    elif subresource == "finalize":
        finalizers = (new.get("spec") or {}).get("finalizers")
        new = {**old, "metadata": meta, "spec": {**(old.get("spec") or {}), "finalizers": finalizers}}
    elif "status" in rtype.subresources:
        new = {k: v for k, v in new.items() if k != "status"} | (
            {"status": old["status"]} if "status" in old else {}
        )
    new["kind"], new["apiVersion"] = rtype.kind, rtype.api_version
    for key in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
        _copy_key(old_meta, meta, key)
    if old_meta.get("deletionGracePeriodSeconds") is not None:
        meta.setdefault("deletionGracePeriodSeconds", old_meta["deletionGracePeriodSeconds"])
    if not old_meta.get("deletionTimestamp"):
        meta.pop("deletionGracePeriodSeconds", None)
    meta.pop("managedFields", None)
    meta.pop("selfLink", None)
    if rtype.generation:
        meta["generation"] = old_meta.get("generation", 1)
        if _spec_part(rtype, new) != _spec_part(rtype, old):
            meta["generation"] += 1
    if rtype.prepare_update and subresource != "finalize":
        rtype.prepare_update(new, old, now)
    prune_nulls(new)
    if rtype.defaults:
        rtype.defaults(new)
    return new


def prune_nulls(value: Any) -> None:
    """Drop `null` fields, as decoding into Go types does (a nil pointer or zero value is omitted)."""
    if isinstance(value, dict):
        for key in [k for k, v in value.items() if v is None]:
            del value[key]
        for item in value.values():
            prune_nulls(item)
    elif isinstance(value, list):
        for item in value:
            prune_nulls(item)


def _copy_key(source: Obj, target: Obj, key: str) -> None:
    if key in source:
        target[key] = source[key]
    else:
        target.pop(key, None)


def mark_deleted(rtype: ResourceType, old: Obj, *, now: float, grace: int) -> Obj:
    """`BeforeDelete` for an object kept by finalizers or a grace period: deletionTimestamp set."""
    obj = {**old, "metadata": dict(old["metadata"])}
    meta = obj["metadata"]
    meta["deletionTimestamp"] = format_time(now + grace)
    meta["deletionGracePeriodSeconds"] = grace
    if rtype.generation and meta.get("generation"):
        meta["generation"] += 1
    return obj


def normalize(obj: Obj) -> Obj:
    """The object as the server stores it: kind, apiVersion and metadata first; metadata in Go field order."""
    meta = {k: v for k, v in obj.get("metadata", {}).items() if v is not None}
    for key in _OMIT_EMPTY:
        if key in meta and not meta[key]:
            del meta[key]
    ordered_meta = {k: meta[k] for k in _META_ORDER if k in meta}
    ordered_meta.update((k, v) for k, v in meta.items() if k not in ordered_meta)
    result: Obj = {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"), "metadata": ordered_meta}
    result.update((k, v) for k, v in obj.items() if k not in result)
    return result


def same_object(a: Obj, b: Obj) -> bool:
    """True if storing `a` over `b` would change nothing (the server then writes nothing, golden case 21)."""
    if a.keys() != b.keys():
        return False
    meta_a = {k: v for k, v in a["metadata"].items() if k != "resourceVersion"}
    meta_b = {k: v for k, v in b["metadata"].items() if k != "resourceVersion"}
    return meta_a == meta_b and all(a[k] == b[k] for k in a if k != "metadata")


def meta_of(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}
