"""Attach handlers: the `Handler` a controller calls per key, the trivial one, and their shared parts.

Which handler runs is decided once at start, as upstream does: a driver without CONTROLLER_SERVICE
or without PUBLISH_UNPUBLISH_VOLUME gets the `TrivialHandler`, which marks every VolumeAttachment
attached (no finalizers, no driver call, no PV work); any other gets the `CSIHandler`
(sidecars.attacher.csi_handler). Neither emits Events: upstream's attacher has no event recorder.
A failed sync raises `SyncError`; the worker loop retries the key with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from common.csi import CSIConnection
from common.errors import CSIError
from common.kube.client import ApiError, KubeClient
from common.kube.informer import Informer
from common.kube.resources import VOLUME_ATTACHMENTS
from common.logging import get_logger
from sidecars.attacher.request import meta, pv_name_of
from sidecars.attacher.status import attached_patch, is_attached

log = get_logger(__name__)

Object = dict[str, Any]


class SyncError(Exception):
    """A sync that failed and must be retried with backoff (the text is what the worker logs)."""


class Handler(Protocol):
    """What the controller calls for each key it takes off its queues."""

    latest: LatestWrites

    async def sync_va(self, va: Object) -> None: ...

    async def sync_pv(self, pv: Object) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Capabilities:
    """The driver's controller capabilities the CSI handler needs."""

    publish_readonly: bool = False
    """PUBLISH_READONLY: without it `readonly` is always false."""
    single_node_multi_writer: bool = False
    """SINGLE_NODE_MULTI_WRITER: RWO → SINGLE_NODE_MULTI_WRITER, RWOP → SINGLE_NODE_SINGLE_WRITER."""
    list_published_nodes: bool = False
    """LIST_VOLUMES and LIST_VOLUMES_PUBLISHED_NODES: the reconciler runs."""


@dataclass(frozen=True, kw_only=True)
class Listers:
    """The informer caches the handlers read (never mutate what they return)."""

    vas: Informer
    pvs: Informer
    csinodes: Informer | None = None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The handler's share of the config (see cli.AttacherConfig)."""

    timeout: float = 15.0
    """`--timeout`: ControllerPublish/Unpublish deadline, seconds."""
    default_fstype: str = ""
    """`--default-fstype`."""
    error_codes: bool = True
    """Gate MutableCSINodeAllocatableCount: write `attachError.errorCode` for gRPC failures."""


PV_INDEX = "pv"
"""The VolumeAttachment cache index: PV name → VAs attaching it (any attacher, as upstream checks)."""


def pv_index(va: Object) -> list[str]:
    name = pv_name_of(va)
    return [name] if name else []


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta(obj).get("name", ""))


async def patch_status(kube: KubeClient, va: Object, patch: Object) -> Object:
    return await kube.patch(VOLUME_ATTACHMENTS, name_of(va), patch, subresource="status")


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(meta(obj).get("resourceVersion", ""))
    except ValueError:
        return None


class LatestWrites:
    """The newest copy of each VolumeAttachment our own writes returned, until the informer shows it.

    Without it, a key queued again by our first write (the finalizer) is synced from a cache that has
    not seen our last write (`attached: true`) yet, and the volume is published a second time; upstream
    does that (the golden capture counts two ControllerPublishVolume calls for one attach). The
    resourceVersions are compared as integers (etcd revisions, comparable since KEP-5504); when they do
    not parse, the cache is used, as upstream does.
    """

    def __init__(self) -> None:
        self._objects: dict[str, Object] = {}

    def wrote(self, obj: Object) -> Object:
        """Remember what a write returned; returns it."""
        if _rv(obj) is not None:
            self._objects[name_of(obj)] = obj
        return obj

    def seen(self, obj: Mapping[str, Any]) -> None:
        """The informer delivered `obj`: drop our copy once the cache is as new."""
        mine = self._objects.get(name_of(obj))
        if mine is not None and (_rv(obj) or 0) >= (_rv(mine) or 0):
            del self._objects[name_of(obj)]

    def forget(self, name: str) -> None:
        self._objects.pop(name, None)

    def freshest(self, cached: Object) -> Object:
        """`cached`, or our newer copy of it."""
        mine = self._objects.get(name_of(cached))
        if mine is None:
            return cached
        ours, theirs = _rv(mine), _rv(cached)
        return mine if ours is not None and theirs is not None and ours > theirs else cached

    def __len__(self) -> int:
        return len(self._objects)


class TrivialHandler:
    """For drivers without ControllerPublishVolume: every VA is attached at once, no finalizers."""

    def __init__(self, *, kube: KubeClient) -> None:
        self._kube = kube
        self.latest = LatestWrites()

    async def sync_va(self, va: Object) -> None:
        if is_attached(va):
            return
        patch = attached_patch(va, None)
        if patch is not None:
            try:
                self.latest.wrote(await patch_status(self._kube, va, patch))
            except ApiError as err:
                raise SyncError(f"failed to mark as attached: {err}") from err
        log.info("marked VolumeAttachment as attached", va=name_of(va), v=2)

    async def sync_pv(self, pv: Object) -> None:
        return None


DISCOVERY_TIMEOUT = 1.0
"""Seconds for GetPluginCapabilities and ControllerGetCapabilities (upstream's hard-coded csiTimeout)."""


async def _asked(ask: Awaitable[frozenset[str]], method: str) -> frozenset[str]:
    try:
        async with asyncio.timeout(DISCOVERY_TIMEOUT):
            return await ask
    except TimeoutError:
        raise CSIError(
            f"{method} failed: rpc error: code = DeadlineExceeded desc = context deadline exceeded"
        ) from None


async def discover(csi: CSIConnection) -> Capabilities | None:
    """The handler choice: None for the trivial handler, else the CSI handler's capabilities."""
    plugin = await _asked(csi.plugin_capabilities(), "GetPluginCapabilities")
    if "CONTROLLER_SERVICE" not in plugin:
        log.info("CSI driver does not support Plugin Controller Service, using trivial handler", v=2)
        return None
    rpcs = await _asked(csi.controller_capabilities(), "ControllerGetCapabilities")
    if "PUBLISH_UNPUBLISH_VOLUME" not in rpcs:
        log.info("CSI driver does not support ControllerPublishUnpublish, using trivial handler", v=2)
        return None
    log.info("CSI driver supports ControllerPublishUnpublish, using real CSI handler", v=2)
    capabilities = Capabilities(
        publish_readonly="PUBLISH_READONLY" in rpcs,
        single_node_multi_writer="SINGLE_NODE_MULTI_WRITER" in rpcs,
        list_published_nodes={"LIST_VOLUMES", "LIST_VOLUMES_PUBLISHED_NODES"} <= rpcs,
    )
    if capabilities.list_published_nodes:
        log.info("CSI driver supports list volumes published nodes, reconciling with the backend state", v=2)
    return capabilities
