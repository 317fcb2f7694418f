"""The CSI handler: what one sync of a VolumeAttachment or a PersistentVolume does with a real driver.

`CSIHandler` is external-attacher's `csiHandler`:

* attach (no deletionTimestamp; skipped when `status.attached` unless the reconciler asked for a
  forced sync): PV checks and the PV finalizer (guarded JSON patch), request, secrets, node ID; then
  the VA finalizer + `csi.alpha.kubernetes.io/node-id` annotation; then ControllerPublishVolume;
  success sets `attached: true` and `attachmentMetadata`; failure records `attachError` and raises
  `SyncError`, so the worker retries with backoff;
* detach (deletionTimestamp; skipped once our finalizer is gone, unless forced): node ID from the
  CSINode, else from the VA's annotation; ControllerUnpublishVolume; then the finalizer comes off
  first and the status says detached; failure records `detachError`;
* a PV with our finalizer and a deletionTimestamp loses the finalizer once no VA refers to it.

Beyond upstream, each documented where it happens: ControllerUnpublishVolume answering NOT_FOUND
counts as detached (CSI: the volume or node does not exist); a VA whose PV is gone for good is
released instead of failing forever; a forced re-attach after the driver reported the volume not
published writes `attached: false` with the error, so the attach/detach controller stops believing
it is attached (external-attacher#215); the attach may take the node ID from the Node's legacy
annotation when there is no CSINode entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from common.csi import CSIConnection, code_name, describe, is_final, status_code
from common.kube.client import ApiError, KubeClient
from common.kube.finalizers import add_finalizer, finalizers_of, remove_finalizer
from common.kube.resources import NODES, PERSISTENT_VOLUMES, SECRETS, VOLUME_ATTACHMENTS
from common.logging import get_logger
from proto import csi_pb2
from sidecars.attacher.handler import (
    PV_INDEX,
    Capabilities,
    LatestWrites,
    Listers,
    Settings,
    SyncError,
    name_of,
    patch_status,
)
from sidecars.attacher.request import (
    Publish,
    VolumeError,
    attach_node_id,
    attach_request,
    attachable_pv,
    check_source,
    csi_source,
    csinode_error,
    decode_secret,
    detach_node_id,
    finalizer_name,
    inline_spec_of,
    node_id_from_node,
    publish_of,
    pv_name_of,
)
from sidecars.attacher.status import (
    attached_patch,
    detached_patch,
    error_patch,
    has_finalizer,
    is_attached,
    is_deleting,
    metadata_patch,
)

log = get_logger(__name__)

Object = dict[str, Any]
PATCH_ATTEMPTS = 5


class CSIHandler:
    """Attaches and detaches through the CSI driver (see the module docstring)."""

    def __init__(
        self,
        *,
        driver: str,
        kube: KubeClient,
        csi: CSIConnection,
        listers: Listers,
        capabilities: Capabilities,
        settings: Settings,
    ) -> None:
        self.driver = driver
        self.finalizer = finalizer_name(driver)
        self._kube = kube
        self._csi = csi
        self._listers = listers
        self._caps = capabilities
        self._settings = settings
        self._forced: dict[str, bool] = {}
        self.latest = LatestWrites()

    # -- forced syncs (the reconciler) ----------------------------------------------------------

    def force_sync(self, name: str, *, published: bool) -> None:
        """Process `name` next time even if its status looks final; `published` is the driver's view."""
        self._forced[name] = published

    def forget(self, name: str) -> None:
        self._forced.pop(name, None)

    # -- VolumeAttachments ----------------------------------------------------------------------

    async def sync_va(self, va: Object) -> None:
        if is_deleting(va):
            await self._sync_detach(va)
        else:
            await self._sync_attach(va)

    async def _sync_attach(self, va: Object) -> None:
        name = name_of(va)
        forced = self._forced.pop(name, None)
        if forced is None and is_attached(va):
            log.info("VolumeAttachment is already attached", va=name, v=4)
            return
        log.info("attaching", va=name, v=2)
        try:
            va, publish_context = await self._attach(va)
        except VolumeError as err:
            # external-attacher#215: the driver says it is not published and we cannot re-attach, so
            # the status must stop saying attached, or the attach/detach controller never moves on.
            lost = forced is False and is_attached(va)
            await self._save_error(va, "attachError", err, detached=lost)
            raise SyncError(f"failed to attach: {err}") from err
        log.info("attached", va=name, v=2)
        patch = attached_patch(va, publish_context)
        if patch is not None:
            try:
                self.latest.wrote(await patch_status(self._kube, va, patch))
            except ApiError as err:
                # Ours, not upstream's: say why in the status too (e.g. a publish_context too big to
                # store), or the VolumeAttachment shows no reason while the attach is retried forever.
                await self._save_error(va, "attachError", VolumeError(f"failed to mark as attached: {err}"))
                raise SyncError(f"failed to mark as attached: {err}") from err
        log.info("fully attached", va=name, v=4)

    async def _sync_detach(self, va: Object) -> None:
        name = name_of(va)
        forced = self._forced.pop(name, None)
        if forced is None and not has_finalizer(va, self.finalizer):
            log.info("VolumeAttachment is already detached", va=name, v=4)
            return
        log.info("detaching", va=name, v=2)
        try:
            await self._detach(va)
        except VolumeError as err:
            await self._save_error(va, "detachError", err)
            raise SyncError(f"failed to detach: {err}") from err
        log.info("fully detached", va=name, v=4)

    async def _save_error(self, va: Object, field: str, err: VolumeError, *, detached: bool = False) -> None:
        code = err.code if field == "attachError" and self._settings.error_codes else None
        patch = error_patch(field, err.message, code=code)
        if detached:
            patch["status"].update({"attached": False, "attachmentMetadata": None})
        try:
            self.latest.wrote(await patch_status(self._kube, va, patch))
        except ApiError as save_err:
            log.info("failed to save error to VolumeAttachment", va=name_of(va), error=str(save_err), v=2)

    # -- the attach -----------------------------------------------------------------------------

    async def _attach(self, va: Object) -> tuple[Object, dict[str, str]]:
        check_source(va)
        pv_name = pv_name_of(va)
        pv = None
        if pv_name is not None:
            pv = attachable_pv(pv_name, self._listers.pvs.get(pv_name))
            try:
                pv = await add_finalizer(self._kube, PERSISTENT_VOLUMES, pv, self.finalizer)
            except ApiError as err:
                raise VolumeError(f"could not add PersistentVolume finalizer: {err}") from err
        publish, capability = attach_request(
            va,
            pv,
            publish_readonly=self._caps.publish_readonly,
            single_node_multi_writer=self._caps.single_node_multi_writer,
            default_fstype=self._settings.default_fstype,
        )
        secrets = await self._secrets(publish)
        node_id = await self._attach_node_id(va)
        va = await self._save_metadata(va, node_id)
        request = csi_pb2.ControllerPublishVolumeRequest(
            volume_id=publish.volume_id,
            node_id=node_id,
            volume_capability=capability,
            readonly=publish.readonly,
            volume_context=publish.volume_context,
            secrets=secrets,
        )
        try:
            response = await self._csi.controller.ControllerPublishVolume(
                request, timeout=self._settings.timeout
            )
        except grpc.RpcError as err:
            log.info("ControllerPublishVolume failed", va=name_of(va), final=is_final(err), v=4)
            raise VolumeError(describe(err), code=_code_number(err)) from err
        return va, dict(response.publish_context)

    async def _save_metadata(self, va: Object, node_id: str) -> Object:
        """The finalizer and node-id annotation, before the RPC; a stale cache means read and retry."""
        for _ in range(PATCH_ATTEMPTS):
            patch = metadata_patch(va, self.finalizer, node_id)
            if patch is None:
                return va
            try:
                patched = await self._kube.patch(VOLUME_ATTACHMENTS, name_of(va), patch, patch_type="json")
                return self.latest.wrote(patched)
            except ApiError as err:
                if not (err.invalid or err.conflict):
                    raise VolumeError(f"could not save VolumeAttachment: {err}") from err
            try:
                va = await self._kube.get(VOLUME_ATTACHMENTS, name_of(va))
            except ApiError as err:
                raise VolumeError(f"could not save VolumeAttachment: {err}") from err
        raise VolumeError("could not save VolumeAttachment: its metadata kept changing")

    async def _secrets(self, publish: Publish) -> dict[str, str]:
        ref = publish.secret_ref
        if ref is None:
            return {}
        try:
            secret = await self._kube.get(SECRETS, ref["name"], namespace=ref["namespace"])
        except ApiError as err:
            raise VolumeError(f'failed to load secret "{ref["namespace"]}/{ref["name"]}": {err}') from err
        return decode_secret(secret)

    # -- node IDs -------------------------------------------------------------------------------

    def _csinode(self, node_name: str) -> Object | None:
        csinodes = self._listers.csinodes
        return csinodes.get(node_name) if csinodes is not None else None

    async def _legacy_node_id(self, node_name: str) -> str | None:
        """The Node's `csi.volume.kubernetes.io/nodeid` entry (beyond upstream); None if unknown."""
        try:
            node = await self._kube.get(NODES, node_name)
        except ApiError as err:
            log.info("cannot read the Node for its node ID", node=node_name, error=str(err), v=4)
            return None
        return node_id_from_node(node, self.driver)

    async def _attach_node_id(self, va: Object) -> str:
        node_name = str((va.get("spec") or {}).get("nodeName", ""))
        csinode = self._csinode(node_name)
        try:
            return attach_node_id(node_name, self.driver, csinode=csinode)
        except VolumeError:
            legacy = await self._legacy_node_id(node_name)  # one GET, only when the CSINode lacks it
            if legacy is None:
                raise
            return legacy

    def detach_node_id(self, va: Mapping[str, Any]) -> str | None:
        """Upstream's getNodeID(va): the CSINode entry, else the node ID the attach recorded on the VA."""
        node_name = str((va.get("spec") or {}).get("nodeName", ""))
        return detach_node_id(va, self.driver, csinode=self._csinode(node_name))

    # -- the detach -----------------------------------------------------------------------------

    async def _detach(self, va: Object) -> None:
        check_source(va)
        pv_name = pv_name_of(va)
        if pv_name is not None:
            pv = self._listers.pvs.get(pv_name) or await self._live_pv(pv_name)
            if pv is None:
                # Beyond upstream (which retries forever): with the PV gone there is no volume handle
                # to unpublish, and keeping our finalizer would strand the VA for good.
                log.warning(
                    "PersistentVolume is gone; releasing the VolumeAttachment", va=name_of(va), pv=pv_name
                )
                await self._mark_detached(va)
                return
            source = csi_source(pv.get("spec") or {})
        else:
            source = (inline_spec_of(va) or {})["csi"]
        publish = publish_of(source, publish_readonly=self._caps.publish_readonly)
        secrets = await self._secrets(publish)
        node_id = self.detach_node_id(va)
        if node_id is None:
            node_name = str((va.get("spec") or {}).get("nodeName", ""))
            node_id = await self._legacy_node_id(node_name)
            if node_id is None:
                raise csinode_error(self._csinode(node_name), node_name, self.driver)
        request = csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=publish.volume_id, node_id=node_id, secrets=secrets
        )
        try:
            await self._csi.controller.ControllerUnpublishVolume(request, timeout=self._settings.timeout)
        except grpc.RpcError as err:
            if code_name(err) != "NotFound":
                raise VolumeError(describe(err)) from err
            # Beyond upstream: CSI says NOT_FOUND means the volume or the node does not exist, so
            # there is nothing left attached (a node deleted with its VM, a volume already gone).
            log.info("volume or node not found by the driver: detached", va=name_of(va), error=describe(err))
        log.info("detached", va=name_of(va), v=2)
        await self._mark_detached(va)

    async def _live_pv(self, name: str) -> Object | None:
        """The PV from the API server when the cache has none (None only on NotFound)."""
        try:
            return await self._kube.get(PERSISTENT_VOLUMES, name)
        except ApiError as err:
            if err.not_found:
                return None
            raise VolumeError(str(err)) from err

    async def _mark_detached(self, va: Object) -> None:
        """markAsDetached: the finalizer comes off first, then the status says detached."""
        try:
            if has_finalizer(va, self.finalizer):
                va = self.latest.wrote(
                    await remove_finalizer(self._kube, VOLUME_ATTACHMENTS, va, self.finalizer)
                )
                if is_deleting(va) and not finalizers_of(va):
                    return  # the API server has deleted it: a status patch could only say NotFound
            elif not is_attached(va):
                return
            patch = detached_patch(va)
            if patch is not None:
                self.latest.wrote(await patch_status(self._kube, va, patch))
        except ApiError as err:
            if err.not_found:
                return
            raise VolumeError(f"could not mark as detached: {err}") from err

    # -- PersistentVolumes ----------------------------------------------------------------------

    async def sync_pv(self, pv: Object) -> None:
        """Drop our finalizer from a PV being deleted once no VolumeAttachment refers to it."""
        name = name_of(pv)
        if not is_deleting(pv) or not has_finalizer(pv, self.finalizer):
            return
        users = self._listers.vas.store.by_index(PV_INDEX, name)
        if users:
            log.info("PersistentVolume still used by a VolumeAttachment", pv=name, va=name_of(users[0]), v=4)
            return
        try:
            await remove_finalizer(self._kube, PERSISTENT_VOLUMES, pv, self.finalizer)
        except ApiError as err:
            raise SyncError(f"failed to remove finalizer from PersistentVolume {name}: {err}") from err
        log.info("removed finalizer from PersistentVolume", pv=name, v=2)


def _code_number(err: BaseException) -> int | None:
    code = status_code(err)
    return None if code is None else int(code.value[0])
