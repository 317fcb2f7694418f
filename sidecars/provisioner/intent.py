"""The provisioning intent: a PVC finalizer that makes "CreateVolume ran for this claim" survive a restart.

Upstream leaks a volume when the provisioner dies between CreateVolume and saving the PV and the
PVC is deleted meanwhile (external-provisioner#486): the in-memory `claimsInProgress` is gone after
the restart, the PVC is gone too, so nobody ever deletes the volume. We record the intent durably:

* Just before the first CreateVolume of a claim, the finalizer `csi-sidecars.python/provisioning-intent`
  is added to the PVC. If that fails, CreateVolume is not called. The change is an update (PUT)
  guarded by the claim's resourceVersion (a 409 re-reads and decides again), not the JSON patch of
  common.kube.finalizers: upstream's RBAC grants `update` on PVCs but not `patch`, and a drop-in
  replacement must work with it.
* It is removed as soon as the PV is saved (the PV then owns the volume: Released + Delete → our
  deleter), or when the volume is confirmed gone.
* A PVC being deleted that carries the finalizer and has no PV is *abandoned*: CreateVolume is
  issued again with the same name (idempotent: it answers the existing volume, or creates it) and
  the volume is then deleted with DeleteVolume; a final CreateVolume error means nothing exists. Only
  then is the finalizer removed and the PVC allowed to go. A StorageClass deleted while this process
  ran is still known (the claim controller keeps its last copy), so deleting a claim and its class
  together works. A "may be in progress" error, or a request that cannot be built (class unknown
  after a restart, secret gone), keeps it with a `ProvisioningFailed` event and retries with backoff.

`--persist-provisioning-intent=false` stops adding the finalizer; PVCs that already carry it are
still handled (and cleared) as above, so turning it off never strands a PVC.

Rolling back to the Go external-provisioner: it does not know this finalizer, so a PVC that carries
it (only those between CreateVolume and PV save, or being abandoned) stays Terminating when deleted.
Remove it by hand after checking the volume:
`kubectl patch pvc <name> --type=json -p '[{"op":"remove","path":"/metadata/finalizers/<index>"}]'`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import grpc

from common.csi.errors import Outcome, classify, describe
from common.kube.client import ApiError, KubeClient
from common.kube.resources import PERSISTENT_VOLUME_CLAIMS
from common.logging import get_logger
from sidecars.provisioner import names
from sidecars.provisioner.provision import Provisioner
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState

log = get_logger(__name__)

Obj = dict[str, Any]

MAX_ATTEMPTS = 5
GIVE_UP_HINT = f"; to give up and risk leaking the volume, remove finalizer {names.INTENT_FINALIZER} by hand"


def recorded(claim: Mapping[str, Any]) -> bool:
    """The claim carries our intent finalizer."""
    return names.INTENT_FINALIZER in names.finalizers(claim)


class Intent:
    """Records, clears and follows up on the provisioning intent (see the module docstring)."""

    def __init__(self, *, kube: KubeClient, provisioner: Provisioner, enabled: bool) -> None:
        self.kube = kube
        self.provisioner = provisioner
        self.enabled = enabled

    async def record(self, claim: Obj) -> Obj:
        """Add the finalizer before CreateVolume; returns the claim as the server has it now."""
        if not self.enabled or recorded(claim):
            return claim
        try:
            updated = await self._set(claim, present=True)
        except ApiError as err:
            raise ProvisionError(
                f"recording the provisioning intent on the claim failed: {err}", ProvisioningState.NO_CHANGE
            ) from err
        log.info("provisioning intent recorded", pvc=names.claim_key(claim), v=4)
        return updated

    async def clear(self, claim: Obj) -> None:
        """Remove the finalizer (a claim that is gone or without it counts as done)."""
        if recorded(claim):
            await self._set(claim, present=False)
            log.info("provisioning intent cleared", pvc=names.claim_key(claim), v=4)

    async def _set(self, claim: Obj, *, present: bool) -> Obj:
        """Put the finalizer on or off with an update; on a Conflict, read the claim again and retry."""
        meta = claim["metadata"]
        current = claim
        for _ in range(MAX_ATTEMPTS):
            finalizers = names.finalizers(current)
            if (names.INTENT_FINALIZER in finalizers) == present:
                return current
            updated = copy.deepcopy(current)
            updated["metadata"]["finalizers"] = (
                [*finalizers, names.INTENT_FINALIZER]
                if present
                else [f for f in finalizers if f != names.INTENT_FINALIZER]
            )
            try:
                return await self.kube.update(PERSISTENT_VOLUME_CLAIMS, updated)
            except ApiError as err:
                if err.not_found and not present:
                    return current  # the claim is gone: nothing to clear
                if not err.conflict:
                    raise
            current = await self.kube.get(
                PERSISTENT_VOLUME_CLAIMS, meta["name"], namespace=meta.get("namespace")
            )
        raise ApiError(409, "Conflict", f"claim {names.claim_key(claim)} kept changing under us")

    async def abandon(self, claim: Obj, sc: Mapping[str, Any] | None) -> None:
        """The claim is being deleted and has no PV: find its volume by name, delete it, then clear.

        Raises ProvisionError (event, retry with backoff) while that cannot be confirmed.
        """
        key = names.claim_key(claim)
        if sc is None:
            raise ProvisionError(
                f"cannot look up the volume of deleted claim {key}: "
                f'storageClass "{names.claim_class(claim)}" not found{GIVE_UP_HINT}',
                ProvisioningState.NO_CHANGE,
            )
        try:
            prepared = await self._prepare(claim, sc)
        except IgnoredClaim:
            await self.clear(claim)  # never ours to create: nothing to delete
            return
        except ProvisionError as err:
            if err.state is ProvisioningState.FINISHED and not err.infeasible:
                await self.clear(claim)  # CreateVolume could never have been sent for it
                return
            raise ProvisionError(
                f"cannot look up the volume of deleted claim {key}: {err}{GIVE_UP_HINT}", err.state
            ) from None
        name = prepared.request.name
        try:
            volume = await self.provisioner.create_volume(prepared)
        except grpc.RpcError as err:
            if classify(err) is Outcome.IN_PROGRESS:
                raise ProvisionError(
                    f"looking up volume {name} of deleted claim {key}: {describe(err)}",
                    ProvisioningState.IN_BACKGROUND,
                ) from None
            log.info("volume of deleted claim does not exist", pvc=key, volume=name, error=describe(err))
            await self.clear(claim)
            return
        if volume.volume_id:
            try:
                await self.provisioner.delete_volume(volume.volume_id, dict(prepared.request.secrets))
            except grpc.RpcError as err:
                raise ProvisionError(
                    f"deleting volume {name} of deleted claim {key}: {describe(err)}",
                    ProvisioningState.IN_BACKGROUND,
                ) from None
            log.info("deleted the volume of a claim deleted before its PV was saved", pvc=key, volume=name)
        await self.clear(claim)

    async def _prepare(self, claim: Obj, sc: Mapping[str, Any]) -> Any:
        node = names.selected_node(claim) or ""
        try:
            return await self.provisioner.builder.prepare(claim, sc, node, protect=False)
        except ProvisionError as err:
            if not node or err.state is not ProvisioningState.RESCHEDULE:
                raise
        # The selected node is gone for good: ask as for immediate binding (the volume exists by name).
        return await self.provisioner.builder.prepare(claim, sc, "", protect=False)
