"""Adding and removing finalizers safely when several controllers share an object.

Two sidecars merge-patching `metadata.finalizers` from stale caches drop each other's finalizer
(external-provisioner#1217). So, as external-attacher does, finalizers change only through JSON
patches that carry `test` operations: the patch applies only if the list on the server is still the
one we decided on; otherwise the server answers 422, we read the object again and decide again.

The decision starts from the object the caller passes (usually an informer's copy). If that copy
says there is nothing to do, nothing is sent: a copy that is behind will be followed by an informer
event for the newer object, and the controller's next sync acts on it.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from common.kube.client import ApiError, KubeClient
from common.kube.resources import Resource

MAX_ATTEMPTS = 8


def finalizers_of(obj: dict[str, Any]) -> list[str]:
    return list((obj.get("metadata") or {}).get("finalizers") or [])


def add_patch(obj: dict[str, Any], finalizer: str) -> list[dict[str, Any]] | None:
    """A JSON patch adding `finalizer`, guarded by a test of the current list; None if already there."""
    current = finalizers_of(obj)
    if finalizer in current:
        return None
    if not current:
        return [
            {"op": "test", "path": "/metadata/finalizers", "value": None},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ]
    return [
        {"op": "test", "path": "/metadata/finalizers", "value": current},
        {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
    ]


def remove_patch(obj: dict[str, Any], finalizer: str) -> list[dict[str, Any]] | None:
    """A JSON patch removing `finalizer` by index, guarded by a test of that index; None if absent."""
    current = finalizers_of(obj)
    if finalizer not in current:
        return None
    index = current.index(finalizer)
    return [
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]


async def _change(
    client: KubeClient, resource: Resource, obj: dict[str, Any], finalizer: str, *, add: bool
) -> dict[str, Any]:
    meta = obj["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    for attempt in range(MAX_ATTEMPTS):
        patch = add_patch(obj, finalizer) if add else remove_patch(obj, finalizer)
        if patch is None:
            return obj
        try:
            return await client.patch(resource, name, patch, namespace=namespace, patch_type="json")
        except ApiError as exc:
            if not (exc.invalid or exc.conflict):
                raise
            await asyncio.sleep(random.uniform(0, 0.01 * (attempt + 1)))  # let the other writer finish
            obj = await client.get(resource, name, namespace=namespace)  # our view was stale
    raise ApiError(409, "Conflict", f"{resource} {name}: finalizer {finalizer} kept changing under us")


async def add_finalizer(
    client: KubeClient, resource: Resource, obj: dict[str, Any], finalizer: str
) -> dict[str, Any]:
    """Ensure `finalizer` is on the object; returns the object as the server has it now."""
    return await _change(client, resource, obj, finalizer, add=True)


async def remove_finalizer(
    client: KubeClient, resource: Resource, obj: dict[str, Any], finalizer: str
) -> dict[str, Any]:
    """Ensure `finalizer` is off the object (a NotFound object counts as done)."""
    try:
        return await _change(client, resource, obj, finalizer, add=False)
    except ApiError as exc:
        if exc.not_found:
            return obj
        raise
