"""Volume matching: which PV satisfies a claim, as the PV controller's and the scheduler's binders decide.

`find_matching_volume` is `FindMatchingVolume` (pkg/controller/volume/persistentvolume/index.go and
component-helpers): a volume pre-bound to the claim wins; otherwise the smallest Available, unclaimed
volume that satisfies the claim (size, class, volume mode, access modes, attributes class, label
selector, and — when a node is given — node affinity). With delayed binding and no node, only a
pre-bound volume is returned: the scheduler binds the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from testbed.controllers.storage import (
    ANN_BETA_STORAGE_CLASS,
    annotations_of,
    claim_class,
    is_volume_bound_to_claim,
    node_affinity_matches,
    selector_matches,
    storage,
    volume_class,
)

Obj = dict[str, Any]
DEFAULT_CLASS_ANNOTATIONS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


def volume_mode(obj: Obj) -> str:
    return str((obj.get("spec") or {}).get("volumeMode") or "Filesystem")


def unsatisfied_because(volume: Obj, claim: Obj) -> str:
    """`checkVolumeSatisfyClaim`: why `volume` cannot serve `claim`, or "" if it can."""
    if (volume.get("metadata") or {}).get("deletionTimestamp"):
        return f"the volume is marked for deletion {volume['metadata']['name']!r}"
    spec, claim_spec = volume.get("spec") or {}, claim.get("spec") or {}
    requested = storage((claim_spec.get("resources") or {}).get("requests")) or 0
    if (storage(spec.get("capacity")) or 0) < requested:
        return "requested PV is too small"
    if volume_class(volume) != claim_class(claim):
        return "storageClassName does not match"
    if volume_mode(volume) != volume_mode(claim):
        return "incompatible volumeMode"
    if not set(claim_spec.get("accessModes") or []) <= set(spec.get("accessModes") or []):
        return "incompatible accessMode"
    return ""


def find_matching_volume(
    claim: Obj, volumes: Iterable[Obj], *, delay_binding: bool, node: Obj | None = None
) -> Obj | None:
    """The volume to bind `claim` to, or None (see the module docstring)."""
    claim_spec = claim.get("spec") or {}
    selector = claim_spec.get("selector")
    best: Obj | None = None
    for volume in sorted(volumes, key=lambda v: v["metadata"]["name"]):
        spec = volume.get("spec") or {}
        if unsatisfied_because(volume, claim):
            continue
        if (spec.get("volumeAttributesClassName") or "") != (
            claim_spec.get("volumeAttributesClassName") or ""
        ):
            continue
        affinity_ok = node is None or node_affinity_matches(volume, node)
        if is_volume_bound_to_claim(volume, claim):
            return volume if affinity_ok else None
        if node is None and delay_binding:
            continue
        if (volume.get("status") or {}).get("phase") != "Available" or spec.get("claimRef"):
            continue
        labels = dict((volume.get("metadata") or {}).get("labels") or {})
        if not selector_matches(selector, labels) or not affinity_ok:
            continue
        if best is None or (storage(spec.get("capacity")) or 0) < (
            storage(best["spec"].get("capacity")) or 0
        ):
            best = volume
    return best


def claim_has_class(claim: Obj) -> bool:
    """`PersistentVolumeClaimHasClass`: the beta annotation or `spec.storageClassName` is set (even "")."""
    return (
        ANN_BETA_STORAGE_CLASS in annotations_of(claim)
        or (claim.get("spec") or {}).get("storageClassName") is not None
    )


def default_class(classes: Iterable[Obj]) -> Obj | None:
    """`GetDefaultClass`: the newest class annotated as default (ties: by name), or None."""
    defaults = [
        c for c in classes if any(annotations_of(c).get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS)
    ]
    if not defaults:
        return None
    by_name = sorted(defaults, key=lambda c: str(c["metadata"]["name"]))
    return max(by_name, key=lambda c: str(c["metadata"].get("creationTimestamp") or ""))


def is_delay_binding(claim: Obj, classes: dict[str, Obj]) -> bool:
    """`IsDelayBindingMode`: the claim's class exists and binds WaitForFirstConsumer."""
    name = claim_class(claim)
    storage_class = classes.get(name) if name else None
    return bool(storage_class) and (storage_class or {}).get("volumeBindingMode") == "WaitForFirstConsumer"
