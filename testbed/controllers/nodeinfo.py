"""Kubelet's node registration and CSI node info manager: the Node, its CSINode, and their CSI entries.

* `register_node` is kubelet's `registerWithAPIServer`: create the Node with the well-known labels and
  `volumes.kubernetes.io/controller-managed-attach-detach: "true"` (or reconcile both onto an
  existing Node), report it Ready, then create its CSINode (owned by the Node, no drivers).
* `install_driver` is `nodeInfoManager.InstallCSIDriver`: the Node gets the driver's node id in the
  `csi.volume.kubernetes.io/nodeid` annotation (a JSON map driver -> node id, Go's sorted compact
  encoding) and one label per topology key (a different existing value is a collision error); the
  CSINode gets `{name, nodeID, topologyKeys (sorted), allocatable.count}` (count only when
  max_volumes_per_node > 0), replacing an older entry of the driver.
* `uninstall_driver` removes the CSINode entry and the node id; topology labels stay (as upstream).
* `set_volumes_in_use` writes `status.volumesInUse`, which the attach-detach controller honours.

Every write re-reads and retries on Conflict (`retry.RetryOnConflict`).
"""

from __future__ import annotations

import copy
import json
import platform
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from testbed.apiserver import AlreadyExists, Conflict, NotFound, Store
from testbed.controllers.events import go_time
from testbed.controllers.storage import ANN_CONTROLLER_MANAGED_ATTACH, ANN_NODE_ID

log = structlog.get_logger(__name__)
Obj = dict[str, Any]
T = TypeVar("T")
CONFLICT_RETRIES = 10
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


async def retry_on_conflict(write: Callable[[], Awaitable[T]]) -> T:
    """Run `write` (which must re-read what it changes) again after each Conflict, a few times."""
    for _ in range(CONFLICT_RETRIES - 1):
        try:
            return await write()
        except Conflict:
            continue
    return await write()


class TopologyCollision(Exception):
    """A driver reported a topology value that differs from the Node's existing label."""


class NodeInfoManager:
    """The Node and CSINode objects of one kubelet."""

    def __init__(self, store: Store, node_name: str) -> None:
        self.store = store
        self.node_name = node_name

    async def register_node(self) -> Obj:
        """Create or adopt the Node, mark it Ready, and make sure its CSINode exists."""
        node = await retry_on_conflict(self._ensure_node)
        node = await retry_on_conflict(self._report_ready)
        try:
            await self.store.create(
                "csinodes",
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "CSINode",
                    "metadata": {
                        "name": self.node_name,
                        "ownerReferences": [
                            {
                                "apiVersion": "v1",
                                "kind": "Node",
                                "name": self.node_name,
                                "uid": node["metadata"]["uid"],
                            }
                        ],
                    },
                    "spec": {"drivers": []},
                },
            )
        except AlreadyExists:
            pass
        return node

    async def _ensure_node(self) -> Obj:
        labels = {
            "beta.kubernetes.io/arch": _ARCH,
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": _ARCH,
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
        }
        try:
            node = await self.store.get("nodes", self.node_name)
        except NotFound:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": self.node_name,
                    "labels": labels,
                    "annotations": {ANN_CONTROLLER_MANAGED_ATTACH: "true"},
                },
                "spec": {},
            }
            log.info("registering node", node=self.node_name)
            return await self.store.create("nodes", body)
        # an existing Node: kubelet reconciles its default labels and the attach-detach annotation
        meta = node["metadata"]
        wanted_annotations = {**(meta.get("annotations") or {}), ANN_CONTROLLER_MANAGED_ATTACH: "true"}
        wanted_labels = {**(meta.get("labels") or {}), **labels}
        if wanted_annotations == meta.get("annotations") and wanted_labels == meta.get("labels"):
            return node
        meta["annotations"], meta["labels"] = wanted_annotations, wanted_labels
        return await self.store.update("nodes", node)

    async def _report_ready(self) -> Obj:
        node = await self.store.get("nodes", self.node_name)
        status = node.setdefault("status", {})
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        if any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        ):
            return node
        now = go_time()
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
            }
        )
        status["conditions"] = conditions
        return await self.store.update_status("nodes", node)

    # ---- CSI drivers ----------------------------------------------------------------------------------

    async def install_driver(
        self, driver: str, node_id: str, max_volumes: int, topology: dict[str, str]
    ) -> None:
        """`InstallCSIDriver`: Node annotation and topology labels first, then the CSINode entry."""
        if not node_id:
            raise ValueError("error adding CSI driver node info: driverNodeID must not be empty")

        async def update_node() -> None:
            node = await self.store.get("nodes", self.node_name)
            meta = node["metadata"]
            before = copy.deepcopy(meta)
            ids = _node_ids(node)
            ids[driver] = node_id
            meta.setdefault("annotations", {})[ANN_NODE_ID] = _go_json(ids)
            labels = meta.setdefault("labels", {})
            for key, value in topology.items():
                if key in labels and labels[key] != value:
                    raise TopologyCollision(
                        f"detected topology value collision: driver reported {key!r}:{value!r} "
                        f"but existing label is {key!r}:{labels[key]!r}"
                    )
                labels[key] = value
            if meta != before:
                await self.store.update("nodes", node)

        try:
            await retry_on_conflict(update_node)
        except Exception as exc:
            raise RuntimeError(f"error updating Node object with CSI driver node info: {exc}") from exc

        async def update_csinode() -> None:
            csinode = await self._csinode()
            drivers = list((csinode.get("spec") or {}).get("drivers") or [])
            entry: Obj = {"name": driver, "nodeID": node_id, "topologyKeys": sorted(topology)}
            if max_volumes > 0:
                entry["allocatable"] = {"count": min(max_volumes, 2**31 - 1)}
            if any(_same_entry(d, entry) for d in drivers):
                return
            csinode.setdefault("spec", {})["drivers"] = [d for d in drivers if d.get("name") != driver] + [
                entry
            ]
            await self.store.update("csinodes", csinode)

        try:
            await retry_on_conflict(update_csinode)
        except Exception as exc:
            raise RuntimeError(f"error updating CSINode object with CSI driver node info: {exc}") from exc
        log.info("csi driver installed on node", driver=driver, node=self.node_name, node_id=node_id)

    async def uninstall_driver(self, driver: str) -> None:
        """`UninstallCSIDriver`: drop the CSINode entry and the node id annotation entry."""

        async def update_csinode() -> None:
            try:
                csinode = await self.store.get("csinodes", self.node_name)
            except NotFound:
                return
            drivers = list((csinode.get("spec") or {}).get("drivers") or [])
            kept = [d for d in drivers if d.get("name") != driver]
            if kept != drivers:
                csinode["spec"]["drivers"] = kept
                await self.store.update("csinodes", csinode)

        async def update_node() -> None:
            try:
                node = await self.store.get("nodes", self.node_name)
            except NotFound:
                return
            ids = _node_ids(node)
            if driver not in ids:
                return
            del ids[driver]
            annotations = node["metadata"].setdefault("annotations", {})
            if ids:
                annotations[ANN_NODE_ID] = _go_json(ids)
            else:
                annotations.pop(ANN_NODE_ID, None)
            await self.store.update("nodes", node)

        await retry_on_conflict(update_csinode)
        await retry_on_conflict(update_node)
        log.info("csi driver uninstalled from node", driver=driver, node=self.node_name)

    async def set_volumes_in_use(self, names: list[str]) -> None:
        """Report `status.volumesInUse` (sorted unique volume names)."""

        async def update() -> None:
            node = await self.store.get("nodes", self.node_name)
            status = node.setdefault("status", {})
            if sorted(status.get("volumesInUse") or []) == sorted(names):
                return
            if names:
                status["volumesInUse"] = sorted(names)
            else:
                status.pop("volumesInUse", None)
            await self.store.update_status("nodes", node)

        await retry_on_conflict(update)

    async def _csinode(self) -> Obj:
        try:
            return await self.store.get("csinodes", self.node_name)
        except NotFound:
            node = await self.store.get("nodes", self.node_name)
            ref = {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
            body = {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "CSINode",
                "metadata": {"name": self.node_name, "ownerReferences": [ref]},
                "spec": {"drivers": []},
            }
            return await self.store.create("csinodes", body)


def _node_ids(node: Obj) -> dict[str, str]:
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(ANN_NODE_ID)
    if not raw:
        return {}
    parsed = json.loads(raw)
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}


def _go_json(mapping: dict[str, str]) -> str:
    """`json.Marshal` of a Go map: keys sorted, no spaces."""
    return json.dumps(dict(sorted(mapping.items())), separators=(",", ":"))


def _same_entry(current: Obj, wanted: Obj) -> bool:
    """`installDriverToCSINode`'s no-op check: same node id, topology keys and allocatable count."""
    if current.get("name") != wanted["name"] or current.get("nodeID") != wanted["nodeID"]:
        return False
    if set(current.get("topologyKeys") or []) != set(wanted["topologyKeys"]):
        return False
    return (current.get("allocatable") or {}).get("count") == (wanted.get("allocatable") or {}).get("count")
