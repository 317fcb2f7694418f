"""Memory of the Kubernetes machinery: RSS of a process holding the client and three informers.

    python -m bench.informer_memory [--pvs 10000]

Starts the test-bed API server as its own process, measures a child process that builds our client
and informers for PVCs, PVs and StorageClasses (idle: empty cluster), then creates `--pvs` PVs shaped
like the provisioner's (upstream golden 01) and measures a fresh child again with all of them cached.
Targets (issue "Controller machinery"): <= 90 MiB idle, <= 150 MiB with 10,000 PVs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


async def child(kubeconfig: str) -> None:
    """The measured process: client + 3 shared informers, synced; prints JSON with its RSS."""
    started = time.perf_counter()
    from common.backoff import TokenBucket
    from common.kube.client import KubeClient
    from common.kube.config import load_cluster_config
    from common.kube.informer import InformerFactory
    from common.kube.resources import PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, STORAGE_CLASSES

    imported = time.perf_counter()
    client = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig), limiter=TokenBucket(5, 10), user_agent="b"
    )
    factory = InformerFactory(client)
    informers = [factory.informer(r) for r in (PERSISTENT_VOLUME_CLAIMS, PERSISTENT_VOLUMES, STORAGE_CLASSES)]
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(_run(factory), name="informers")
        await factory.wait_synced()
        synced = time.perf_counter()
        await asyncio.sleep(0.5)
        result = {
            "rss_mib": round(rss_mib(), 1),
            "import_s": round(imported - started, 3),
            "sync_s": round(synced - imported, 3),
            "cached": sum(len(i.store) for i in informers),
        }
        runner.cancel()
    await client.close()
    print(json.dumps(result), flush=True)


async def _run(factory: Any) -> None:
    async with asyncio.TaskGroup() as group:
        factory.start(group)


def measure(kubeconfig: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.informer_memory", "--child", kubeconfig],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def provisioned_pv(i: int) -> dict[str, Any]:
    uid = f"85bea930-1778-4a6f-b67e-{i:012d}"
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{uid}",
            "annotations": {
                "pv.kubernetes.io/provisioned-by": "hostpath.csi.k8s.io",
                "volume.kubernetes.io/provisioner-deletion-secret-name": "prov-secret",
                "volume.kubernetes.io/provisioner-deletion-secret-namespace": "default",
            },
            "finalizers": ["external-provisioner.volume.kubernetes.io/finalizer"],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "name": f"data-{i}",
                "namespace": "default",
                "resourceVersion": "222",
                "uid": uid,
            },
            "csi": {
                "controllerExpandSecretRef": {"name": "prov-secret", "namespace": "default"},
                "driver": "hostpath.csi.k8s.io",
                "fsType": "xfs",
                "volumeAttributes": {
                    "storage.kubernetes.io/csiProvisionerIdentity": "1795391682244-5795-hostpath.csi.k8s.io",
                    "tier": "gold",
                },
                "volumeHandle": f"186a18bd-e6d0-11f1-bbd4-{i:012d}",
            },
            "mountOptions": ["noatime"],
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "topology.hostpath.csi/node", "operator": "In", "values": ["node-1"]}
                            ]
                        }
                    ]
                }
            },
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "golden",
            "volumeMode": "Filesystem",
        },
    }


async def populate(kubeconfig: str, count: int) -> float:
    from common.backoff import TokenBucket
    from common.kube.client import KubeClient
    from common.kube.config import load_cluster_config
    from common.kube.resources import PERSISTENT_VOLUMES

    client = KubeClient(
        await load_cluster_config(kubeconfig=kubeconfig),
        limiter=TokenBucket(math.inf, 1),
        user_agent="populate",
    )
    started = time.perf_counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            await client.create(PERSISTENT_VOLUMES, provisioned_pv(queue.get_nowait()))

    async with asyncio.TaskGroup() as group:
        for n in range(32):
            group.create_task(worker(), name=f"populate-{n}")
    await client.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.informer_memory")
    parser.add_argument("--pvs", type=int, default=10_000)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.child))
        return
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = str(Path(tmp) / "kubeconfig")
        server = subprocess.Popen(
            [sys.executable, "-m", "testbed.apiserver", "--port", "0", "--kubeconfig-out", kubeconfig],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()
            idle = measure(kubeconfig)
            seconds = asyncio.run(populate(kubeconfig, args.pvs))
            loaded = measure(kubeconfig)
        finally:
            server.terminate()
            server.wait(10)
    print(f"client + 3 informers, idle:        RSS {idle['rss_mib']:6.1f} MiB  (target <= 90)")
    print(
        f"client + 3 informers, {loaded['cached']:>6} PVs: RSS {loaded['rss_mib']:6.1f} MiB  "
        f"(target <= 150), synced in {loaded['sync_s']} s"
    )
    print(f"import of the client modules: {idle['import_s']} s; {args.pvs} PVs created in {seconds:.1f} s")
    per_pv = (loaded["rss_mib"] - idle["rss_mib"]) * 1024 / max(loaded["cached"], 1)
    print(f"per cached PV: {per_pv:.2f} KiB")


if __name__ == "__main__":
    main()
