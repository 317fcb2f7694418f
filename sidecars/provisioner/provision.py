"""Provision: one CreateVolume for a claim and the PV it yields (upstream `csiProvisioner.Provision`).

The claim-side decisions (is it ours, which StorageClass, events) are the claim controller's
(sidecars.provisioner.claim); here a claim that should be provisioned becomes a PV or a
`ProvisionError` carrying its provisioning state:

* the claim must name this driver (`volume.kubernetes.io/storage-provisioner`, the beta key, or
  `pv.kubernetes.io/migrated-to`), otherwise it is ignored;
* the request is built (sidecars.provisioner.request); just before CreateVolume the provisioning
  intent is recorded on the claim (sidecars.provisioner.intent) — if that fails, nothing is called;
* a failed CreateVolume is classified (common.csi.errors.classify): Canceled, DeadlineExceeded,
  Unavailable and Aborted leave the volume IN_BACKGROUND (retried with the same name),
  ResourceExhausted with a selected node on a topology driver asks for a RESCHEDULE, anything else
  is FINISHED; InvalidArgument is also "infeasible" (slow retry). The event text is Go's
  `rpc error: code = X desc = Y`;
* an answer without volume_id is refused (nothing can be deleted or saved); an answer smaller than
  requested, with a topology segment that is no valid label (ours: the PV could never be saved), or
  without the content source a `dataSource` asked for ("volume content source missing"), is deleted
  again (up to 5 DeleteVolume calls within one `--timeout`) and retried IN_BACKGROUND, as upstream;
* once the PV is built, a VolumeSnapshot source loses its protection finalizer again
  (sidecars.provisioner.snapshots; a failure is only logged).

`deleted(pv)` is called by the deleter after DeleteVolume succeeded: a hook for capacity tracking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn

import grpc

from common.csi.errors import Outcome, classify, describe, is_infeasible
from common.logging import get_logger
from proto import csi_pb2
from sidecars.provisioner import names
from sidecars.provisioner.request import Prepared, RequestBuilder
from sidecars.provisioner.snapshots import release_snapshot
from sidecars.provisioner.state import IgnoredClaim, ProvisionError, ProvisioningState
from sidecars.provisioner.topology import TopologyCache
from sidecars.provisioner.volume import PVSettings, build_pv, invalid_topology

log = get_logger(__name__)

Obj = dict[str, Any]
BeforeCreate = Callable[[Obj], Awaitable[Obj]]
DELETE_VOLUME_RETRIES = 5

_STATE = {
    Outcome.IN_PROGRESS: ProvisioningState.IN_BACKGROUND,
    Outcome.FINAL: ProvisioningState.FINISHED,
    Outcome.RESCHEDULE: ProvisioningState.RESCHEDULE,
}


class Provisioner:
    """Turns a claim into a PV through CreateVolume (see the module docstring)."""

    def __init__(
        self,
        *,
        controller: Any,
        builder: RequestBuilder,
        settings: PVSettings,
        timeout: float,
        topology_cache: TopologyCache,
    ) -> None:
        self.controller = controller
        """The csi.v1.Controller stub (`rt.csi.controller`)."""
        self.builder = builder
        self.settings = settings
        self.timeout = timeout
        self.topology_cache = topology_cache

    @property
    def driver(self) -> str:
        return self.settings.driver

    def owns(self, claim: Mapping[str, Any]) -> bool:
        """The claim asks for this driver (the annotation the PV controller set, or migrated-to)."""
        anns = names.annotations_of(claim)
        return self.driver in (names.storage_provisioner(claim), anns.get(names.ANN_MIGRATED_TO))

    async def provision(
        self,
        claim: Obj,
        sc: Mapping[str, Any],
        selected_node: str,
        *,
        before_create: BeforeCreate | None = None,
    ) -> tuple[Obj, Obj]:
        """(the PV to save, the claim as last written) for `claim`; raises ProvisionError or IgnoredClaim."""
        if not self.owns(claim):
            raise IgnoredClaim(
                f"PVC annotated with external-provisioner name {names.storage_provisioner(claim) or ''} "
                f"does not match provisioner driver name {self.driver}. "
                "This could mean the PVC is not migrated"
            )
        prepared = await self.builder.prepare(claim, sc, selected_node)
        latest = claim
        if before_create is not None:
            latest = await before_create(claim)
        uid = names.claim_uid(claim)
        try:
            volume = await self.create_volume(prepared)
        except grpc.RpcError as err:
            may_reschedule = self.settings.topology and bool(selected_node)
            state = _STATE[classify(err, may_reschedule=may_reschedule)]
            log.info(
                "CreateVolume failed", pvc=names.claim_key(claim), state=state.value, error=describe(err), v=5
            )
            if self.settings.topology and state is not ProvisioningState.IN_BACKGROUND:
                self.topology_cache.delete(uid)
            raise ProvisionError(describe(err), state, infeasible=is_infeasible(err)) from None
        if not volume.volume_id:
            self.topology_cache.delete(uid)
            raise ProvisionError(
                "CSI driver returned no volume_id for the created volume", ProvisioningState.FINISHED
            )
        requested = prepared.request.capacity_range.required_bytes
        if volume.capacity_bytes and volume.capacity_bytes < requested:
            await self._discard(
                volume,
                prepared,
                f"created volume capacity {volume.capacity_bytes} less than requested capacity {requested}",
            )
        segments = [dict(t.segments) for t in volume.accessible_topology]
        if self.settings.topology and (problem := invalid_topology(segments)):
            await self._discard(
                volume, prepared, f"CSI driver returned an invalid accessible topology: {problem}"
            )
        if self._wants_content_source(claim) and not volume.HasField("content_source"):
            await self._discard(volume, prepared, "volume content source missing", cleanup="cleanup")
        pv = build_pv(claim, sc, prepared, volume, self.settings)
        log.info(
            "successfully created PV",
            pv=pv["metadata"]["name"],
            pvc=names.claim_key(claim),
            handle=volume.volume_id,
            v=2,
        )
        self.topology_cache.delete(uid)
        if self.builder.sources is not None:
            await release_snapshot(self.builder.kube, claim)
        return pv, latest

    async def _discard(
        self, volume: Any, prepared: Prepared, message: str, *, cleanup: str = "Cleanup"
    ) -> NoReturn:
        """Delete a created volume the claim cannot use, then fail with `message` (upstream's words, which
        spell `cleanup` with a capital in some checks and not in others), noting an orphan if that fails."""
        try:
            await self.delete_volume(volume.volume_id, dict(prepared.request.secrets), retries=True)
        except grpc.RpcError as err:
            message += (
                f". {cleanup} of volume {prepared.request.name} failed, volume is orphaned: {describe(err)}"
            )
        raise ProvisionError(message, ProvisioningState.IN_BACKGROUND)

    def _wants_content_source(self, claim: Mapping[str, Any]) -> bool:
        """`dataSource` is set, or a cross-namespace `dataSourceRef` with its gate on (upstream's test)."""
        spec = claim.get("spec") or {}
        if spec.get("dataSource"):
            return True
        namespace = (spec.get("dataSourceRef") or {}).get("namespace")
        return bool(self.builder.config.cross_namespace_data_source and namespace)

    def deleted(self, pv: Mapping[str, Any]) -> None:
        """The volume of `pv` was deleted (a hook: capacity tracking refreshes its segments)."""

    async def create_volume(self, prepared: Prepared) -> Any:
        """One CreateVolume with `--timeout`; the csi_pb2.Volume (raises grpc.RpcError)."""
        response = await self.controller.CreateVolume(prepared.request, timeout=self.timeout)
        return response.volume

    async def delete_volume(
        self, volume_id: str, secrets: Mapping[str, str], *, retries: bool = False
    ) -> None:
        """DeleteVolume with `--timeout` (raises grpc.RpcError); `retries`: upstream `cleanupVolume`,
        up to 5 attempts within one timeout."""
        request = csi_pb2.DeleteVolumeRequest(volume_id=volume_id, secrets=dict(secrets))
        if not retries:
            await self.controller.DeleteVolume(request, timeout=self.timeout)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        for attempt in range(DELETE_VOLUME_RETRIES):
            try:
                await self.controller.DeleteVolume(request, timeout=max(0.001, deadline - loop.time()))
                return
            except grpc.RpcError:
                if attempt == DELETE_VOLUME_RETRIES - 1 or loop.time() >= deadline:
                    raise
