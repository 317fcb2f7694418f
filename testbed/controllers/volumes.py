"""Kubelet's volume manager for CSI PVs: wait for attach, stage, publish; and the reverse on pod exit.

For each PVC volume of a pod on this node (the claim Bound to a CSI PV, the driver registered here):

1. if the driver needs attaching (CSIDriver `attachRequired` not false), wait until VolumeAttachment
   `csi-<sha256(handle+driver+node)>` reports `status.attached` and take its `attachmentMetadata` as
   the publish context (`attachError` is reported as the mount failure);
2. report the volume in the Node's `status.volumesInUse` (`kubernetes.io/csi/<driver>^<handle>`),
   then `NodeStageVolume` once per volume on the node, if the driver has STAGE_UNSTAGE_VOLUME
   (secrets from `nodeStageSecretRef`, volume context from `volumeAttributes`);
3. `NodePublishVolume` per pod at the pod's target path (secrets from `nodePublishSecretRef`;
   pod info in the volume context when the CSIDriver has `podInfoOnMount`).

Tear-down is `NodeUnpublishVolume` per pod, then `NodeUnstageVolume` when no pod on the node uses the
volume any more, then the volume leaves `volumesInUse`. Mount failures are `FailedMount` Warning
events on the pod (`MountVolume.MountDevice failed for volume "<pv>" : <error>`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from proto import csi_pb2
from testbed.apiserver import NotFound, Store
from testbed.controllers.csi import go_error, publish_path, staging_path, volume_capability
from testbed.controllers.events import WARNING, EventRecorder
from testbed.controllers.storage import attachment_name, pod_claim_names, unique_volume_name

if TYPE_CHECKING:
    from testbed.controllers.nodeinfo import NodeInfoManager
    from testbed.controllers.plugins import Driver, PluginManager

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


class NotReady(Exception):
    """The volume cannot be mounted yet (claim unbound, not attached, driver not registered)."""


class Host(Protocol):
    """What the volume manager needs from its kubelet."""

    store: Store
    node_name: str
    root_dir: str
    csi_timeout: float
    plugins: PluginManager
    nodeinfo: NodeInfoManager
    recorder: EventRecorder

    def cached(self, resource: str, key: str) -> Obj | None: ...


@dataclass
class MountedVolume:
    """One PV published for one pod (kubelet's actual state of the world)."""

    pod_uid: str
    claim_key: str
    pv_name: str
    driver: str
    handle: str
    target_path: str
    staging_path: str
    read_only: bool


class VolumeManager:
    """Mounts and unmounts the CSI volumes of the pods on one node."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.mounted: dict[tuple[str, str], MountedVolume] = {}
        """(pod uid, PV name) -> the published volume."""
        self.staged: dict[tuple[str, str], str] = {}
        """(driver, volume handle) -> staging path."""
        self.in_use: set[str] = set()

    def driver(self, name: str) -> Driver:
        driver = self.host.plugins.drivers.get(name)
        if driver is None:
            raise NotReady(f"driver name {name} not found in the list of registered CSI drivers")
        return driver

    def attach_required(self, driver: str) -> bool:
        csi_driver = self.host.cached("csidrivers", driver)
        return csi_driver is None or (csi_driver.get("spec") or {}).get("attachRequired") is not False

    async def setup_pod(self, pod: Obj) -> None:
        """Mount every CSI PVC volume of `pod`; raises NotReady or the first failure."""
        namespace, uid = pod["metadata"]["namespace"], pod["metadata"]["uid"]
        failure: Exception | None = None
        for claim_name, read_only in pod_claim_names(pod):
            try:
                await self._setup_volume(pod, f"{namespace}/{claim_name}", read_only=read_only)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        log.debug("pod volumes mounted", pod=f"{namespace}/{pod['metadata']['name']}", uid=uid)

    async def _setup_volume(self, pod: Obj, claim_key: str, *, read_only: bool) -> None:
        claim = self.host.cached("persistentvolumeclaims", claim_key)
        if claim is None:
            raise NotReady(f'persistentvolumeclaim "{claim_key.split("/", 1)[1]}" not found')
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise NotReady(f"persistentvolumeclaim {claim_key} is not bound")
        volume = self.host.cached("persistentvolumes", volume_name)
        if volume is None or not (volume.get("spec") or {}).get("csi"):
            return  # not a CSI volume: nothing for this stand-in to do
        uid = pod["metadata"]["uid"]
        if (uid, volume_name) in self.mounted:
            return
        csi = volume["spec"]["csi"]
        publish_context = self._publish_context(csi["driver"], csi["volumeHandle"])
        try:
            driver = self.driver(csi["driver"])
            capabilities = await driver.refresh_capabilities(self.host.csi_timeout)
            stage_path = await self._stage(driver, volume, publish_context, capabilities)
        except Exception as exc:
            await self._failed(
                pod, f'MountVolume.MountDevice failed for volume "{volume_name}" : {_err(exc)}'
            )
            raise
        target = publish_path(self.host.root_dir, volume, uid)
        try:
            await self._publish(
                driver, pod, volume, publish_context, capabilities, stage_path, target, read_only
            )
        except Exception as exc:
            await self._failed(pod, f'MountVolume.SetUp failed for volume "{volume_name}" : {_err(exc)}')
            raise
        self.mounted[(uid, volume_name)] = MountedVolume(
            uid, claim_key, volume_name, csi["driver"], csi["volumeHandle"], target, stage_path, read_only
        )
        log.info("volume published", pod_uid=uid, pv=volume_name, target=target)

    def _publish_context(self, driver: str, handle: str) -> dict[str, str]:
        if not self.attach_required(driver):
            return {}
        name = attachment_name(handle, driver, self.host.node_name)
        attachment = self.host.cached("volumeattachments", name)
        status = (attachment or {}).get("status") or {}
        if not status.get("attached"):
            error = (status.get("attachError") or {}).get("message")
            raise NotReady(error or f"volume attachment {name} is not attached yet")
        return dict(status.get("attachmentMetadata") or {})

    async def _stage(
        self, driver: Driver, volume: Obj, context: dict[str, str], capabilities: frozenset[str]
    ) -> str:
        csi = volume["spec"]["csi"]
        key = (csi["driver"], csi["volumeHandle"])
        await self._report_in_use(add=unique_volume_name(*key))
        if "STAGE_UNSTAGE_VOLUME" not in capabilities:
            return ""
        if key in self.staged:
            return self.staged[key]
        path = staging_path(self.host.root_dir, volume)
        request = csi_pb2.NodeStageVolumeRequest(
            volume_id=csi["volumeHandle"],
            publish_context=context,
            staging_target_path=path,
            volume_capability=volume_capability(
                volume, multi_writer="SINGLE_NODE_MULTI_WRITER" in capabilities
            ),
            secrets=await self._secrets(csi.get("nodeStageSecretRef"), "NodeStageSecretRef"),
            volume_context=dict(csi.get("volumeAttributes") or {}),
        )
        await driver.node.NodeStageVolume(request, timeout=self.host.csi_timeout)
        self.staged[key] = path
        log.info("volume staged", pv=volume["metadata"]["name"], staging_path=path)
        return path

    async def _publish(  # noqa: PLR0913 - the inputs of one NodePublishVolume call
        self,
        driver: Driver,
        pod: Obj,
        volume: Obj,
        context: dict[str, str],
        capabilities: frozenset[str],
        stage_path: str,
        target: str,
        read_only: bool,  # noqa: FBT001
    ) -> None:
        csi = volume["spec"]["csi"]
        volume_context = dict(csi.get("volumeAttributes") or {})
        csi_driver = self.host.cached("csidrivers", csi["driver"]) or {}
        if (csi_driver.get("spec") or {}).get("podInfoOnMount"):
            meta = pod["metadata"]
            volume_context |= {
                "csi.storage.k8s.io/pod.name": meta["name"],
                "csi.storage.k8s.io/pod.namespace": meta["namespace"],
                "csi.storage.k8s.io/pod.uid": meta["uid"],
                "csi.storage.k8s.io/serviceAccount.name": (pod.get("spec") or {}).get("serviceAccountName")
                or "default",
                "csi.storage.k8s.io/ephemeral": "false",
            }
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=csi["volumeHandle"],
            publish_context=context,
            staging_target_path=stage_path,
            target_path=target,
            volume_capability=volume_capability(
                volume, multi_writer="SINGLE_NODE_MULTI_WRITER" in capabilities
            ),
            readonly=read_only or bool(csi.get("readOnly")),
            secrets=await self._secrets(csi.get("nodePublishSecretRef"), "NodePublishSecretRef"),
            volume_context=volume_context,
        )
        await driver.node.NodePublishVolume(request, timeout=self.host.csi_timeout)

    async def teardown_pod(self, uid: str) -> None:
        """Unpublish every volume of the pod, unstage what no pod uses any more."""
        failure: Exception | None = None
        for key, mounted in sorted(self.mounted.items()):
            if mounted.pod_uid != uid:
                continue
            try:
                request = csi_pb2.NodeUnpublishVolumeRequest(
                    volume_id=mounted.handle, target_path=mounted.target_path
                )
                await self.driver(mounted.driver).node.NodeUnpublishVolume(
                    request, timeout=self.host.csi_timeout
                )
            except Exception as exc:
                failure = failure or exc
                continue
            del self.mounted[key]
            log.info("volume unpublished", pod_uid=uid, pv=mounted.pv_name)
        await self._unstage_unused()
        if failure is not None:
            raise failure

    async def _unstage_unused(self) -> None:
        used = {(m.driver, m.handle) for m in self.mounted.values()}
        for key, path in sorted(self.staged.items()):
            if key in used:
                continue
            request = csi_pb2.NodeUnstageVolumeRequest(volume_id=key[1], staging_target_path=path)
            await self.driver(key[0]).node.NodeUnstageVolume(request, timeout=self.host.csi_timeout)
            del self.staged[key]
            log.info("volume unstaged", driver=key[0], handle=key[1])
        remaining = {unique_volume_name(m.driver, m.handle) for m in self.mounted.values()}
        remaining |= {unique_volume_name(*k) for k in self.staged}
        if remaining != self.in_use:
            self.in_use = remaining
            await self.host.nodeinfo.set_volumes_in_use(sorted(remaining))

    async def _report_in_use(self, *, add: str) -> None:
        if add not in self.in_use:
            self.in_use.add(add)
            await self.host.nodeinfo.set_volumes_in_use(sorted(self.in_use))

    async def _secrets(self, ref: Obj | None, what: str) -> dict[str, str]:
        return await fetch_secrets(self.host.store, ref, what)

    async def _failed(self, pod: Obj, message: str) -> None:
        await self.host.recorder.event(pod, WARNING, "FailedMount", message)


async def fetch_secrets(store: Store, ref: Obj | None, what: str) -> dict[str, str]:
    """The data of the secret a `*SecretRef` names ({} without a ref), as kubelet reads it."""
    if not ref:
        return {}
    name, namespace = str(ref.get("name", "")), str(ref.get("namespace", ""))
    try:
        secret = await store.get("secrets", name, namespace=namespace)
    except NotFound as exc:
        raise RuntimeError(
            f"fetching {what} {namespace}/{name} failed: kubernetes.io/csi: failed to find the secret "
            f"{name} in the namespace {namespace} with error: {exc}"
        ) from None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | dict(secret.get("stringData") or {})


def _err(exc: Exception) -> str:
    if isinstance(exc, NotReady) and "not found in the list of registered CSI drivers" in str(exc):
        return f"kubernetes.io/csi: attacher.MountDevice failed to create newCsiDriverClient: {exc}"
    return go_error(exc)
