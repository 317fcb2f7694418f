"""Writing claims and volumes: strategic merge patches, and the informer caches kept in step.

`Writer.patch_claim(old, new, check_rv=...)` sends the two-way patch from `old` to `new` to
`persistentvolumeclaims/<name>/status` (with `old`'s resourceVersion as a precondition when asked),
`patch_volume(old, new)` sends a PV's to `persistentvolumes/<name>`. Like upstream's
`ctrl.claims.Update(updatedPVC)`, the answer is put into the informer's cache at once, so the next
sync of the key sees what was just written even before the watch event arrives — unless the cache
already holds something newer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.kube.client import KubeClient
from common.kube.informer import Informer, drop_managed_fields
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, object_key
from common.logging import get_logger
from sidecars.resizer.patches import claim_patch, two_way_patch

log = get_logger(__name__)

Obj = dict[str, Any]


def _rv(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def remember(informer: Informer, obj: Obj) -> None:
    """Put a freshly written object into the informer's cache unless the cache has a newer one."""
    cached = informer.store.get(object_key(obj))
    old, new = _rv(cached), _rv(obj)
    if cached is not None and old.isdigit() and new.isdigit() and int(old) >= int(new):
        return
    informer.store.put(obj)


class Writer:
    """Patches PVC status and PVs, keeping the shared informer caches current."""

    def __init__(self, kube: KubeClient, *, claims: Informer, volumes: Informer) -> None:
        self.kube = kube
        self.claims = claims
        self.volumes = volumes

    async def patch_claim(self, old: Mapping[str, Any], new: Mapping[str, Any], *, check_rv: bool) -> Obj:
        """util.PatchClaim: the status subresource, strategic merge; returns the updated claim."""
        meta = old.get("metadata") or {}
        patch = claim_patch(old, new, check_rv=check_rv)
        log.info("patching PVC status", pvc=f"{meta.get('namespace')}/{meta.get('name')}", patch=patch, v=5)
        updated = await self.kube.patch(
            PERSISTENT_VOLUME_CLAIMS,
            str(meta.get("name", "")),
            patch,
            namespace=str(meta.get("namespace", "")),
            patch_type="strategic",
            subresource="status",
        )
        updated = drop_managed_fields(updated)
        remember(self.claims, updated)
        return updated

    async def patch_volume(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> Obj:
        """util.PatchPersistentVolume: strategic merge, no precondition; returns the updated PV."""
        name = str((old.get("metadata") or {}).get("name", ""))
        patch = two_way_patch(old, new)
        log.info("patching PV", pv=name, patch=patch, v=5)
        updated = await self.kube.patch(PERSISTENT_VOLUMES, name, patch, patch_type="strategic")
        updated = drop_managed_fields(updated)
        remember(self.volumes, updated)
        return updated
