"""csi-resizer benchmark: resize throughput over many PVCs, and the memory cost of watching every Pod.

    python -m bench.resizer_bench [--pvcs 1000] [--pods 10000] [--qps 500] [--burst 1000] [--workers 10]

The test-bed API server runs as its own process, the CSI test driver in this one, and the real
`python -m sidecars.resizer` as a third. Two measurements:

1. Throughput: `--pvcs` bound 1Gi claims (with PVs and driver volumes) are asked to grow to 2Gi at
   once; the time until every claim reports 2Gi gives PVCs/s (controller-only expansion: three API
   writes, two CSI calls and two events per claim). `--kube-api-qps/-burst` are raised to `--qps` /
   `--burst`: at upstream's default of 5 QPS the client's rate limit alone caps it near 1 PVC/s.
   The resizer's RSS is read from /proc before and after.
2. `--handle-volume-inuse-error` (on by default) watches every Pod in the cluster. The resizer's RSS
   once its caches are synced is measured with no pods, then with `--pods` realistic pods (half of
   them mounting a PVC), and with the option off. Target: under 20 MiB more with 10,000 pods. For
   comparison, the Python heap of the same pods kept whole (as upstream's informer does) and slimmed
   by `sidecars.resizer.inuse.slim_pod` is measured here with tracemalloc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024**3


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", math.nan), values.get("VmHWM", math.nan)


STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1",
    "kind": "StorageClass",
    "metadata": {"name": "golden"},
    "provisioner": "hostpath.csi.k8s.io",
    "allowVolumeExpansion": True,
}


def claim(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": f"data-{i}", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "golden",
            "volumeMode": "Filesystem",
        },
    }


def volume(i: int, uid: str, volume_id: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{uid}",
            "annotations": {"pv.kubernetes.io/provisioned-by": "hostpath.csi.k8s.io"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": "default",
                "name": f"data-{i}",
                "uid": uid,
            },
            "csi": {"driver": "hostpath.csi.k8s.io", "fsType": "xfs", "volumeHandle": volume_id},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "golden",
            "volumeMode": "Filesystem",
        },
    }


# The parts every generated pod shares (a Deployment's pod with its token volume and managedFields).
_STATIC = json.loads("""{
 "token": {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
   {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
   {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
   {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}},
 "managed": [
   {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
    "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:containers": {}}}},
   {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "subresource": "status",
    "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:phase": {}, "f:podIP": {}}}}],
 "container": {"name": "web", "image": "registry.example.com/team/web:1.2.3",
   "ports": [{"containerPort": 8080, "protocol": "TCP"}],
   "resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "256Mi"}},
   "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 10}},
 "toleration": {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
   "tolerationSeconds": 300}
}""")


def pod(i: int) -> dict[str, Any]:
    """A pod of a Deployment as a real cluster holds it (about 3 KB of JSON with its status)."""
    mounts = [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    volumes: list[dict[str, Any]] = [_STATIC["token"]]
    if i % 2 == 0:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"data-{i}"}})
        mounts.append({"name": "data", "mountPath": "/data"})
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5", "controller": True,
             "blockOwnerDeletion": True, "uid": f"0b7a6c0e-0000-4000-8000-{i:012d}"}  # fmt: skip
    env = [{"name": f"SETTING_{n}", "value": f"value-{n}-{i}"} for n in range(8)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"web-{i:05d}-7d9f8c6b5-x{i % 97:02d}kq",
            "namespace": f"team-{i % 20}",
            "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-20T10:00:00Z"},
            "ownerReferences": [owner],
            "managedFields": _STATIC["managed"],
        },
        "spec": {
            "nodeName": f"node-{i % 50}",
            "serviceAccountName": "default",
            "containers": [{**_STATIC["container"], "env": env, "volumeMounts": mounts}],
            "volumes": volumes,
            "tolerations": [_STATIC["toleration"]],
        },
    }


def running_status(i: int) -> dict[str, Any]:
    conditions = ("Initialized", "Ready", "ContainersReady", "PodScheduled")
    container = {"name": "web", "ready": True, "restartCount": 0, "started": True,
                 "image": "registry.example.com/team/web:1.2.3",
                 "imageID": "registry.example.com/team/web@sha256:" + "ab" * 32,
                 "containerID": f"containerd://{i:064x}",
                 "state": {"running": {"startedAt": "2026-11-20T10:00:04Z"}}}  # fmt: skip
    return {
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
            "hostIP": f"192.168.0.{i % 50}",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-20T10:00:05Z"}
                for t in conditions
            ],
            "containerStatuses": [container],
        }
    }


# ------------------------------------------------------------------------------------------ plumbing


async def start_apiserver(directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    kubeconfig = str(directory / "kubeconfig")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "testbed.apiserver", "--port", "0", "--kubeconfig-out", kubeconfig,
        "--history-size", "100000", stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    await asyncio.wait_for(process.stdout.readline(), 30)
    return process, kubeconfig


async def in_parallel(count: int, job: Callable[[int], Awaitable[None]], *, width: int = 32) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await job(queue.get_nowait())

    async with asyncio.TaskGroup() as group:
        for n in range(width):
            group.create_task(worker(), name=f"bench worker {n}")


class Resizer:
    """The real entrypoint as a subprocess, its log in a file."""

    def __init__(self, kubeconfig: str, address: str, log: Path, *args: str) -> None:
        self.log = log
        with open(log, "wb") as out:
            command = [sys.executable, "-m", "sidecars.resizer", f"--kubeconfig={kubeconfig}"]
            command += [f"--csi-address={address}", *args]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    async def synced(self, timeout: float = 120) -> float:
        started = time.perf_counter()
        while "caches synced" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError("resizer did not start:\n" + self.log.read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.05)
        return time.perf_counter() - started

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(30)


async def resizer_rss(kubeconfig: str, address: str, log: Path, *args: str) -> tuple[float, float]:
    """(RSS MiB once synced and idle for a second, seconds to sync)."""
    resizer = Resizer(kubeconfig, address, log, *args)
    try:
        seconds = await resizer.synced()
        await asyncio.sleep(1.0)
        return rss_mib(resizer.proc.pid)[0], seconds
    finally:
        resizer.stop()


# ------------------------------------------------------------------------------------------ the two parts


async def throughput(
    kube: Any, driver: Any, kubeconfig: str, directory: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from common.kube.resources import EVENTS, PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES
    from proto import csi_pb2
    from testbed.csidriver import connect

    capability = csi_pb2.VolumeCapability()
    capability.mount.fs_type = "xfs"
    capability.access_mode.mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    started = time.perf_counter()
    async with connect(driver.address) as stubs:

        async def create(i: int) -> None:
            created = await kube.create(PERSISTENT_VOLUME_CLAIMS, claim(i))
            uid = created["metadata"]["uid"]
            rsp = await stubs.controller.CreateVolume(
                csi_pb2.CreateVolumeRequest(
                    name=f"pvc-{uid}",
                    capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                    volume_capabilities=[capability],
                )
            )
            await kube.create(PERSISTENT_VOLUMES, volume(i, uid, rsp.volume.volume_id))
            await kube.patch(
                PERSISTENT_VOLUMES, f"pvc-{uid}", {"status": {"phase": "Bound"}}, subresource="status"
            )
            await kube.patch(
                PERSISTENT_VOLUME_CLAIMS,
                f"data-{i}",
                {"spec": {"volumeName": f"pvc-{uid}"}},
                namespace="default",
            )
            bound = {
                "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
            }
            await kube.patch(
                PERSISTENT_VOLUME_CLAIMS, f"data-{i}", bound, namespace="default", subresource="status"
            )

        await in_parallel(args.pvcs, create)
    populated = time.perf_counter() - started

    resizer = Resizer(
        kubeconfig, driver.address, directory / "resizer-throughput.log",
        f"--kube-api-qps={args.qps}", f"--kube-api-burst={args.burst}", f"--workers={args.workers}",
    )  # fmt: skip
    try:
        await resizer.synced()
        await asyncio.sleep(1.0)
        idle_rss, _ = rss_mib(resizer.proc.pid)
        started = time.perf_counter()

        async def grow(i: int) -> None:
            patch = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
            await kube.patch(PERSISTENT_VOLUME_CLAIMS, f"data-{i}", patch, namespace="default")

        await in_parallel(args.pvcs, grow)
        asked = time.perf_counter() - started
        done = 0
        while done < args.pvcs:
            await asyncio.sleep(0.25)
            items = (await kube.list(PERSISTENT_VOLUME_CLAIMS, namespace="default"))["items"]
            done = sum(
                1 for p in items if ((p.get("status") or {}).get("capacity") or {}).get("storage") == "2Gi"
            )
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"only {done} of {args.pvcs} resized after 900 s")
        elapsed = time.perf_counter() - started
        rss, peak = rss_mib(resizer.proc.pid)
    finally:
        code = resizer.stop()
    grown = sum(1 for v in driver.volumes.values() if v.capacity == 2 * GiB)
    events = len((await kube.list(EVENTS, namespace="default"))["items"])
    return {
        "pvcs": args.pvcs,
        "populate_s": round(populated, 1),
        "ask_s": round(asked, 2),
        "resize_s": round(elapsed, 2),
        "pvcs_per_s": round(args.pvcs / elapsed, 1),
        "idle_rss_mib": round(idle_rss, 1),
        "rss_mib": round(rss, 1),
        "peak_rss_mib": round(peak, 1),
        "driver_volumes_grown": grown,
        "exit_code": code,
        "expand_calls": driver.calls.counts["ControllerExpandVolume"],
        "events_written": events,
    }


async def pod_memory(kube: Any, driver: Any, kubeconfig: str, directory: Path, count: int) -> dict[str, Any]:
    from common.kube.resources import PODS

    baseline, _ = await resizer_rss(kubeconfig, driver.address, directory / "resizer-nopods.log")
    started = time.perf_counter()

    async def create(i: int) -> None:
        body = pod(i)
        await kube.create(PODS, body)
        await kube.patch(
            PODS,
            body["metadata"]["name"],
            running_status(i),
            namespace=body["metadata"]["namespace"],
            subresource="status",
        )

    await in_parallel(count, create)
    populated = time.perf_counter() - started
    loaded, sync_s = await resizer_rss(kubeconfig, driver.address, directory / "resizer-pods.log")
    without, _ = await resizer_rss(
        kubeconfig, driver.address, directory / "resizer-pods-off.log", "--handle-volume-inuse-error=false"
    )
    return {
        "pods": count,
        "populate_s": round(populated, 1),
        "rss_no_pods_mib": round(baseline, 1),
        "rss_with_pods_mib": round(loaded, 1),
        "delta_mib": round(loaded - baseline, 1),
        "sync_s": round(sync_s, 2),
        "rss_with_pods_option_off_mib": round(without, 1),
    }


def heap_comparison(count: int) -> dict[str, float]:
    """Python heap of `count` pods kept whole (minus managedFields, as our informers do) vs slimmed."""
    from common.kube.informer import drop_managed_fields
    from sidecars.resizer.inuse import slim_pod

    raw = [json.dumps({**pod(i), **running_status(i)}) for i in range(count)]
    results = {}
    for name, transform in (("whole", drop_managed_fields), ("slim", slim_pod)):
        tracemalloc.start()
        kept = [transform(json.loads(text)) for text in raw]
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        results[f"{name}_mib"] = round(size / 2**20, 1)
        results[f"{name}_bytes_per_pod"] = round(size / count)
        del kept
    results["json_bytes_per_pod"] = round(sum(map(len, raw)) / count)
    return results


async def run(args: argparse.Namespace) -> None:
    from common.backoff import TokenBucket
    from common.kube.client import KubeClient
    from common.kube.config import load_cluster_config
    from common.kube.resources import NAMESPACES, SECRETS, STORAGE_CLASSES
    from testbed.csidriver import DriverConfig, TestDriver

    with tempfile.TemporaryDirectory(prefix="rsz", dir="/tmp") as tmp:
        directory = Path(tmp)
        server, kubeconfig = await start_apiserver(directory)
        driver = TestDriver(DriverConfig(node_expansion_required=False, capacity=100_000 * GiB))
        kube = KubeClient(
            await load_cluster_config(kubeconfig=kubeconfig),
            limiter=TokenBucket(math.inf, 1),
            user_agent="bench",
        )
        try:
            async with driver.serve(f"unix://{directory}/csi.sock"):
                await kube.create(STORAGE_CLASSES, STORAGE_CLASS)
                for n in range(20):
                    await kube.create(NAMESPACES, {"metadata": {"name": f"team-{n}"}})
                await kube.create(SECRETS, {"metadata": {"name": "prov-secret", "namespace": "default"}})
                part1 = await throughput(kube, driver, kubeconfig, directory, args)
                print("resize throughput:", json.dumps(part1), flush=True)
                part2 = await pod_memory(kube, driver, kubeconfig, directory, args.pods)
                print("pod informer memory:", json.dumps(part2), flush=True)
        finally:
            await kube.close()
            server.terminate()
            await server.wait()
    part3 = heap_comparison(args.pods)
    print("python heap of the pods:", json.dumps(part3), flush=True)
    print()
    print(
        f"resized {part1['pvcs']} PVCs in {part1['resize_s']} s: {part1['pvcs_per_s']} PVCs/s "
        f"(--kube-api-qps={args.qps} --kube-api-burst={args.burst} --workers={args.workers}); "
        f"resizer RSS {part1['idle_rss_mib']} MiB idle, {part1['rss_mib']} MiB after, "
        f"peak {part1['peak_rss_mib']} MiB"
    )
    print(
        f"resizer RSS with {part2['pods']} pods: {part2['rss_with_pods_mib']} MiB vs "
        f"{part2['rss_no_pods_mib']} MiB without pods: +{part2['delta_mib']} MiB (target < 20); "
        f"with --handle-volume-inuse-error=false {part2['rss_with_pods_option_off_mib']} MiB"
    )
    print(
        f"heap of {args.pods} pods: whole {part3['whole_mib']} MiB ({part3['whole_bytes_per_pod']} B/pod), "
        f"slim {part3['slim_mib']} MiB ({part3['slim_bytes_per_pod']} B/pod); "
        f"JSON {part3['json_bytes_per_pod']} B/pod"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resizer_bench", description=__doc__)
    parser.add_argument("--pvcs", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--qps", type=float, default=500.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    import logging

    import structlog

    # The in-process test driver logs every call; only warnings matter here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
