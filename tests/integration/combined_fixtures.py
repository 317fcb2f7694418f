"""Helpers for csi-controller-sidecars' integration tests: a control plane, the process, and what to look at.

`plane` runs the test bed's stand-ins the three controllers need around them (PV binder and
protection, attach/detach controller, and a kubelet on node-1 that registers the test driver directly
and stages, publishes and expands on the node). `combined_args` is the real entrypoint's command line
with fast retries, fast leader election and an HTTP endpoint.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from kit import ASYNCIO_COMPLAINTS, eventually
from kit import stop_cleanly as kit_stop_cleanly

from common.kube.client import ApiError, KubeClient
from common.kube.resources import (
    LEASES,
    PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES,
    PODS,
    STORAGE_CLASSES,
    VOLUME_ATTACHMENTS,
    Resource,
)
from testbed.apiserver import ApiServer
from testbed.controllers import ControlPlane, KubeletConfig
from testbed.csidriver import TestDriver

stop_cleanly = functools.partial(kit_stop_cleanly, timeout=20, forbidden=(*ASYNCIO_COMPLAINTS, "Traceback"))
"""SIGTERM: exit 0 and a clean log (kit.stop_cleanly with this module's bounds)."""

DRIVER = "hostpath.csi.k8s.io"
NODE = "node-1"
LEASES_BY_CONTROLLER = {
    "provisioner": "hostpath-csi-k8s-io",
    "attacher": "external-attacher-leader-hostpath-csi-k8s-io",
    "resizer": "external-resizer-hostpath-csi-k8s-io",
}
QUEUES = ("claims", "volumes", "unsavedpvs", "csi-attacher-va", "csi-attacher-pv", f"{DRIVER}-pvc")
ELECTION = (
    "--leader-election",
    "--leader-election-namespace=default",
    "--leader-election-lease-duration=2s",
    "--leader-election-renew-deadline=1500ms",
    "--leader-election-retry-period=500ms",
)

Obj = dict[str, Any]


@asynccontextmanager
async def plane(apiserver: ApiServer, driver: TestDriver) -> AsyncIterator[ControlPlane]:
    """PV binder + protection, attach/detach controller and node-1's kubelet (driver registered directly)."""
    kubelet = KubeletConfig(node_name=NODE, csi_endpoint=driver.address)
    async with ControlPlane(
        apiserver.store, ["pv", "attachdetach", "kubelet"], kubelet=kubelet, resync_period=1.0
    ) as control:
        await control.wait_synced()
        yield control


def combined_args(kubeconfig: str, driver: TestDriver, port: int, *extra: str) -> list[str]:
    """The real entrypoint's command line against the test bed: all three controllers, fast retries."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--csi-address={driver.address}",
        f"--http-endpoint=127.0.0.1:{port}",
        "--v=5",
        "--retry-interval-start=100ms",
        "--retry-interval-max=2s",
        "--kube-api-qps=200",
        "--kube-api-burst=400",
        *extra,
    ]


async def get(kube: KubeClient, resource: Resource, name: str, namespace: str | None = None) -> Obj | None:
    try:
        return await kube.get(resource, name, namespace=namespace)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


async def holders(kube: KubeClient) -> dict[str, str]:
    """Controller → holder identity of its Lease ("" when free or missing)."""
    found = {}
    for controller, lease in LEASES_BY_CONTROLLER.items():
        obj = await get(kube, LEASES, lease, "default")
        found[controller] = ((obj or {}).get("spec") or {}).get("holderIdentity") or ""
    return found


async def metrics(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as rsp:
        assert rsp.status == 200
        return await rsp.text()


def sample(text: str, series: str) -> float | None:
    """The value of one exact series line (`name{labels}`) of a /metrics text, or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def storage_class(kube: KubeClient) -> None:
    await kube.create(
        STORAGE_CLASSES,
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "csi-hostpath-sc"},
            "provisioner": DRIVER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
        },
    )


async def claim(kube: KubeClient, name: str, size: str = "1Gi") -> Obj:
    return await kube.create(
        PERSISTENT_VOLUME_CLAIMS,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": size}},
                "storageClassName": "csi-hostpath-sc",
            },
        },
    )


async def wait_bound(kube: KubeClient, name: str, timeout: float = 20.0) -> Obj:
    async def bound() -> Obj | None:
        pvc = await get(kube, PERSISTENT_VOLUME_CLAIMS, name, "default")
        return pvc if pvc and (pvc.get("status") or {}).get("phase") == "Bound" else None

    return await eventually(bound, timeout=timeout, message=f"PVC {name} Bound")


async def pod(kube: KubeClient, name: str, claim_name: str) -> Obj:
    return await kube.create(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {"name": "app", "image": "busybox", "volumeMounts": [{"mountPath": "/data", "name": "v"}]}
                ],
                "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim_name}}],
            },
        },
    )


async def wait_attached(kube: KubeClient, pv_name: str, timeout: float = 20.0) -> Obj:
    async def attached() -> Obj | None:
        items = (await kube.list(VOLUME_ATTACHMENTS))["items"]
        mine = [va for va in items if va["spec"]["source"].get("persistentVolumeName") == pv_name]
        return next((va for va in mine if (va.get("status") or {}).get("attached")), None)

    return await eventually(attached, timeout=timeout, message=f"VolumeAttachment of {pv_name} attached")


async def wait_pv_capacity(kube: KubeClient, pv_name: str, size: str, timeout: float = 20.0) -> Obj:
    async def grown() -> Obj | None:
        pv = await get(kube, PERSISTENT_VOLUMES, pv_name)
        return pv if pv and pv["spec"]["capacity"]["storage"] == size else None

    return await eventually(grown, timeout=timeout, message=f"PV {pv_name} at {size}")


def driver_connections(driver: TestDriver, pid: int) -> int:
    """How many connections process `pid` holds to the in-process test driver: the driver's accepted
    sockets (file descriptors of this process) whose peer, by SO_PEERCRED, is `pid`."""
    path = "/" + driver.address.removeprefix("unix://").lstrip("/")
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(fd)))
        except OSError:
            continue
        with sock:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                continue
            name = sock.getsockname()
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer = struct.unpack("3i", creds)[0]
            if isinstance(name, str) and "/" + name.lstrip("/") == path and peer == pid:
                count += 1
    return count
