"""Owner lookup: the object that owns the CSIStorageCapacity objects, found by walking up from our Pod.

external-provisioner's `pkg/owner.Lookup` with `--capacity-ownerref-level` N: GET the Pod `$POD_NAME`
in `$NAMESPACE` (level 0 is the Pod itself), follow its controlling ownerReference one level (level 1
is answered from the Pod's reference alone, so only Pods need a GET — a ReplicaSet, StatefulSet or
DaemonSet), and GET each further owner (level 2: the ReplicaSet, giving its Deployment; ...). The
result is an ownerReference with apiVersion, kind, name, uid and `controller: true`, so garbage
collection removes the capacity objects with the deployment. Failures read as upstream's, e.g.
`apps/v1/ReplicaSet "x" in namespace "y" has no controlling owner, cannot unwind the ownership further`.
"""

from __future__ import annotations

from typing import Any

from common.kube.client import ApiError, KubeClient
from common.kube.resources import (
    DAEMON_SETS,
    DEPLOYMENTS,
    PODS,
    REPLICA_SETS,
    STATEFUL_SETS,
    Resource,
)

Obj = dict[str, Any]
KNOWN: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r for r in (PODS, REPLICA_SETS, STATEFUL_SETS, DAEMON_SETS, DEPLOYMENTS)
}


class OwnerError(Exception):
    """The owner chain cannot be walked as far as asked."""


def resource_for(api_version: str, kind: str) -> Resource:
    """The REST resource of an owner kind (a plain lowercase plural for kinds we do not know)."""
    known = KNOWN.get((api_version, kind))
    if known is not None:
        return known
    group, _, version = api_version.rpartition("/")
    return Resource(group, version, kind.lower() + "s", kind, True)


def reference(api_version: str, kind: str, name: str, uid: str) -> Obj:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": True}


async def lookup(kube: KubeClient, namespace: str, name: str, levels: int) -> Obj:
    """The ownerReference `levels` steps up from Pod `namespace/name` (see the module docstring)."""
    api_version, kind = "v1", "Pod"
    while True:
        try:
            obj = await kube.get(resource_for(api_version, kind), name, namespace=namespace)
        except ApiError as err:
            raise OwnerError(f"get object: {err}") from None
        meta = obj.get("metadata") or {}
        if levels == 0:
            return reference(api_version, kind, name, str(meta.get("uid", "")))
        owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
        if owner is None:
            raise OwnerError(
                f'{api_version}/{kind} "{name}" in namespace "{namespace}" has no controlling owner, '
                "cannot unwind the ownership further"
            )
        api_version, kind, name = str(owner["apiVersion"]), str(owner["kind"]), str(owner["name"])
        if levels == 1:
            return reference(api_version, kind, name, str(owner.get("uid", "")))
        levels -= 1
