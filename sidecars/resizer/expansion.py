"""One volume expansion: mark the claim, call the resizer, record the outcome on PV, PVC and events.

`Expander.expand_and_recover(pvc, pv)` is upstream's `expandAndRecover` + `callResizeOnPlugin`
(RecoverVolumeExpansionFailure on, the default):

1. `claims.plan_expansion` picks the size (the request, or allocatedResources while an earlier
   expansion may still be running) — or decides to wait;
2. the claim gets `Resizing`, `allocatedResources` and `ControllerResizeInProgress` (a status patch
   with a resourceVersion precondition);
3. event `Resizing`, then the resizer: ControllerExpandVolume (or nothing, for the trivial resizer);
4. success: the PV's `spec.capacity` (and the pre-resize annotation when the node must finish), then
   `FileSystemResizePending` + `NodeResizePending` + event `FileSystemResizeRequired`, or the claim's
   new capacity + event `VolumeResizeSuccessful`;
5. failure: a final error adds `ControllerResizeError` (infeasible ones — InvalidArgument, OutOfRange,
   NotFound — also `ControllerResizeInfeasible`, retried only every --retry-interval-max); a non-final
   one leaves ControllerResizeInProgress so the same size is retried; FailedPrecondition marks the
   claim "in use" so it is not retried while a pod mounts it. Event `VolumeResizeFailed`, and the
   error is raised so the work queue retries with backoff.

`legacy_resize` is the gate-off path: `Resizing`, expand to the request, then `FileSystemResizePending`
or finished, without allocatedResources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.controller import Requeue
from common.csi.errors import code_name, describe, is_final, is_infeasible, status_code
from common.govalues import go_quote
from common.kube.client import ApiError
from common.kube.events import NORMAL, WARNING, EventRecorder
from common.logging import get_logger
from sidecars.resizer import claims as c
from sidecars.resizer.inuse import InUseTracker
from sidecars.resizer.resizer import Resizer
from sidecars.resizer.slowset import SlowSet
from sidecars.resizer.writer import Writer

log = get_logger(__name__)

Obj = dict[str, Any]

VOLUME_RESIZING = "Resizing"
VOLUME_RESIZE_FAILED = "VolumeResizeFailed"
VOLUME_RESIZE_SUCCESS = "VolumeResizeSuccessful"
FILE_SYSTEM_RESIZE_REQUIRED = "FileSystemResizeRequired"


class SyncError(Exception):
    """A failed sync, with upstream's error text; the work queue retries the key with backoff."""


def error_text(exc: BaseException) -> str:
    """Go's `err.Error()` for a resize error: the gRPC status text, or the message."""
    return describe(exc) if status_code(exc) is not None else (str(exc) or type(exc).__name__)


def in_use_error(exc: BaseException) -> bool:
    """inUseError: FailedPrecondition from ControllerExpandVolume means "only offline expansion"."""
    return code_name(exc) == "FailedPrecondition"


class Expander:
    """Runs expansions for the resize controller (see the module docstring)."""

    def __init__(
        self,
        *,
        resizer: Resizer,
        writer: Writer,
        recorder: EventRecorder,
        in_use: InUseTracker,
        slow: SlowSet,
        annotate_fs_resize: bool = True,
    ) -> None:
        self.resizer = resizer
        self.writer = writer
        self.recorder = recorder
        self.in_use = in_use
        self.slow = slow
        self.annotate_fs_resize = annotate_fs_resize
        self.final_errors: set[str] = set()
        """Keys whose last expansion failed with a final error (finalErrorPVCs)."""

    def forget(self, key: str) -> None:
        """The claim is gone: drop what is remembered about it."""
        self.final_errors.discard(key)
        self.slow.remove(key)

    # ------------------------------------------------------------------------ with recovery

    async def expand_and_recover(self, pvc: Obj, pv: Obj) -> None:
        key = c.key_of(pvc)
        in_slow_set = self.slow.contains(key)
        if c.resize_status(pvc) == c.CONTROLLER_RESIZE_INFEASIBLE:
            self.slow.add(key)  # markForSlowRetry
        plan = c.plan_expansion(
            pvc,
            pv,
            final_error=key in self.final_errors,
            in_slow_set=in_slow_set,
            controller_expansion=self.resizer.controller_expansion,
        )
        if plan.action is c.Action.SKIP:
            log.info("no need to resize now", pvc=key, status=c.resize_status(pvc), v=4)
            return
        if plan.action is c.Action.DELAY:
            log.info("skipping volume expansion: it failed as infeasible before", pvc=key, v=4)
            raise Requeue(self.slow.time_remaining(key), "infeasible expansion, slow retry")
        try:
            pvc = await self.writer.patch_claim(
                pvc,
                c.mark_controller_resize_in_progress(pvc, plan.size, update_status=plan.update_status),
                check_rv=True,
            )
        except ApiError as exc:
            raise SyncError(f"marking pvc {go_quote(key)} as resizing failed: {exc}") from exc
        self._refuse_if_in_use(pvc)
        self.recorder.event(pvc, NORMAL, VOLUME_RESIZING, f"External resizer is resizing volume {_name(pv)}")
        self.in_use.remove_error(_uid(pvc))
        try:
            await self._call_resize(pvc, pv, plan.size, c.status_capacity(pvc))
        except SyncError as exc:
            self.recorder.event(pvc, WARNING, VOLUME_RESIZE_FAILED, str(exc))
            raise
        log.info("update capacity of PV succeeded", pv=_name(pv), capacity=plan.size, v=4)

    def _refuse_if_in_use(self, pvc: Obj) -> None:
        """An offline-only driver said "in use" before: do not try again while a pod mounts the claim."""
        key = c.key_of(pvc)
        if self.in_use.has_error(_uid(pvc)) and self.in_use.in_use(key):
            message = (
                f"Unable to expand {key} because CSI driver {self.resizer.name} only supports offline "
                "expansion and volume is currently in-use"
            )
            self.recorder.event(pvc, WARNING, VOLUME_RESIZE_FAILED, message)
            raise SyncError(message)

    async def _call_resize(self, pvc: Obj, pv: Obj, size: str, old_size: str | None) -> None:
        """callResizeOnPlugin."""
        key = c.key_of(pvc)
        try:
            new_size, fs_resize_required = await self.resizer.resize(pv, size)
        except Exception as exc:
            await self._resize_failed(pvc, exc)
            raise SyncError(
                f"resize volume {go_quote(_name(pv))} by resizer {go_quote(self.resizer.name)} failed: "
                f"{error_text(exc)}"
            ) from exc
        self.final_errors.discard(key)
        self.slow.remove(key)
        log.info("resize volume succeeded, updating the PV's capacity", pv=_name(pv), size=new_size, v=4)
        await self._update_pv_capacity(pv, old_size, new_size, fs_resize_required=fs_resize_required)
        if fs_resize_required:
            await self._mark_pending_node_expansion(pvc)
        else:
            await self._mark_finished(pvc, new_size, legacy=False)

    async def _resize_failed(self, pvc: Obj, exc: Exception) -> None:
        key, text = c.key_of(pvc), error_text(exc)
        log.info("resize failed", pvc=key, error=text, final=is_final(exc), v=2)
        if in_use_error(exc):
            self.in_use.add_error(_uid(pvc))
        if not is_final(exc):
            self.slow.remove(key)
            self.final_errors.discard(key)
            return
        self.final_errors.add(key)
        infeasible = is_infeasible(exc, expansion=True)
        if not infeasible:
            self.slow.remove(key)
        try:
            # No resourceVersion check: the failure must be recorded even over a slightly newer claim.
            await self.writer.patch_claim(
                pvc, c.mark_controller_expansion_failed(pvc, text, infeasible=infeasible), check_rv=False
            )
        except ApiError as patch_error:
            raise SyncError(
                f"resizing failed in controller with {text} but failed to update PVC {key} "
                f"with: {patch_error}"
            ) from patch_error

    async def _update_pv_capacity(
        self, pv: Obj, old_size: str | None, new_size: str, *, fs_resize_required: bool
    ) -> Obj:
        pre_resize = (old_size or "0") if self.annotate_fs_resize and fs_resize_required else None
        try:
            return await self.writer.patch_volume(pv, c.with_pv_capacity(pv, new_size, pre_resize=pre_resize))
        except ApiError as exc:
            raise SyncError(
                f"error updating pv {go_quote(_name(pv))} by resizer: updating capacity of PV "
                f"{go_quote(_name(pv))} to {new_size} failed: {exc}"
            ) from exc

    async def _mark_pending_node_expansion(self, pvc: Obj) -> None:
        try:
            await self.writer.patch_claim(pvc, c.mark_pending_node_expansion(pvc), check_rv=True)
        except ApiError as exc:
            raise SyncError(
                f"mark PVC {go_quote(c.key_of(pvc))} as node expansion required failed: {exc}"
            ) from exc
        log.info("marked PVC as file system resize required", pvc=c.key_of(pvc), v=4)
        self.recorder.event(
            pvc, NORMAL, FILE_SYSTEM_RESIZE_REQUIRED, "Require file system resize of volume on node"
        )

    async def _mark_finished(self, pvc: Obj, new_size: str, *, legacy: bool) -> None:
        edit = c.mark_legacy_finished(pvc, new_size) if legacy else c.mark_expansion_finished(pvc, new_size)
        try:
            await self.writer.patch_claim(pvc, edit, check_rv=True)
        except ApiError as exc:
            raise SyncError(f"mark PVC {go_quote(c.key_of(pvc))} as resize finished failed: {exc}") from exc
        log.info("resize PVC finished", pvc=c.key_of(pvc), v=4)
        self.recorder.event(pvc, NORMAL, VOLUME_RESIZE_SUCCESS, "Resize volume succeeded")

    # ------------------------------------------------------------------------ legacy (gate off)

    async def legacy_resize(self, pvc: Obj, pv: Obj) -> None:
        """resizePVC: expand to the request without allocatedResources or recovery."""
        if c.cmp(c.pv_capacity(pv), c.request_size(pvc)) >= 0 and c.has_condition(pvc, c.FS_RESIZE_PENDING):
            return  # kubelet's turn
        key = c.key_of(pvc)
        try:
            pvc = await self.writer.patch_claim(pvc, c.mark_legacy_resizing(pvc), check_rv=True)
        except ApiError as exc:
            raise SyncError(f"marking pvc {go_quote(key)} as resizing failed: {exc}") from exc
        self._refuse_if_in_use(pvc)
        self.recorder.event(pvc, NORMAL, VOLUME_RESIZING, f"External resizer is resizing volume {_name(pv)}")
        try:
            self.in_use.remove_error(_uid(pvc))
            try:
                new_size, fs_resize_required = await self.resizer.resize(pv, c.request_size(pvc) or "0")
            except Exception as exc:
                if in_use_error(exc):
                    self.in_use.add_error(_uid(pvc))
                raise SyncError(
                    f"resize volume {go_quote(_name(pv))} by resizer {go_quote(self.resizer.name)} failed: "
                    f"{error_text(exc)}"
                ) from exc
            await self._update_pv_capacity(
                pv, c.status_capacity(pvc), new_size, fs_resize_required=fs_resize_required
            )
            if fs_resize_required:
                try:
                    await self.writer.patch_claim(pvc, c.mark_legacy_fs_resize_required(pvc), check_rv=True)
                except ApiError as exc:
                    raise SyncError(
                        f"Mark PVC {go_quote(key)} as file system resize required failed: {exc}"
                    ) from exc
                self.recorder.event(
                    pvc, NORMAL, FILE_SYSTEM_RESIZE_REQUIRED, "Require file system resize of volume on node"
                )
            else:
                await self._mark_finished(pvc, new_size, legacy=True)
        except SyncError as exc:
            self.recorder.event(pvc, WARNING, VOLUME_RESIZE_FAILED, str(exc))
            raise


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))
