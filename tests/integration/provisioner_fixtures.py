"""Provisioner test bed: the golden run's objects, a PV-controller stand-in, and helpers to drive the sidecar.

`PVControllerStandIn` plays kube-controller-manager's parts the provisioner depends on, acting on
the store directly (so the request log holds only what the sidecar sent):

* a Pending claim whose StorageClass names an external provisioner gets
  `volume.kubernetes.io/storage-provisioner` and the beta key — at once for Immediate binding,
  once `volume.kubernetes.io/selected-node` is set for WaitForFirstConsumer (the scheduler's part,
  which tests play by annotating the claim);
* a PV whose claimRef names an existing claim (same UID) binds both (volumeName, bind annotations,
  phases Bound); a PV whose claim is gone becomes Released;
* pvc-protection and pv-protection finalizers are removed when the object is being deleted (no pod
  uses a claim here; a PV goes when it is no longer Bound).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kit import SidecarProcess, eventually

from testbed.apiserver import ApiServer, Conflict, NotFound, Store
from testbed.apiserver.listing import ListOptions
from testbed.csidriver import TestDriver

Obj = dict[str, Any]
DRIVER = "hostpath.csi.k8s.io"
TOPOLOGY_KEY = "topology.hostpath.csi/node"
PREFIX = "csi.storage.k8s.io/"
ANN_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
INTENT = "csi-sidecars.python/provisioning-intent"
PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"


def node(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {TOPOLOGY_KEY: name}}}


def csinode(name: str) -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "CSINode",
        "metadata": {"name": name},
        "spec": {"drivers": [{"name": DRIVER, "nodeID": name, "topologyKeys": [TOPOLOGY_KEY]}]},
    }


def storage_class(
    name: str = "golden", *, binding: str = "Immediate", reclaim: str = "Delete", **extra: Any
) -> Obj:
    """The golden run's StorageClass; `parameters=` replaces its parameters."""
    parameters = {
        PREFIX + "fstype": "xfs",
        PREFIX + "provisioner-secret-name": "prov-secret",
        PREFIX + "provisioner-secret-namespace": "default",
        PREFIX + "controller-expand-secret-name": "prov-secret",
        PREFIX + "controller-expand-secret-namespace": "default",
        "tier": "gold",
    }
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": binding,
        "allowVolumeExpansion": True,
        "mountOptions": ["noatime"],
        "parameters": parameters,
        **extra,
    }


def secret(name: str = "prov-secret", namespace: str = "default", **data: str) -> Obj:
    values = data or {"password": "s3cr3t-value-never-logged"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def claim(
    name: str = "data", *, sc: str = "golden", size: str = "1Gi", namespace: str = "default", **meta: Any
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": sc,
        },
    }


async def golden_objects(store: Store, *, nodes: tuple[str, ...] = ("node-1",)) -> None:
    """Nodes with their CSINodes, the StorageClass `golden` and Secret `default/prov-secret`."""
    for name in nodes:
        await store.create("nodes", node(name))
        await store.create("csinodes", csinode(name))
    await store.create("storageclasses", storage_class())
    await store.create("secrets", secret(), namespace="default")


def provisioner_args(kubeconfig: str, socket: Path, *extra: str) -> list[str]:
    return [f"--kubeconfig={kubeconfig}", f"--csi-address=unix://{socket}", "--v=5", *extra]


class PVControllerStandIn:
    """See the module docstring. `async with PVControllerStandIn(store).running(): ...`"""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PVControllerStandIn]:
        tasks = [
            asyncio.create_task(self._watch("persistentvolumeclaims"), name="standin claims"),
            asyncio.create_task(self._watch("persistentvolumes"), name="standin volumes"),
        ]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, resource: str) -> None:
        async with self.store.watch(resource, "") as events:
            async for event in events:
                try:
                    if resource == "persistentvolumeclaims":
                        await self._claim(event.type, event.object)
                    else:
                        await self._volume(event.type, event.object)
                except (Conflict, NotFound):
                    pass  # a newer version is on its way through this watch

    async def _claim(self, kind: str, pvc: Obj) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        if kind == "DELETED":
            await self._release_volumes_of(meta["uid"])
            return
        if meta.get("deletionTimestamp"):
            await self._drop_finalizer("persistentvolumeclaims", pvc, "kubernetes.io/pvc-protection")
            return
        anns = meta.get("annotations") or {}
        if spec.get("volumeName") or ANN_PROVISIONER in anns:
            if not spec.get("volumeName"):
                await self._bind_from_claim(pvc)
            return
        try:
            sc = await self.store.get("storageclasses", spec.get("storageClassName") or "")
        except NotFound:
            return
        if sc.get("volumeBindingMode") == "WaitForFirstConsumer" and not anns.get(ANN_SELECTED_NODE):
            return
        patch = {
            "metadata": {
                "annotations": {ANN_PROVISIONER: sc["provisioner"], ANN_BETA_PROVISIONER: sc["provisioner"]}
            }
        }
        await self.store.patch("persistentvolumeclaims", name, patch, patch_type="merge", namespace=ns)

    async def _bind_from_claim(self, pvc: Obj) -> None:
        entries, _ = self.store.list_entries(self.store.rtype("persistentvolumes"), _all())
        for entry in entries:
            ref = (entry.obj.get("spec") or {}).get("claimRef") or {}
            if ref.get("uid") == pvc["metadata"]["uid"]:
                await self._volume("MODIFIED", entry.copy())

    async def _volume(self, kind: str, pv: Obj) -> None:
        if kind == "DELETED":
            return
        meta, spec = pv["metadata"], pv.get("spec") or {}
        phase = (pv.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            if phase != "Bound":
                await self._drop_finalizer("persistentvolumes", pv, "kubernetes.io/pv-protection")
            return
        ref = spec.get("claimRef")
        if not ref or phase in ("Bound", "Released"):
            return
        try:
            pvc = await self.store.get("persistentvolumeclaims", ref["name"], namespace=ref["namespace"])
        except NotFound:
            pvc = None
        if (
            pvc is None
            or pvc["metadata"]["uid"] != ref.get("uid")
            or pvc["metadata"].get("deletionTimestamp")
        ):
            await self._set_phase(pv, "Released")
            return
        if not (pvc.get("spec") or {}).get("volumeName"):
            pvc["spec"]["volumeName"] = meta["name"]
            anns = pvc["metadata"].setdefault("annotations", {})
            anns.update(
                {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes"}
            )
            pvc = await self.store.update("persistentvolumeclaims", pvc)
            pvc["status"] = {
                "phase": "Bound",
                "accessModes": spec.get("accessModes", []),
                "capacity": spec.get("capacity", {}),
            }
            await self.store.update_status("persistentvolumeclaims", pvc)
        await self._set_phase(pv, "Bound")

    async def _set_phase(self, pv: Obj, phase: str) -> None:
        current = await self.store.get("persistentvolumes", pv["metadata"]["name"])
        current["status"] = {**(current.get("status") or {}), "phase": phase}
        await self.store.update_status("persistentvolumes", current)

    async def _release_volumes_of(self, uid: str) -> None:
        entries, _ = self.store.list_entries(self.store.rtype("persistentvolumes"), _all())
        for entry in entries:
            if ((entry.obj.get("spec") or {}).get("claimRef") or {}).get("uid") == uid:
                await self._set_phase(entry.copy(), "Released")

    async def _drop_finalizer(self, resource: str, obj: Obj, finalizer: str) -> None:
        meta = obj["metadata"]
        current = await self.store.get(resource, meta["name"], namespace=meta.get("namespace", ""))
        finalizers = current["metadata"].get("finalizers") or []
        if finalizer in finalizers:
            current["metadata"]["finalizers"] = [f for f in finalizers if f != finalizer]
            await self.store.update(resource, current)


def _all() -> ListOptions:
    return ListOptions()


# --- helpers for the tests --------------------------------------------------------------------------

GOLDEN = Path(__file__).parent.parent / "golden"
VOLATILE_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")
FAST_RETRIES = ("--retry-interval-start=50ms", "--retry-interval-max=2s")


def golden(name: str) -> Obj:
    result: Obj = json.loads((GOLDEN / name).read_text())
    return result


def comparable(obj: Obj) -> Obj:
    """`obj` without uids, resourceVersions, times, the driver's handle and the identity's digits."""
    obj = copy.deepcopy(obj)
    meta = obj.get("metadata") or {}
    for key in VOLATILE_META:
        meta.pop(key, None)
    if obj.get("kind") == "PersistentVolume":
        meta["name"] = "<pv>"
    (obj.get("status") or {}).pop("lastPhaseTransitionTime", None)
    spec = obj.get("spec") or {}
    if isinstance(spec.get("claimRef"), dict):
        spec["claimRef"].pop("resourceVersion", None)
        spec["claimRef"].pop("uid", None)
    if spec.get("volumeName"):
        spec["volumeName"] = "<pv>"
    csi = spec.get("csi")
    if isinstance(csi, dict):
        csi["volumeHandle"] = "<handle>"
        attributes = csi.get("volumeAttributes") or {}
        identity = attributes.get("storage.kubernetes.io/csiProvisionerIdentity", "")
        millis, number, driver = identity.split("-", 2)
        assert millis.isdigit() and number.isdigit() and int(number) < 10000 and driver == DRIVER, identity
        attributes["storage.kubernetes.io/csiProvisionerIdentity"] = "<identity>"
    return obj


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def stop_cleanly(process: SidecarProcess) -> None:
    """SIGTERM: exit 0 and no asyncio complaints in the log."""
    code = await process.stop(timeout=25)
    log = process.log()
    assert code == 0, log[-3000:]
    for complaint in ("Task was destroyed but it is pending", "was never awaited"):
        assert complaint not in log, log[-3000:]


class Bed:
    """One provisioner test bed: API server store, test driver, stand-in, and the sidecar processes."""

    def __init__(self, apiserver: ApiServer, driver: TestDriver, sidecar: Callable[..., SidecarProcess]):
        self.apiserver = apiserver
        self.store = apiserver.store
        self.driver = driver
        self.sidecar = sidecar
        assert apiserver.kubeconfig is not None and driver.endpoint is not None
        self.kubeconfig = str(apiserver.kubeconfig)
        self.socket = Path(driver.address.removeprefix("unix://"))

    def start(self, *extra: str, env: dict[str, str] | None = None, fast: bool = True) -> SidecarProcess:
        args = provisioner_args(self.kubeconfig, self.socket, *(FAST_RETRIES if fast else ()), *extra)
        return self.sidecar("sidecars.provisioner", *args, env=env)

    async def create_claim(self, name: str = "data", **kw: Any) -> Obj:
        body = claim(name, **kw)
        return await self.store.create(
            "persistentvolumeclaims", body, namespace=body["metadata"]["namespace"]
        )

    async def get(self, resource: str, name: str, namespace: str = "") -> Obj | None:
        try:
            return await self.store.get(resource, name, namespace=namespace)
        except NotFound:
            return None

    async def wait_bound(
        self, name: str = "data", namespace: str = "default", *, timeout: float = 20.0
    ) -> Obj:
        async def probe() -> Obj | None:
            pvc = await self.get("persistentvolumeclaims", name, namespace)
            if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
                return None
            return pvc if INTENT not in (pvc["metadata"].get("finalizers") or []) else None

        pvc: Obj = await eventually(probe, timeout=timeout, message=f"claim {namespace}/{name} bound")
        return pvc

    async def pvs(self) -> list[Obj]:
        items: list[Obj] = (await self.store.list("persistentvolumes"))["items"]
        return items

    async def events(self, name: str | None = None, reason: str | None = None) -> list[Obj]:
        items = (await self.store.list("events"))["items"]
        return [
            e
            for e in items
            if (name is None or e["involvedObject"]["name"] == name)
            and (reason is None or e["reason"] == reason)
        ]

    async def wait_event(self, name: str, reason: str, *, contains: str = "", timeout: float = 20.0) -> Obj:
        async def probe() -> Obj | None:
            for event in await self.events(name, reason):
                if contains in event["message"]:
                    return event
            return None

        event: Obj = await eventually(
            probe, timeout=timeout, message=f"{reason} event on {name} ({contains})"
        )
        return event

    async def delete_claim(self, name: str = "data", namespace: str = "default") -> None:
        await self.store.delete("persistentvolumeclaims", name, namespace=namespace)

    async def wait_gone(
        self, resource: str, name: str, namespace: str = "", *, timeout: float = 20.0
    ) -> None:
        async def probe() -> bool:
            return await self.get(resource, name, namespace) is None

        await eventually(probe, timeout=timeout, message=f"{resource} {name} gone")

    async def wait_no_volumes(self, *, timeout: float = 20.0) -> None:
        await eventually(
            lambda: not self.driver.volumes, timeout=timeout, message="the driver has no volumes"
        )


@contextlib.asynccontextmanager
async def provisioner_bed(
    apiserver: ApiServer, driver: TestDriver, sidecar: Callable[..., SidecarProcess], **objects: Any
) -> AsyncIterator[Bed]:
    """The golden objects, the stand-in running, and a `Bed` to drive the sidecar with."""
    await golden_objects(apiserver.store, **objects)
    async with PVControllerStandIn(apiserver.store).running():
        yield Bed(apiserver, driver, sidecar)
