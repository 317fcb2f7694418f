"""Volumes in use: which PVCs a running pod mounts, for drivers that can only expand offline.

Upstream (`--handle-volume-inuse-error`, on by default) keeps a cluster-wide Pod informer with whole
Pod objects, which is what makes external-resizer run out of memory on large clusters
(external-resizer#211, #88). Here the Pod informer's `transform` (`slim_pod`) keeps only what the
decision needs — namespace, name, resourceVersion, claim names, node and phase — in about 500 bytes
per pod instead of about 18 KB for a whole parsed Pod, and the claim → pods map is an index of the
informer's own store, so there is no second copy: a PVC is in use when `claims_index` lists a pod for
`namespace/claim`. The Pod informer also lists in small pages (`controller.POD_PAGE_SIZE`).

`InUseTracker` adds upstream's other half: the PVCs whose last ControllerExpandVolume failed with
FailedPrecondition ("volume in use"), which are not expanded again while a pod uses them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from common.kube.informer import Informer

CLAIMS_INDEX = "claims"
TERMINATED_PHASES = frozenset({"Succeeded", "Failed"})


def _interned(value: Any) -> str:
    return sys.intern(str(value)) if value else ""


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """The Pod informer's transform: the few fields `claims_index` needs (about 500 bytes a pod)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    claims = tuple(
        str(source["claimName"])
        for volume in spec.get("volumes") or ()
        if isinstance(volume, Mapping)
        and isinstance(source := volume.get("persistentVolumeClaim"), Mapping)
        and source.get("claimName")
    )
    return {
        "metadata": {
            "name": meta.get("name", ""),
            "namespace": _interned(meta.get("namespace")),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "claims": claims,
        "node": _interned(spec.get("nodeName")),
        "phase": _interned((pod.get("status") or {}).get("phase")),
    }


def claims_index(pod: Mapping[str, Any]) -> Iterable[str]:
    """`namespace/claim` of every PVC a non-terminated pod uses (inUsePVCStore.addPod)."""
    if pod.get("phase") in TERMINATED_PHASES:
        return ()
    namespace = (pod.get("metadata") or {}).get("namespace", "")
    return [f"{namespace}/{claim}" for claim in pod.get("claims") or ()]


class InUseTracker:
    """inUsePVCStore: pods using PVCs (from the slim Pod informer) and PVCs with in-use errors."""

    def __init__(self, pods: Informer | None) -> None:
        self._pods = pods
        if pods is not None:
            pods.add_index(CLAIMS_INDEX, claims_index)
        self._errors: set[str] = set()

    def in_use(self, pvc_key: str) -> bool:
        """checkForUse: a running pod mounts `namespace/name` (always False without the Pod informer)."""
        return self._pods is not None and bool(self._pods.store.by_index(CLAIMS_INDEX, pvc_key))

    def has_error(self, uid: str) -> bool:
        return uid in self._errors

    def add_error(self, uid: str) -> None:
        self._errors.add(uid)

    def remove_error(self, uid: str) -> None:
        self._errors.discard(uid)
