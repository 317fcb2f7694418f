"""The kubelet stand-in of one node: node registration, CSI plugin registration, volumes, pod lifecycle.

On start it registers the Node (and its CSINode) like kubelet, then runs:

* the plugin watcher on `registration_dir` (`plugins.PluginManager`): node-driver-registrar sockets
  become registered drivers with their CSINode entry and Node annotation;
* a pod worker for the pods bound to this node (`spec.nodeName`): volumes are attached-waited,
  staged and published (`volumes.VolumeManager`), then the pod is reported Running; mounted volumes
  are expanded on the node when their PV grew (`expansion.NodeExpander`); a terminated pod's volumes
  are unpublished and unstaged; a pod being deleted is torn down and then deleted for good (grace
  period 0, uid precondition), as kubelet's status manager does.

`csi_endpoint` either overrides the endpoint a plugin reports (the registrar's
`--kubelet-registration-path` is a host path that may not exist here) or, without a registration
directory, names a driver to register directly (no registrar).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from testbed.apiserver import Conflict, DeleteOptions, NotFound, Store
from testbed.controllers.base import Controller, Key
from testbed.controllers.events import EventRecorder, go_time
from testbed.controllers.expansion import NodeExpander
from testbed.controllers.nodeinfo import NodeInfoManager, retry_on_conflict
from testbed.controllers.plugins import PluginManager
from testbed.controllers.storage import pod_is_terminated
from testbed.controllers.volumes import NotReady, VolumeManager

log = structlog.get_logger(__name__)
Obj = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class KubeletConfig:
    """How to run one kubelet stand-in."""

    node_name: str = "node-1"
    """The Node this kubelet registers and whose pods it runs (`--hostname-override`)."""
    registration_dir: Path | None = None
    """The plugin registration directory (`/var/lib/kubelet/plugins_registry`); None: no watcher."""
    csi_endpoint: str | None = None
    """The driver's CSI endpoint: overrides what plugins report, or registers directly (no watcher)."""
    root_dir: str = "/var/lib/kubelet"
    """`--root-dir`: the base of the staging and target paths sent to the driver (nothing is mounted)."""
    csi_timeout: float = 30.0
    """Timeout of each CSI call, seconds (kubelet: 2 minutes)."""
    poll_interval: float = 0.05
    """How often the registration directory is scanned, seconds."""


class Kubelet(Controller):
    """One node's kubelet, as far as CSI volumes are concerned."""

    name = "kubelet"
    resources = ("pods", "persistentvolumeclaims", "persistentvolumes", "csidrivers", "volumeattachments")
    expected_errors = (NotReady,)

    def __init__(
        self, store: Store, config: KubeletConfig | None = None, *, resync_period: float = 15.0
    ) -> None:
        self.config = config or KubeletConfig()
        self.node_name = self.config.node_name
        self.root_dir = self.config.root_dir
        self.csi_timeout = self.config.csi_timeout
        super().__init__(store, resync_period=resync_period)
        self.nodeinfo = NodeInfoManager(store, self.node_name)
        self.plugins = PluginManager(
            self.nodeinfo,
            registration_dir=self.config.registration_dir,
            endpoint_override=self.config.csi_endpoint if self.config.registration_dir else None,
            on_change=self._enqueue_all,
            poll_interval=self.config.poll_interval,
            csi_timeout=self.csi_timeout,
        )
        self.recorder = EventRecorder(store, "kubelet", host=self.node_name)
        self.volumes = VolumeManager(self)
        self.expander = NodeExpander(self)
        self._pod_uids: dict[str, str] = {}
        self._running: set[str] = set()

    def informer_options(self, resource: str) -> dict[str, Any]:
        return {"field_selector": f"spec.nodeName={self.node_name}"} if resource == "pods" else {}

    def keys_for(self, resource: str, old: Obj | None, new: Obj | None) -> Iterable[Key]:
        if resource == "pods":
            obj = new or old or {}
            yield ("pod", f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")
        else:
            yield from self._all_pods()

    def _all_pods(self) -> Iterable[Key]:
        for key in list(self.cache("pods")) + list(self._pod_uids):
            yield ("pod", key)

    def _enqueue_all(self) -> None:
        for key in self._all_pods():
            self.queue.add(key)

    async def run(self) -> None:
        await self.nodeinfo.register_node()
        await super().run()

    def extra_tasks(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {"plugin watcher": self.plugins.run()}
        if self.config.registration_dir is None and self.config.csi_endpoint:
            tasks["driver registration"] = self._register_directly(self.config.csi_endpoint)
        return tasks

    async def _register_directly(self, endpoint: str) -> None:
        delay = 0.1
        while True:
            try:
                await self.plugins.register_endpoint(endpoint)
                return
            except Exception as exc:
                log.info("direct driver registration failed", endpoint=endpoint, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ---- pods ---------------------------------------------------------------------------------------

    async def sync(self, key: Key) -> None:
        pod = self.cached("pods", key[1])
        if pod is None:
            uid = self._pod_uids.get(key[1])
            if uid is not None:
                await self._teardown(uid)
                del self._pod_uids[key[1]]
            return
        uid = pod["metadata"]["uid"]
        previous = self._pod_uids.get(key[1])
        if previous is not None and previous != uid:
            await self._teardown(previous)  # a new pod with the same name
        self._pod_uids[key[1]] = uid
        if pod["metadata"].get("deletionTimestamp") or pod_is_terminated(pod):
            await self._teardown(uid)
            if pod["metadata"].get("deletionTimestamp"):
                await self._finish_deletion(pod)
            return
        await self.volumes.setup_pod(pod)
        if uid not in self._running:
            await self._report_running(pod)
            self._running.add(uid)
        for mounted in [m for m in self.volumes.mounted.values() if m.pod_uid == uid]:
            await self.expander.expand_if_needed(pod, mounted)

    async def _teardown(self, uid: str) -> None:
        for mounted in [m for m in self.volumes.mounted.values() if m.pod_uid == uid]:
            self.expander.forget(mounted)
        await self.volumes.teardown_pod(uid)
        self._running.discard(uid)

    async def _finish_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        options = DeleteOptions(uid=meta["uid"], grace_period_seconds=0)
        try:
            await self.store.delete("pods", meta["name"], namespace=meta["namespace"], options=options)
            log.info("pod deleted", pod=f"{meta['namespace']}/{meta['name']}")
        except (NotFound, Conflict):
            pass  # gone already, or a different pod by now

    async def _report_running(self, pod: Obj) -> None:
        meta = pod["metadata"]
        now = go_time()

        async def update() -> None:
            current = await self.store.get("pods", meta["name"], namespace=meta["namespace"])
            if current["metadata"]["uid"] != meta["uid"] or current["metadata"].get("deletionTimestamp"):
                return
            status = current.setdefault("status", {})
            status["phase"] = "Running"
            status.setdefault("startTime", now)
            status["conditions"] = [
                {"type": kind, "status": "True", "lastProbeTime": None, "lastTransitionTime": now}
                for kind in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ]
            status["containerStatuses"] = [
                {
                    "name": container.get("name", ""),
                    "image": container.get("image", ""),
                    "imageID": "",
                    "containerID": f"testbed://{meta['uid']}/{container.get('name', '')}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for container in (current.get("spec") or {}).get("containers") or []
            ]
            await self.store.update_status("pods", current, namespace=meta["namespace"])

        try:
            await retry_on_conflict(update)
        except NotFound:
            return
        log.info("pod running", pod=f"{meta['namespace']}/{meta['name']}", node=self.node_name)
