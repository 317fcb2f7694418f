"""Helpers of the control-plane stand-in tests: object builders shaped like the golden capture, polling.

No tests here; `test_controllers_*.py` import from this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from testbed.apiserver import NotFound, Store

GOLDEN = Path("/work/shared/upstream-golden")
DRIVER = "hostpath.csi.k8s.io"
NODE = "node-1"
TOPOLOGY_KEY = "topology.hostpath.csi/node"
T = TypeVar("T")
Obj = dict[str, Any]


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 5.0, what: str = "") -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = await probe()
        except (NotFound, KeyError):
            last = None
        if last:
            return last
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or probe}: last {last!r}")


async def gone(store: Store, resource: str, name: str, *, namespace: str = "") -> bool:
    try:
        await store.get(resource, name, namespace=namespace)
    except NotFound:
        return True
    return False


def storage_class(
    name: str = "golden", *, provisioner: str = DRIVER, binding: str = "Immediate", expansion: bool = True
) -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": binding,
        "allowVolumeExpansion": expansion,
        "mountOptions": ["noatime"],
        "parameters": {"csi.storage.k8s.io/fstype": "xfs", "tier": "gold"},
    }


def claim(name: str = "data", *, size: str = "1Gi", class_name: str | None = "golden", **spec: Any) -> Obj:
    body: Obj = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}, **spec},
    }
    if class_name is not None:
        body["spec"]["storageClassName"] = class_name
    return body


def provisioned_volume(
    pvc: Obj, *, handle: str = "vol-1", size: str = "1Gi", finalizers: bool = False
) -> Obj:
    """The PV external-provisioner creates for `pvc` (01-provisioned-pv.json's shape)."""
    meta = pvc["metadata"]
    volume = golden("01-provisioned-pv.json")
    volume["metadata"] = {
        "name": f"pvc-{meta['uid']}",
        "annotations": volume["metadata"]["annotations"],
    }
    if finalizers:
        volume["metadata"]["finalizers"] = ["external-provisioner.volume.kubernetes.io/finalizer"]
    volume.pop("status")
    spec = volume["spec"]
    spec["capacity"] = {"storage": size}
    spec["csi"]["volumeHandle"] = handle
    spec["claimRef"] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "name": meta["name"],
        "namespace": meta["namespace"],
        "resourceVersion": meta["resourceVersion"],
        "uid": meta["uid"],
    }
    return volume


def static_volume(name: str, *, handle: str, size: str = "1Gi", class_name: str = "", **spec: Any) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": size},
            "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"},
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": class_name,
            **spec,
        },
    }


def pod(name: str, *claims: str, node: str | None = NODE, read_only: bool = False) -> Obj:
    spec: Obj = {
        "containers": [{"name": "app", "image": "busybox"}],
        "volumes": [
            {"name": f"v{i}", "persistentVolumeClaim": {"claimName": c, "readOnly": read_only}}
            for i, c in enumerate(claims)
        ],
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def managed_node(name: str = NODE, **labels: str) -> Obj:
    """A Node as kubelet registers it (the attach-detach controller only serves annotated nodes)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, **labels},
            "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"},
        },
    }


async def events(store: Store, *, reason: str, namespace: str = "default") -> list[Obj]:
    items = (await store.list("events", namespace=namespace))["items"]
    return [e for e in items if e.get("reason") == reason]


def test_kit_builders_follow_the_golden_shapes() -> None:
    """The builders produce what the golden capture shows (so the other tests compare like with like)."""
    pvc = claim()
    pvc["metadata"] |= {"uid": "u-1", "resourceVersion": "7"}
    volume = provisioned_volume(pvc)
    assert volume["metadata"]["name"] == "pvc-u-1"
    assert volume["spec"]["claimRef"]["uid"] == "u-1"
    assert (
        volume["spec"]["csi"]["driver"] == DRIVER == golden("01-provisioned-pv.json")["spec"]["csi"]["driver"]
    )
