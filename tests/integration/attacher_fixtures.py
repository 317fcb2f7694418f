"""Test-bed helpers for csi-attacher integration tests: the golden-shaped objects, volumes, the sidecar.

The objects follow the golden capture (/work/shared/upstream-golden, copied to tests/golden): Node
`node-1` with its CSINode, the provisioned PV of 04 (minus the attacher's finalizer) and the
VolumeAttachments of 03 and 05. `start_attacher` runs the real `python -m sidecars.attacher` with
short retry intervals and an HTTP endpoint on a free port.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit import SidecarProcess, eventually
from kit import stop_cleanly as kit_stop_cleanly

from common.kube.client import ApiError, KubeClient
from common.kube.resources import CSI_NODES, NODES, PERSISTENT_VOLUMES, VOLUME_ATTACHMENTS
from testbed.csidriver import DEFAULT_TOPOLOGY_KEY, GiB, TestDriver, Volume

stop_cleanly = functools.partial(kit_stop_cleanly, timeout=20)
"""SIGTERM: exit 0 and a clean log (kit.stop_cleanly with this module's bounds)."""

DRIVER = "hostpath.csi.k8s.io"
FINALIZER = "external-attacher/hostpath-csi-k8s-io"
NODE_ID_ANNOTATION = "csi.alpha.kubernetes.io/node-id"
LEASE = "external-attacher-leader-hostpath-csi-k8s-io"
GOLDEN = Path(__file__).resolve().parent.parent / "golden"
PV_NAME = "pvc-85bea930-1778-4a6f-b67e-4d20ad56dee6"
VOLATILE_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")

Obj = dict[str, Any]


def golden(name: str) -> Obj:
    result: Obj = json.loads((GOLDEN / name).read_text())
    return result


def comparable(obj: Obj) -> Obj:
    """`obj` without what the golden comparison ignores: uids, resourceVersions and times."""
    obj = copy.deepcopy(obj)
    meta = obj.get("metadata") or {}
    for key in VOLATILE_META:
        meta.pop(key, None)
    status = obj.get("status") or {}
    status.pop("lastPhaseTransitionTime", None)
    for key in ("attachError", "detachError"):
        if isinstance(status.get(key), dict):
            status[key].pop("time", None)
    claim = (obj.get("spec") or {}).get("claimRef")
    if isinstance(claim, dict):
        claim.pop("resourceVersion", None)
        claim.pop("uid", None)
    return obj


def add_volume(driver: TestDriver, handle: str, *, node: str = "node-1") -> None:
    """Put a volume into the driver's backend, as if the provisioner had created it."""
    driver.state.volumes[handle] = Volume(
        volume_id=handle,
        name=f"pv-{handle}",
        capacity=GiB,
        parameters={},
        mutable_parameters={},
        volume_context={},
        access_type="mount",
        segments={DEFAULT_TOPOLOGY_KEY: node},
    )


async def create_node(kube: KubeClient, name: str = "node-1", *, node_id: str | None = None) -> None:
    """A Node and its CSINode listing the driver (node ID = the node name unless given)."""
    await kube.create(
        NODES,
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {DEFAULT_TOPOLOGY_KEY: name}},
        },
    )
    await kube.create(
        CSI_NODES,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": name},
            "spec": {
                "drivers": [
                    {"name": DRIVER, "nodeID": node_id or name, "topologyKeys": [DEFAULT_TOPOLOGY_KEY]}
                ]
            },
        },
    )


def pv_body(name: str = PV_NAME, *, handle: str | None = None, **csi: Any) -> Obj:
    """The golden PV (04) as the provisioner left it, without the attacher's finalizer."""
    pv = golden("04-pv-while-attached.json")
    meta = pv["metadata"]
    for key in VOLATILE_META:
        meta.pop(key, None)
    meta["name"] = name
    meta["finalizers"] = [f for f in meta["finalizers"] if not f.startswith("external-attacher/")]
    meta["finalizers"].remove("kubernetes.io/pv-protection")  # admission adds it again
    pv.pop("status")
    if handle is not None:
        pv["spec"]["csi"]["volumeHandle"] = handle
    pv["spec"]["csi"].update(csi)
    claim = pv["spec"]["claimRef"]
    claim.pop("resourceVersion")
    claim.pop("uid")
    return pv


async def create_pv(kube: KubeClient, name: str = PV_NAME, *, handle: str | None = None, **csi: Any) -> Obj:
    """Create the PV and mark it Bound (the PV controller's job)."""
    await kube.create(PERSISTENT_VOLUMES, pv_body(name, handle=handle, **csi))
    return await kube.patch(PERSISTENT_VOLUMES, name, {"status": {"phase": "Bound"}}, subresource="status")


def va_body(name: str = "golden-va", *, pv: str = PV_NAME, node: str = "node-1") -> Obj:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node, "source": {"persistentVolumeName": pv}},
    }


async def create_va(
    kube: KubeClient, name: str = "golden-va", *, pv: str = PV_NAME, node: str = "node-1"
) -> Obj:
    return await kube.create(VOLUME_ATTACHMENTS, va_body(name, pv=pv, node=node))


async def get_or_none(kube: KubeClient, resource: Any, name: str, namespace: str | None = None) -> Obj | None:
    try:
        return await kube.get(resource, name, namespace=namespace)
    except ApiError as err:
        if err.not_found:
            return None
        raise


async def wait_va(kube: KubeClient, name: str, check: Callable[[Obj], bool], *, timeout: float = 15.0) -> Obj:
    """Poll the VA until `check(va)`; return it."""

    async def probe() -> Obj | None:
        obj = await get_or_none(kube, VOLUME_ATTACHMENTS, name)
        return obj if obj is not None and check(obj) else None

    result: Obj = await eventually(probe, timeout=timeout, message=f"VolumeAttachment {name}")
    return result


def attached(obj: Obj) -> bool:
    return bool((obj.get("status") or {}).get("attached"))


async def wait_gone(kube: KubeClient, resource: Any, name: str, *, timeout: float = 15.0) -> None:
    async def probe() -> bool:
        return await get_or_none(kube, resource, name) is None

    await eventually(probe, timeout=timeout, message=f"{resource} {name} gone")


async def delete_va(kube: KubeClient, name: str) -> None:
    await kube.delete(VOLUME_ATTACHMENTS, name)


def attacher_args(kubeconfig: str, driver: TestDriver, *extra: str, port: int | None = None) -> list[str]:
    args = [
        f"--kubeconfig={kubeconfig}",
        f"--csi-address={driver.address}",
        "--v=5",
        "--retry-interval-start=50ms",
        "--retry-interval-max=1s",
    ]
    if port is not None:
        args.append(f"--http-endpoint=127.0.0.1:{port}")
    return [*args, *extra]


def start_attacher(
    sidecar: Callable[..., SidecarProcess],
    kubeconfig: str,
    driver: TestDriver,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    return sidecar("sidecars.attacher", *attacher_args(kubeconfig, driver, *extra, port=port), env=env)
