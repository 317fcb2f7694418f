"""Provisioner test bed: the golden run's objects, the PV controller stand-ins, helpers to drive the sidecar.

`provisioner_bed` creates the golden run's Node/CSINode `node-1`, StorageClass `golden` and Secret
`default/prov-secret`, runs `testbed.controllers` "pv" (the PV binder, pvc-protection and
pv-protection) on the API server's store, and gives a `Bed`: start the real sidecar, create and
delete claims, wait for bindings and events. Tests play the scheduler by annotating claims with
`volume.kubernetes.io/selected-node`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from kit import SidecarProcess, eventually
from kit import stop_cleanly as kit_stop_cleanly

from proto import csi_pb2
from testbed.apiserver import ApiServer, NotFound, Store
from testbed.controllers import ControlPlane
from testbed.csidriver import TestDriver, connect

stop_cleanly = functools.partial(kit_stop_cleanly, timeout=25)
"""SIGTERM: exit 0 and a clean log (kit.stop_cleanly with this module's bounds)."""

Obj = dict[str, Any]
DRIVER = "hostpath.csi.k8s.io"
TOPOLOGY_KEY = "topology.hostpath.csi/node"
PREFIX = "csi.storage.k8s.io/"
ANN_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
INTENT = "csi-sidecars.python/provisioning-intent"
PV_FINALIZER = "external-provisioner.volume.kubernetes.io/finalizer"
CLONE_FINALIZER = "provisioner.storage.kubernetes.io/cloning-protection"
SNAPSHOT_FINALIZER = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"
SNAPSHOT_GROUP = "snapshot.storage.k8s.io"


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

    async def our_events(self, name: str) -> list[Obj]:
        """Events the provisioner wrote about `name` (not the PV controller's)."""
        return [e for e in await self.events(name) if e["source"]["component"].startswith(f"{DRIVER}_")]

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
    """The golden objects, the PV controller stand-ins running, and a `Bed` to drive the sidecar with."""
    await golden_objects(apiserver.store, **objects)
    async with ControlPlane(apiserver.store, ["pv"], resync_period=2.0) as plane:
        await plane.wait_synced()
        yield Bed(apiserver, driver, sidecar)


# --- data sources: snapshots as the snapshot controller would make them -----------------------------


def snapshot_source(name: str) -> Obj:
    return {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot", "name": name}


async def make_snapshot(
    bed: Bed,
    name: str,
    claim_name: str,
    *,
    namespace: str = "default",
    ready: bool = True,
    driver: str = DRIVER,
    source_mode: str | None = "Filesystem",
    annotations: dict[str, str] | None = None,
) -> tuple[Obj, Obj]:
    """A CSI snapshot of `claim_name`'s volume in the test driver, and a VolumeSnapshot bound to a
    VolumeSnapshotContent for it (both with status), as external-snapshotter leaves them."""
    pvc = await bed.store.get("persistentvolumeclaims", claim_name, namespace=namespace)
    pv = await bed.store.get("persistentvolumes", pvc["spec"]["volumeName"])
    handle = pv["spec"]["csi"]["volumeHandle"]
    async with connect(bed.driver.address) as stubs:
        answer = await stubs.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name=f"snapshot-{name}", source_volume_id=handle)
        )
    snap = answer.snapshot
    vs = await bed.store.create(
        "volumesnapshots",
        {
            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"persistentVolumeClaimName": claim_name}},
        },
        namespace=namespace,
    )
    content_spec: Obj = {
        "deletionPolicy": "Delete",
        "driver": driver,
        "source": {"volumeHandle": handle},
        "volumeSnapshotRef": {
            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
            "kind": "VolumeSnapshot",
            "name": name,
            "namespace": namespace,
            "uid": vs["metadata"]["uid"],
        },
    }
    if source_mode is not None:
        content_spec["sourceVolumeMode"] = source_mode
    content = await bed.store.create(
        "volumesnapshotcontents",
        {
            "apiVersion": f"{SNAPSHOT_GROUP}/v1",
            "kind": "VolumeSnapshotContent",
            "metadata": {"name": f"snapcontent-{vs['metadata']['uid']}", "annotations": annotations or {}},
            "spec": content_spec,
        },
    )
    content["status"] = {
        "snapshotHandle": snap.snapshot_id,
        "readyToUse": True,
        "restoreSize": snap.size_bytes,
        "creationTime": 1,
    }
    content = await bed.store.update_status("volumesnapshotcontents", content)
    vs["status"] = {
        "boundVolumeSnapshotContentName": content["metadata"]["name"],
        "readyToUse": ready,
        "restoreSize": f"{snap.size_bytes // 2**20}Mi",
    }
    vs = await bed.store.update_status("volumesnapshots", vs, namespace=namespace)
    return vs, content


async def set_snapshot_ready(bed: Bed, name: str, *, namespace: str = "default", ready: bool = True) -> None:
    vs = await bed.store.get("volumesnapshots", name, namespace=namespace)
    vs["status"]["readyToUse"] = ready
    await bed.store.update_status("volumesnapshots", vs, namespace=namespace)


def finalizers_of(obj: Obj | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])
