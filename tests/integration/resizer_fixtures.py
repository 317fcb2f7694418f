"""Helpers for csi-resizer's integration tests: bound claims from the golden files, the kubelet's node half.

`bound_claim` creates what the provisioner, the PV controller and the attacher would have left (golden
02 and 04): a volume in the test driver, a Bound PVC and its PV, with the golden objects' metadata so
that what the resizer writes can be compared with golden 06/07 field for field.

`node_expand` plays kubelet's part of an expansion with RecoverVolumeExpansionFailure on, as
`MarkNodeExpansionInProgress` / NodeExpandVolume / `MarkNodeExpansionFinishedWithRecovery` do:
NodeResizeInProgress, NodeStageVolume + NodeExpandVolume on the driver, then the claim's new capacity
with the storage status and the resize conditions removed. (A stand-in until testbed.controllers'
kubelet lands.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from kit import eventually

from common.kube.client import ApiError, KubeClient
from common.kube.resources import (
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    SECRETS,
    STORAGE_CLASSES,
    Resource,
)
from common.quantity import to_bytes
from proto import csi_pb2
from testbed.csidriver import TestDriver, connect

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
DRIVER = "hostpath.csi.k8s.io"
RESIZE_CONDITIONS = {"Resizing", "FileSystemResizePending", "ControllerResizeError", "NodeResizeError"}


def golden(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def resizer_args(kubeconfig: str, driver: TestDriver, *extra: str) -> list[str]:
    """The real entrypoint's command line against the test bed (fast retries for tests)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--csi-address={driver.address}",
        "--v=5",
        "--retry-interval-start=100ms",
        "--retry-interval-max=2s",
        *extra,
    ]


def _capability() -> csi_pb2.VolumeCapability:
    capability = csi_pb2.VolumeCapability()
    capability.mount.fs_type = "xfs"
    capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    return capability


async def create_volume(driver: TestDriver, name: str, size: str = "1Gi") -> str:
    async with connect(driver.address) as stubs:
        rsp = await stubs.controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=name,
                capacity_range=csi_pb2.CapacityRange(required_bytes=to_bytes(size)),
                volume_capabilities=[_capability()],
            )
        )
    return str(rsp.volume.volume_id)


async def bound_claim(
    kube: KubeClient,
    driver: TestDriver,
    *,
    name: str = "data",
    namespace: str = "default",
    size: str = "1Gi",
    vac: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Bound PVC and its PV, shaped like golden 02 and 04 (see the module docstring)."""
    await _ensure(kube, SECRETS, {"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "prov-secret", "namespace": namespace},
                                  "data": {"password": "c2VjcmV0"}})  # fmt: skip
    await _ensure(kube, STORAGE_CLASSES, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                          "metadata": {"name": "golden"}, "provisioner": DRIVER,
                                          "allowVolumeExpansion": True, "reclaimPolicy": "Delete",
                                          "volumeBindingMode": "Immediate"})  # fmt: skip
    pvc = copy.deepcopy(golden("02-bound-pvc.json"))
    pvc["metadata"] = {**pvc["metadata"], "name": name, "namespace": namespace}
    for field in ("creationTimestamp", "resourceVersion", "uid", "finalizers"):
        pvc["metadata"].pop(field)
    pvc["spec"]["resources"]["requests"]["storage"] = size
    if vac is not None:
        pvc["spec"]["volumeAttributesClassName"] = vac
    status = pvc.pop("status")
    status["capacity"] = {"storage": size}
    pvc["spec"].pop("volumeName")
    created = await kube.create(PERSISTENT_VOLUME_CLAIMS, pvc)
    uid = created["metadata"]["uid"]
    pv_name = f"pvc-{uid}"
    volume_id = await create_volume(driver, pv_name, size)
    pv = copy.deepcopy(golden("04-pv-while-attached.json"))
    pv["metadata"] = {
        "name": pv_name,
        "annotations": pv["metadata"]["annotations"],
        "finalizers": pv["metadata"]["finalizers"],
    }
    pv["spec"]["claimRef"] = {**pv["spec"]["claimRef"], "name": name, "namespace": namespace, "uid": uid,
                              "resourceVersion": created["metadata"]["resourceVersion"]}  # fmt: skip
    pv["spec"]["capacity"] = {"storage": size}
    pv["spec"]["csi"]["volumeHandle"] = volume_id
    pv["spec"]["csi"]["controllerExpandSecretRef"]["namespace"] = namespace
    pv.pop("status")
    await kube.create(PERSISTENT_VOLUMES, pv)
    await kube.patch(PERSISTENT_VOLUMES, pv_name, {"status": {"phase": "Bound"}}, subresource="status")
    await kube.patch(PERSISTENT_VOLUME_CLAIMS, name, {"spec": {"volumeName": pv_name}}, namespace=namespace)
    bound = await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, name, {"status": status}, namespace=namespace, subresource="status"
    )
    return bound, await kube.get(PERSISTENT_VOLUMES, pv_name)


async def _ensure(kube: KubeClient, resource: Resource, obj: dict[str, Any]) -> None:
    try:
        await kube.create(resource, obj)
    except ApiError as exc:
        if not exc.already_exists:
            raise


async def request(
    kube: KubeClient, size: str, *, name: str = "data", namespace: str = "default"
) -> dict[str, Any]:
    """The user asks for `size`."""
    patch = {"spec": {"resources": {"requests": {"storage": size}}}}
    return await kube.patch(PERSISTENT_VOLUME_CLAIMS, name, patch, namespace=namespace)


async def claim(kube: KubeClient, name: str = "data", namespace: str = "default") -> dict[str, Any]:
    return await kube.get(PERSISTENT_VOLUME_CLAIMS, name, namespace=namespace)


def storage_status(pvc: dict[str, Any]) -> str:
    return str(((pvc.get("status") or {}).get("allocatedResourceStatuses") or {}).get("storage", ""))


def capacity(obj: dict[str, Any], where: str = "status") -> str:
    return str(((obj.get(where) or {}).get("capacity") or {}).get("storage", ""))


async def node_expand(
    kube: KubeClient,
    driver: TestDriver,
    *,
    name: str = "data",
    namespace: str = "default",
    timeout: float = 15,
) -> dict[str, Any]:
    """kubelet's node half of an expansion (see the module docstring); returns the finished claim."""
    pvc = await eventually(
        lambda: _pending(kube, name, namespace),
        timeout=timeout,
        message=f"{namespace}/{name} NodeResizePending",
    )
    pv = await kube.get(PERSISTENT_VOLUMES, pvc["spec"]["volumeName"])
    await kube.patch(
        PERSISTENT_VOLUME_CLAIMS,
        name,
        {"status": {"allocatedResourceStatuses": {"storage": "NodeResizeInProgress"}}},
        namespace=namespace,
        subresource="status",
    )
    staging = f"/var/lib/kubelet/plugins/kubernetes.io/csi/{DRIVER}/{pv['metadata']['name']}/globalmount"
    volume_id = pv["spec"]["csi"]["volumeHandle"]
    async with connect(driver.address) as stubs:
        await stubs.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=staging, volume_capability=_capability()
            )
        )
        await stubs.node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(
                volume_id=volume_id,
                volume_path=staging,
                staging_target_path=staging,
                capacity_range=csi_pb2.CapacityRange(required_bytes=to_bytes(capacity(pv, "spec"))),
            )
        )
    current = await claim(kube, name, namespace)
    statuses = dict(current["status"].get("allocatedResourceStatuses") or {})
    statuses.pop("storage", None)
    conditions = [
        c for c in current["status"].get("conditions") or () if c.get("type") not in RESIZE_CONDITIONS
    ]
    finished = {
        "status": {
            "capacity": {"storage": capacity(pv, "spec")},
            "allocatedResourceStatuses": statuses or None,
            "conditions": conditions or None,
        }
    }
    return await kube.patch(
        PERSISTENT_VOLUME_CLAIMS, name, finished, namespace=namespace, subresource="status"
    )


async def _pending(kube: KubeClient, name: str, namespace: str) -> dict[str, Any] | None:
    pvc = await claim(kube, name, namespace)
    return pvc if storage_status(pvc) == "NodeResizePending" else None


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """An object with what differs from run to run (uids, times, versions, uid-derived names) blanked."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    for field in ("uid", "creationTimestamp", "resourceVersion", "managedFields", "generation"):
        meta.pop(field, None)
    spec, status = out.get("spec") or {}, out.get("status") or {}
    if spec.get("volumeName"):
        spec["volumeName"] = "<pv>"
    if str(meta.get("name", "")).startswith("pvc-"):
        meta["name"] = "<pv>"
    if isinstance(spec.get("claimRef"), dict):
        spec["claimRef"].pop("uid", None)
        spec["claimRef"].pop("resourceVersion", None)
    if isinstance(spec.get("csi"), dict):
        spec["csi"]["volumeHandle"] = "<handle>"
    for cond in status.get("conditions") or ():
        for stamp in ("lastTransitionTime", "lastProbeTime"):
            if cond.get(stamp):
                cond[stamp] = "<time>"
            else:  # kube-apiserver writes a zero time as null; the test bed leaves it out
                cond.pop(stamp, None)
    status.pop("lastPhaseTransitionTime", None)
    return out
